"""Queues: messages in line, and the consumers they are pushed to.

Theory of operation: a queue keeps waiting entries in a deque ordered by ``seq``
(their place in line).  ``publish`` hands a new entry straight to a ready consumer
when nothing waits ahead of it, else appends it; ``dispatch`` pushes waiting entries
to ready consumers, round-robin, until one side runs out.  A consumer is ready while
its channel has prefetch room and its connection's socket is draining.  Entries given
back (nack/reject with requeue, channel close, recover) return to their old place in
line, marked redelivered, as in RabbitMQ.

This class is the plain queue, and the hot path: it knows nothing of priorities,
expiry, bounds, dead letters or delivery limits, so a queue without them pays
nothing for them.  A queue declared with such arguments is a
:class:`~postoffice.core.ruled.RuledQueue`, a subclass keeping its rule state in
the ``rules`` slot; a plain queue that receives a message with a per-message TTL
becomes one in place (:meth:`promote`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..store import Store
from .message import Message, QueueEntry

if TYPE_CHECKING:
    from .channel import Consumer

__all__ = ["PAGE_OUT_DEPTH", "Queue"]

# Persistent messages further back in a queue than this are kept only in the store,
# with a small entry in memory: a backlog larger than RAM stays on disk.
PAGE_OUT_DEPTH = 2048


class Queue:
    __slots__ = (
        "_consumers",
        "_next_seq",
        "_prioritized",
        "_rr",
        "_rr_by_priority",
        "arguments",
        "auto_delete",
        "deleted",
        "durable",
        "exclusive_owner",
        "had_consumers",
        "messages",
        "name",
        "rules",
        "settles_acks",
        "store",
        "vhost",
    )

    def __init__(
        self,
        name: str,
        vhost: str,
        *,
        durable: bool = False,
        exclusive_owner: object | None = None,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.vhost = vhost
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments: dict[str, Any] = dict(arguments or {})
        self.messages: deque[QueueEntry] = deque()
        self._consumers: list[Consumer] = []
        self._rr = 0
        # With consumer priorities (x-priority), consumers are kept sorted by priority,
        # highest first, with a round-robin position per priority level.
        self._prioritized = False
        self._rr_by_priority: dict[int, int] = {}
        self._next_seq = 0
        self.had_consumers = False
        self.deleted = False
        # Where this queue keeps its persistent messages; None for a queue that does
        # not outlive the broker (transient or exclusive).
        self.store: Store | None = None
        # The rule state of a RuledQueue; None for a plain queue.
        self.rules: Any = None
        # Whether acks of messages not in the store must reach settle() (de-duplication).
        self.settles_acks = False

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def consumers(self) -> list[Consumer]:
        return self._consumers

    @property
    def message_count(self) -> int:
        return len(self.messages)

    @property
    def consumer_count(self) -> int:
        return len(self._consumers)

    # -- messages in ---------------------------------------------------------------

    @property
    def persisted(self) -> bool:
        """Whether this queue outlives the broker: durable and not exclusive.

        A durable auto-delete queue is recovered with its messages, as RabbitMQ 3.10
        does (tried: rabbitmqctl stop_app/start_app keeps it and its message).
        """
        return self.durable and self.exclusive_owner is None

    def publish(
        self,
        message: Message,
        redelivered: bool = False,
        store_id: int = 0,
        expiring: bool = False,
    ) -> QueueEntry | None:
        """Enqueues (or delivers at once) a new message; its entry (a ruled queue may
        refuse it: None)."""
        seq = self._next_seq
        self._next_seq = seq + 1
        entry = QueueEntry(seq, message, redelivered, store_id)
        if not self.messages and self._consumers:
            consumer = self._ready_consumer()
            if consumer is not None:
                consumer.deliver(entry)
                return entry
        if store_id and len(self.messages) >= PAGE_OUT_DEPTH:
            entry.message = None  # the store has it; read it back when its turn comes
        self.messages.append(entry)
        return entry

    def restore(self, store_id: int, deliveries: int, time: int) -> None:
        """Puts a stored message back in line at start-up, paged out.

        ``deliveries`` is how often it reached a consumer before; ``time`` is the time
        the store keeps for it (epoch ms; used by a ruled queue's expiry).
        """
        seq = self._next_seq
        self._next_seq = seq + 1
        self.messages.append(QueueEntry(seq, None, deliveries > 0, store_id))

    def requeue(self, entries: Iterable[QueueEntry]) -> None:
        """Puts delivered entries back at their old place in line, marked redelivered."""
        returned = sorted(entries, key=by_seq)
        if not returned or self.deleted:
            return
        for entry in returned:
            entry.redelivered = True
        merge_in_line(self.messages, returned)
        self.dispatch()

    # -- messages out --------------------------------------------------------------

    def dispatch(self) -> None:
        """Pushes waiting entries to ready consumers until one side runs out."""
        waiting = self.messages
        while waiting and self._consumers:
            consumer = self._ready_consumer()
            if consumer is None:
                return
            consumer.deliver(waiting.popleft())

    def get(self) -> QueueEntry | None:
        return self.messages.popleft() if self.messages else None

    def outgoing(self, entry: QueueEntry, message: Message) -> Message:
        """The message as a consumer receives it (a ruled queue may add headers)."""
        return message

    def reject(self, entries: Iterable[QueueEntry]) -> None:
        """These entries were rejected without requeue: gone (a ruled queue may dead-letter)."""
        self.settle(entries)

    def touch(self) -> None:
        """The queue was used (declared again, read): a ruled queue's x-expires restarts."""

    def purge(self) -> int:
        count = len(self.messages)
        self.settle([entry for entry in self.messages if entry.store_id])
        self.messages.clear()
        return count

    # -- the store's record of persistent messages --------------------------------

    def delivered(self, entry: QueueEntry) -> None:
        """A stored entry reached a consumer: after a crash it comes back redelivered."""
        if self.store is not None and entry.store_id:
            self.store.delivered(self.vhost, self.name, (entry.store_id,))

    def settle(self, entries: Iterable[QueueEntry]) -> None:
        """These entries left the queue for good (acked, dropped, purged)."""
        if self.store is not None and not self.deleted:
            ids = [entry.store_id for entry in entries if entry.store_id]
            if ids:
                self.store.settle(self.vhost, self.name, ids)

    def _ready_consumer(self) -> Consumer | None:
        if self._prioritized:
            return self._ready_by_priority()
        consumers = self._consumers
        count = len(consumers)
        start = self._rr
        for offset in range(count):
            index = (start + offset) % count
            consumer = consumers[index]
            if consumer.ready():
                self._rr = index + 1
                return consumer
        return None

    def _ready_by_priority(self) -> Consumer | None:
        consumers = self._consumers
        count = len(consumers)
        start = 0
        while start < count:
            level = consumers[start].priority
            end = start
            while end < count and consumers[end].priority == level:
                end += 1
            size = end - start
            offset = self._rr_by_priority.get(level, 0)
            for step in range(size):
                consumer = consumers[start + (offset + step) % size]
                if consumer.ready():
                    self._rr_by_priority[level] = (offset + step + 1) % size
                    return consumer
            start = end
        return None

    # -- consumers -----------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        """Registers a consumer; the caller dispatches once the client knows of it (consume-ok)."""
        consumers = self._consumers
        if consumer.priority or self._prioritized:
            self._prioritized = True
            index = len(consumers)
            while index and consumers[index - 1].priority < consumer.priority:
                index -= 1
            consumers.insert(index, consumer)
        else:
            consumers.append(consumer)
        self.had_consumers = True

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            index = self._consumers.index(consumer)
        except ValueError:
            return
        del self._consumers[index]
        if index < self._rr:
            self._rr -= 1

    @property
    def unused_auto_delete(self) -> bool:
        """True when an auto-delete queue has lost its last consumer and should go."""
        return self.auto_delete and self.had_consumers and not self._consumers

    def __repr__(self) -> str:
        return f"Queue({self.name!r}, {len(self.messages)} waiting)"


def by_seq(entry: QueueEntry) -> int:
    return entry.seq


def merge_in_line(line: deque[Any], returned: list[Any]) -> None:
    """Puts returned entries (in seq order) back into ``line`` at their places."""
    if not line or returned[-1].seq < line[0].seq:
        line.extendleft(reversed(returned))
    elif returned[0].seq > line[-1].seq:
        line.extend(returned)
    else:
        merged = sorted([*line, *returned], key=by_seq)
        line.clear()
        line.extend(merged)
