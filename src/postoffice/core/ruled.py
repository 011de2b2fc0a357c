"""Queues with rules: priorities, expiry, bounds, dead letters, delivery limits, one active consumer.

A :class:`RuledQueue` is a :class:`~postoffice.core.queue.Queue` declared with any
of RabbitMQ's queue arguments for these features (or a plain queue that received a
message with a per-message TTL, promoted in place).  Plain queues never run this
code, so they pay nothing for it.

Theory of operation:

* Waiting entries live in one deque per priority level (one deque without
  ``x-max-priority``), each in ``seq`` order; the next delivery is the head of the
  highest non-empty level.
* An entry leaves early (expired, or dropped by ``drop-head``) by being marked gone;
  it stays in its deque until it reaches the head or the deques are compacted, and
  ``ready``/``ready_bytes`` count only live ones.
* Expiry: one timer, armed for the earliest deadline, dead-letters every entry due,
  wherever it is in the queue (RabbitMQ only expires messages at the head).  Entries
  whose deadline is the queue's own TTL need no bookkeeping: their deadlines grow
  with their place in line, so the timer looks at the head of each level.  Entries
  with a shorter per-message TTL (and requeued ones) also sit in a heap.  Delivery
  checks the deadline too, so an expired message is never delivered.
* Returns (nack/reject with requeue, a channel closing with unacked deliveries) count
  per entry; past ``x-delivery-limit`` the entry is dead-lettered instead.  The count
  shows as the ``x-delivery-count`` header on redeliveries, and survives restarts
  (the store counts deliveries).
* Dead letters are republished through the vhost (:meth:`VHost.dead_letter`), the
  new copy stored before the old one is settled, so a crash in between leaves a
  duplicate, never a loss.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .arguments import int_argument, text_argument
from .deadletter import Long, parse_expiration
from .dedup import QueueDeduplication
from .message import Message, QueueEntry
from .queue import PAGE_OUT_DEPTH, Queue, by_seq, merge_in_line

if TYPE_CHECKING:
    from .channel import Consumer
    from .timers import Timer
    from .vhost import VHost

__all__ = [
    "RULE_ARGUMENTS",
    "RuledEntry",
    "RuledQueue",
    "SingleActiveQueue",
    "needs_rules",
    "promote",
]

# The queue arguments that make a queue a RuledQueue.
RULE_ARGUMENTS = frozenset(
    {
        "x-max-priority",
        "x-message-ttl",
        "x-expires",
        "x-dead-letter-exchange",
        "x-max-length",
        "x-max-length-bytes",
        "x-delivery-limit",
        "x-single-active-consumer",
        "x-message-deduplication",
    }
)


def needs_rules(arguments: Mapping[str, Any]) -> bool:
    """Whether a queue with these arguments is a RuledQueue (quorum queues always are:
    they count returns)."""
    return (
        not RULE_ARGUMENTS.isdisjoint(arguments)
        or text_argument(arguments.get("x-queue-type")) == "quorum"
    )


WAITING, OUT, GONE = 0, 1, 2

# Gone entries left in the deques are swept out once there are this many and more
# of them than live ones.
_COMPACT_AFTER = 1024


class RuledEntry(QueueEntry):
    """A queue entry with what the rules need: its deadline (monotonic seconds, 0 for
    none), priority level, body size, returns so far, and whether it waits, is out
    with a consumer, or is gone."""

    __slots__ = ("deadline", "level", "returns", "size", "state")

    def __init__(
        self,
        seq: int,
        message: Message | None,
        redelivered: bool,
        store_id: int,
        deadline: float,
        level: int,
        size: int,
        returns: int = 0,
    ) -> None:
        # QueueEntry's fields set here directly: one call less per message.
        self.seq = seq
        self.message = message
        self.redelivered = redelivered
        self.store_id = store_id
        self.deadline = deadline
        self.level = level
        self.size = size
        self.returns = returns
        self.state = WAITING


class Rules:
    """A ruled queue's settings (from its arguments) and state."""

    __slots__ = (
        "bounded",
        "count_returns",
        "dead_letter_exchange",
        "dead_letter_routing_key",
        "dedup",
        "delivery_limit",
        "draining",
        "drops_head",
        "expires",
        "expires_timer",
        "expiring",
        "expiry_timer",
        "gone",
        "host",
        "last_used",
        "levels",
        "max_bytes",
        "max_length",
        "max_priority",
        "monotonic",
        "overflow",
        "ready",
        "ready_bytes",
        "refuses",
        "single_active",
        "ttl",
    )

    def __init__(self, host: VHost, arguments: Mapping[str, Any]) -> None:
        self.host = host
        self.max_priority = int_argument(arguments.get("x-max-priority")) or 0
        self.levels: list[deque[RuledEntry]] = [deque() for _ in range(self.max_priority + 1)]
        self.ready = 0
        self.ready_bytes = 0
        self.gone = 0
        self.ttl = int_argument(arguments.get("x-message-ttl"))  # ms, or None
        self.expiring: list[tuple[float, int, RuledEntry]] = []  # own deadlines, a heap
        self.expiry_timer: Timer | None = None
        self.expires = int_argument(arguments.get("x-expires"))  # ms, or None
        self.expires_timer: Timer | None = None
        self.last_used = host.clock.monotonic()
        dlx = arguments.get("x-dead-letter-exchange")
        self.dead_letter_exchange = text_argument(dlx)
        self.dead_letter_routing_key = text_argument(arguments.get("x-dead-letter-routing-key"))
        self.max_length = int_argument(arguments.get("x-max-length"))
        self.max_bytes = int_argument(arguments.get("x-max-length-bytes"))
        self.overflow = text_argument(arguments.get("x-overflow")) or "drop-head"
        self.bounded = self.max_length is not None or self.max_bytes is not None
        self.refuses = self.bounded and self.overflow != "drop-head"  # reject-publish(-dlx)
        self.drops_head = self.bounded and self.overflow == "drop-head"
        self.monotonic = host.clock.monotonic
        self.delivery_limit = int_argument(arguments.get("x-delivery-limit"))
        quorum = text_argument(arguments.get("x-queue-type")) == "quorum"
        # Quorum queues show x-delivery-count on redeliveries; so does any queue with a limit.
        self.count_returns = quorum or self.delivery_limit is not None
        self.single_active = arguments.get("x-single-active-consumer") is True
        # A cancelled active consumer whose deliveries are not all settled yet.
        self.draining: Consumer | None = None
        # x-message-deduplication: the keys of the messages in line (core/dedup.py).
        self.dedup = (
            QueueDeduplication(arguments, host.clock)
            if QueueDeduplication.wanted(arguments)
            else None
        )


class RuledQueue(Queue):
    __slots__ = ()

    rules: Rules

    def setup(self, host: VHost) -> None:
        """Reads the rules from the queue's arguments; call once, after construction."""
        self.rules = Rules(host, self.arguments)
        self.settles_acks = self.rules.dedup is not None
        if self.rules.expires is not None:
            self._arm_expires()

    # -- counts --------------------------------------------------------------------

    @property
    def message_count(self) -> int:
        return self.rules.ready

    # -- messages in ---------------------------------------------------------------

    def publish(
        self,
        message: Message,
        redelivered: bool = False,
        store_id: int = 0,
        expiring: bool = False,
    ) -> QueueEntry | None:
        """Enqueues (or delivers at once) a new message; None when the queue refused it
        (x-overflow reject-publish and the queue is full).  ``expiring``: the message
        has an ``expiration`` property.  The hot path of a ruled queue: flags decided
        at declare keep each rule's cost away from queues without it."""
        rules = self.rules
        level = 0
        if rules.max_priority:
            priority = message.properties.priority
            if priority:
                level = priority if priority < rules.max_priority else rules.max_priority
        ttl = rules.ttl
        uniform = True  # the queue's own TTL: deadlines come in publish order
        if expiring:
            expiration = message.properties.expiration
            if expiration is not None:
                per_message = parse_expiration(expiration)
                if ttl is None or per_message < ttl:
                    ttl = per_message
                    uniform = False
        deadline = 0.0 if ttl is None else rules.monotonic() + ttl / 1000
        size = len(message.body)
        seq = self._next_seq
        self._next_seq = seq + 1
        entry = RuledEntry(seq, message, redelivered, store_id, deadline, level, size)
        if rules.refuses and self._full_for(size):
            entry.state = GONE
            if rules.overflow == "reject-publish-dlx":
                self._dead_letter([entry], "maxlen", admitted=False)
            else:
                Queue.settle(self, (entry,))
            return None
        if rules.dedup is not None and not rules.dedup.admit(message):
            # A duplicate of a message in the queue: dropped; a confirming publisher
            # still gets its ack (the plugin nacks; docs/compatibility.md).
            entry.state = GONE
            Queue.settle(self, (entry,))
            return entry
        if not rules.ready and self._consumers:
            consumer = self._ready_consumer()
            if consumer is not None:
                self._hand(consumer, entry)
                return entry
        if ttl == 0:
            # As RabbitMQ: a message with TTL 0 goes only to a consumer that can take it now.
            entry.state = GONE
            self._dead_letter([entry], "expired")
            return entry
        if store_id and rules.ready >= PAGE_OUT_DEPTH:
            entry.message = None  # the store has it; read it back when its turn comes
        rules.levels[level].append(entry)
        rules.ready += 1
        rules.ready_bytes += size
        if deadline:
            if not uniform:
                self._expire_at(entry)
            elif rules.expiry_timer is None:
                self._arm_expiry(deadline)
            # else: the queue's TTL orders deadlines as the line: the timer finds them
        if rules.drops_head:
            self._drop_overflow()
        return entry

    def restore(self, store_id: int, deliveries: int, time: int) -> None:
        """A stored message back in line at start-up; its expiry counts from ``time``
        (epoch ms when it was published; 0 when it had no TTL).

        The message is read back only when a rule needs it (priority, expiry, size,
        de-duplication); otherwise the entry stays paged out, body on disk.
        """
        rules = self.rules
        host = rules.host
        level = 0
        size = 0
        deadline = 0.0
        needs_message = (
            rules.max_priority
            or rules.dedup is not None
            or rules.max_bytes is not None
            or time
            or rules.ttl is not None
        )
        if needs_message:
            message = host.page_in_id(store_id)
            properties = message.properties
            size = len(message.body)
            if rules.max_priority and properties.priority:
                level = min(properties.priority, rules.max_priority)
            ttl = rules.ttl
            expiration = properties.expiration
            if expiration is not None:
                per_message = parse_expiration(expiration)  # was checked at publish
                ttl = per_message if ttl is None else min(ttl, per_message)
            if ttl is not None:
                clock = host.clock
                age = max(0.0, clock.time() - time / 1000) if time else 0.0
                deadline = clock.monotonic() + ttl / 1000 - age
            if rules.dedup is not None:
                rules.dedup.admit(message)  # the window of a restarted queue: what is in line
        seq = self._next_seq
        self._next_seq = seq + 1
        entry = RuledEntry(seq, None, deliveries > 0, store_id, deadline, level, size, deliveries)
        self._append(entry)
        if deadline:
            self._expire_at(entry)

    def _append(self, entry: RuledEntry) -> None:
        rules = self.rules
        if entry.store_id and rules.ready >= PAGE_OUT_DEPTH:
            entry.message = None  # the store has it; read it back when its turn comes
        rules.levels[entry.level].append(entry)
        rules.ready += 1
        rules.ready_bytes += entry.size

    def requeue(self, entries: Iterable[QueueEntry]) -> None:
        """Delivered entries come back: to their place in line, or dead-lettered when
        past the delivery limit or their deadline."""
        if self.deleted:
            return
        rules = self.rules
        back: list[RuledEntry] = []
        over_limit: list[RuledEntry] = []
        expired: list[RuledEntry] = []
        now = rules.host.clock.monotonic()
        for item in sorted(entries, key=by_seq):
            entry = item if isinstance(item, RuledEntry) else self._adopt(item)
            entry.returns += 1
            entry.redelivered = True
            if rules.delivery_limit is not None and entry.returns > rules.delivery_limit:
                over_limit.append(entry)
            elif entry.deadline and entry.deadline <= now:
                expired.append(entry)
            else:
                back.append(entry)
        for entry in over_limit + expired:
            entry.state = GONE
        if over_limit:
            self._dead_letter(over_limit, "delivery_limit")
        if expired:
            self._dead_letter(expired, "expired")
        by_level: dict[int, list[RuledEntry]] = {}
        for entry in back:
            entry.state = WAITING
            rules.ready += 1
            rules.ready_bytes += entry.size
            by_level.setdefault(entry.level, []).append(entry)
            if entry.deadline:
                self._expire_at(entry)
        for level, returned in by_level.items():
            merge_in_line(rules.levels[level], returned)
        self._drop_overflow()
        self.dispatch()

    def _adopt(self, entry: QueueEntry) -> RuledEntry:
        """A plain entry delivered before this queue was promoted, now coming back."""
        message = entry.message
        size = len(message.body) if message is not None else 0
        return RuledEntry(entry.seq, message, entry.redelivered, entry.store_id, 0.0, 0, size)

    # -- messages out --------------------------------------------------------------

    def dispatch(self) -> None:
        rules = self.rules
        consumers = self._consumers
        while rules.ready and consumers:
            consumer = self._ready_consumer()
            if consumer is None:
                return
            entry = self._next()
            if entry is None:
                return
            if entry.returns or consumer.no_ack:
                self._hand(consumer, entry)
            else:
                consumer.channel.deliver(consumer, entry)  # the common case, inlined

    def _next(self) -> RuledEntry | None:
        """Takes the next live entry out of line; expired ones met on the way are
        dead-lettered."""
        rules = self.rules
        now = 0.0
        levels = rules.levels
        for level in reversed(levels) if len(levels) > 1 else levels:
            while level:
                entry = level.popleft()
                if entry.state != WAITING:
                    rules.gone -= 1
                    continue
                rules.ready -= 1
                rules.ready_bytes -= entry.size
                if entry.deadline:
                    now = now or rules.monotonic()
                    if entry.deadline <= now:
                        entry.state = GONE
                        self._dead_letter([entry], "expired")
                        continue
                entry.state = OUT
                return entry
        return None

    def _hand(self, consumer: Consumer, entry: RuledEntry) -> None:
        entry.state = OUT
        if consumer.no_ack and not entry.store_id and self.rules.dedup is not None:
            self._release_keys([entry])  # gone as it leaves (a stored one is settled)
        if entry.returns and self.rules.count_returns:
            message = entry.message or self.rules.host.page_in(entry)
            consumer.channel.deliver(consumer, entry, self.outgoing(entry, message))
        else:
            consumer.deliver(entry)

    def outgoing(self, entry: QueueEntry, message: Message) -> Message:
        rules = self.rules
        # As RabbitMQ's quorum queues: basic.get always carries x-delivery-count (0 the
        # first time); a consumer gets it only on redeliveries (see _hand).
        if not rules.count_returns or not isinstance(entry, RuledEntry):
            return message
        headers = dict(message.properties.headers or {})
        headers["x-delivery-count"] = Long(entry.returns)
        properties = rules.host.edit_properties(message.properties, {"headers": headers})
        return Message(message.exchange, message.routing_key, properties, message.body)

    def get(self) -> QueueEntry | None:
        self.touch()
        return self._next()

    def purge(self) -> int:
        rules = self.rules
        count = rules.ready
        waiting = [e for level in rules.levels for e in level if e.state == WAITING]
        for entry in waiting:
            entry.state = GONE
        self.settle(waiting)
        for level in rules.levels:
            level.clear()
        rules.ready = rules.ready_bytes = rules.gone = 0
        rules.expiring.clear()
        if rules.expiry_timer is not None:
            rules.expiry_timer.cancel()
            rules.expiry_timer = None
        return count

    def reject(self, entries: Iterable[QueueEntry]) -> None:
        rejected = [e if isinstance(e, RuledEntry) else self._adopt(e) for e in entries]
        self._dead_letter(rejected, "rejected")

    def settle(self, entries: Iterable[QueueEntry]) -> None:
        """These entries left the queue for good: with de-duplication their keys may
        come again (as the plugin: on ack, reject or expiry; a requeue keeps the key)."""
        if self.rules.dedup is not None:
            entries = list(entries)
            self._release_keys(entries)
        super().settle(entries)

    def _release_keys(self, entries: Iterable[QueueEntry]) -> None:
        """These entries left the line: their de-duplication keys may come again."""
        dedup = self.rules.dedup
        assert dedup is not None
        host = self.rules.host
        for entry in entries:
            dedup.release(entry.message or host.page_in(entry))

    # -- consumers -----------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        super().add_consumer(consumer)
        self.touch()

    def remove_consumer(self, consumer: Consumer) -> None:
        super().remove_consumer(consumer)
        self.touch()

    # -- expiry of messages ---------------------------------------------------------

    def _expire_at(self, entry: RuledEntry) -> None:
        """Tracks the deadline of an entry with its own (a per-message TTL, a requeue)."""
        rules = self.rules
        heap = rules.expiring
        heapq.heappush(heap, (entry.deadline, entry.seq, entry))
        if len(heap) > 2 * rules.ready + _COMPACT_AFTER:
            rules.expiring = heap = [item for item in heap if item[2].state == WAITING]
            heapq.heapify(heap)
        timer = rules.expiry_timer
        if timer is None or entry.deadline < timer.when:
            self._arm_expiry(entry.deadline)

    def _arm_expiry(self, when: float) -> None:
        rules = self.rules
        if rules.expiry_timer is not None:
            rules.expiry_timer.cancel()
        rules.expiry_timer = rules.host.timers.call_at(when, self._expire_due)

    def _expire_due(self) -> None:
        rules = self.rules
        rules.expiry_timer = None
        if self.deleted:
            return
        now = rules.host.clock.monotonic()
        due: list[RuledEntry] = []
        heap = rules.expiring
        while heap and heap[0][0] <= now:
            deadline, _, entry = heapq.heappop(heap)
            if entry.state == WAITING and entry.deadline == deadline:
                due.append(entry)
                entry.state = GONE
        # Entries with the queue's TTL: in each level's line, deadlines grow with seq
        # (a requeued entry keeps its old one and its old place), so the expired ones
        # are at the heads.
        for level in rules.levels:
            while level:
                entry = level[0]
                if entry.state != WAITING:
                    level.popleft()
                    rules.gone -= 1
                elif entry.deadline and entry.deadline <= now:
                    level.popleft()
                    rules.gone -= 1  # counted back below with the others
                    due.append(entry)
                    entry.state = GONE
                else:
                    break
        if due:
            for entry in due:
                rules.ready -= 1
                rules.ready_bytes -= entry.size
                rules.gone += 1
            due.sort(key=by_seq)
            self._dead_letter(due, "expired")
            self._sweep()
        self._rearm_expiry()

    def _rearm_expiry(self) -> None:
        """Arms the expiry timer for the earliest deadline left, if any."""
        rules = self.rules
        if rules.expiry_timer is not None:
            return
        earliest = rules.expiring[0][0] if rules.expiring else None
        for level in rules.levels:
            for entry in level:
                if entry.state == WAITING:
                    if entry.deadline and (earliest is None or entry.deadline < earliest):
                        earliest = entry.deadline
                    break
        if earliest is not None:
            self._arm_expiry(earliest)

    def _sweep(self) -> None:
        """Drops gone entries from the heads of the deques, and from everywhere when
        they have piled up."""
        rules = self.rules
        for level in rules.levels:
            while level and level[0].state != WAITING:
                level.popleft()
                rules.gone -= 1
        if rules.gone > _COMPACT_AFTER and rules.gone > rules.ready:
            for index, level in enumerate(rules.levels):
                rules.levels[index] = deque(e for e in level if e.state == WAITING)
            rules.gone = 0

    # -- bounds --------------------------------------------------------------------

    def _full_for(self, size: int) -> bool:
        rules = self.rules
        return (rules.max_length is not None and rules.ready + 1 > rules.max_length) or (
            rules.max_bytes is not None and rules.ready_bytes + size > rules.max_bytes
        )

    def _drop_overflow(self) -> None:
        """drop-head: while over a bound, the head of the queue is dead-lettered (maxlen)."""
        rules = self.rules
        if rules.overflow != "drop-head" or (rules.max_length is None and rules.max_bytes is None):
            return
        dropped: list[RuledEntry] = []
        while rules.ready and (
            (rules.max_length is not None and rules.ready > rules.max_length)
            or (rules.max_bytes is not None and rules.ready_bytes > rules.max_bytes)
        ):
            entry = self._head()
            entry.state = GONE
            rules.ready -= 1
            rules.ready_bytes -= entry.size
            rules.gone += 1
            dropped.append(entry)
        if dropped:
            self._dead_letter(dropped, "maxlen")
            self._sweep()

    def _head(self) -> RuledEntry:
        for level in reversed(self.rules.levels):
            for entry in level:
                if entry.state == WAITING:
                    return entry
        raise AssertionError("ready count says an entry waits")

    # -- dead letters --------------------------------------------------------------

    def _dead_letter(self, entries: list[RuledEntry], reason: str, admitted: bool = True) -> None:
        """Republishes these entries to the dead-letter exchange (if any), then settles
        them; ``admitted``: they were in the queue (not refused at its door)."""
        rules = self.rules
        if rules.dead_letter_exchange is not None and not self.deleted:
            for entry in entries:
                rules.host.dead_letter(
                    self,
                    entry,
                    reason,
                    rules.dead_letter_exchange,
                    rules.dead_letter_routing_key,
                )
        if admitted:
            self.settle(entries)
        else:
            Queue.settle(self, entries)

    # -- queue expiry (x-expires) -----------------------------------------------------

    def touch(self) -> None:
        self.rules.last_used = self.rules.host.clock.monotonic()

    def _arm_expires(self) -> None:
        rules = self.rules
        assert rules.expires is not None
        rules.expires_timer = rules.host.timers.call_at(
            rules.last_used + rules.expires / 1000, self._expires_due
        )

    def _expires_due(self) -> None:
        rules = self.rules
        if self.deleted or rules.expires is None:
            return
        if self._consumers:
            self.touch()
        elif rules.host.clock.monotonic() >= rules.last_used + rules.expires / 1000:
            rules.host.expire_queue(self)
            return
        self._arm_expires()


class SingleActiveQueue(RuledQueue):
    """x-single-active-consumer: the first registered consumer gets every message; the
    next takes over when it goes (a class of its own: other queues skip the check)."""

    __slots__ = ()

    def _ready_consumer(self) -> Consumer | None:
        rules = self.rules
        draining = rules.draining
        if draining is not None:
            if draining.unacked and not draining.channel.closed:
                return None
            rules.draining = None
        active = self._consumers[0]
        return active if active.ready() else None

    def remove_consumer(self, consumer: Consumer) -> None:
        was_active = bool(self._consumers) and self._consumers[0] is consumer
        super().remove_consumer(consumer)
        if was_active:
            if consumer.unacked:
                # It stays the active one until its deliveries are settled: never two
                # consumers at work at once, and requeued messages (a closing channel)
                # go first to the next one, in queue order, as in RabbitMQ.
                self.rules.draining = consumer
                return
            self.dispatch()  # the next consumer in line takes over


def promote(queue: Queue, host: VHost) -> RuledQueue:
    """Turns a plain queue into a ruled one in place (a message with a per-message TTL
    arrived).  The two classes share one memory layout, so ``__class__`` can change;
    waiting entries move into the ruled queue's line."""
    if isinstance(queue, RuledQueue):
        return queue
    waiting = list(queue.messages)
    queue.messages.clear()
    queue.__class__ = RuledQueue
    ruled: RuledQueue = queue  # type: ignore[assignment]
    ruled.setup(host)
    for old in waiting:
        size = len(old.message.body) if old.message is not None else 0
        ruled._append(RuledEntry(old.seq, old.message, old.redelivered, old.store_id, 0.0, 0, size))
    return ruled
