"""A channel's delivery state: consumers, unacked deliveries, prefetch, confirms, transactions.

The core channel does not know how its deliveries travel: it hands them to a
:class:`DeliverySink` (the server's network channel today, an in-process client
later).  Delivery tags are numbered per channel from 1.  Unacked deliveries live in
a dict keyed by tag, in tag order, so an ack is a dict pop and ``multiple`` walks a
range of tags.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import (
    AccessRefused,
    AMQPError,
    AMQPNotImplemented,
    NotAllowed,
    NotFound,
    PreconditionFailed,
)
from .ack_timeout import effective_timeout, timeout_argument
from .arguments import int_argument, wire_type
from .deadletter import parse_expiration
from .exchange import Exchange
from .message import Message, Properties, QueueEntry, routing_keys_of
from .queue import Queue
from .vhost import DIRECT_REPLY_TO, REJECTED, ROUTED, STORED, VHost

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Channel", "Consumer", "DeliverySink"]


NO_ROUTE = 312

# How a delivery ends (Channel._settle).
ACKED, REQUEUED, REJECTED_ = 0, 1, 2


class DeliverySink(Protocol):
    """Where a channel's outgoing traffic goes."""

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        """A basic.deliver of ``message`` to the consumer ``consumer_tag``."""

    def returned(self, reply_code: int, reply_text: str, message: Message) -> None:
        """A basic.return of an unroutable mandatory message."""

    def confirm(self, seq: int, ack: bool) -> None:
        """The publish numbered ``seq`` is confirmed (ack) or refused (nack)."""

    def consumer_cancelled(self, consumer_tag: str) -> None:
        """The broker cancelled a consumer (its queue went away)."""

    def fail(self, error: AMQPError) -> None:
        """The channel must close with ``error`` (a delivery was not acked in time)."""


class Consumer:
    __slots__ = (
        "arguments",
        "channel",
        "exclusive",
        "no_ack",
        "prefetch",
        "priority",
        "queue",
        "tag",
        "timeout",
        "unacked",
    )

    def __init__(
        self,
        tag: str,
        queue: Queue | None,
        channel: Channel,
        *,
        no_ack: bool,
        exclusive: bool,
        prefetch: int,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        self.tag = tag
        self.queue = queue
        self.channel = channel
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0
        self.arguments = dict(arguments or {})
        priority = self.arguments.get("x-priority", 0)
        # x-priority: higher-priority consumers get messages while they have room.
        self.priority = int_argument(priority) or 0
        # x-consumer-timeout (ms): this consumer's ack timeout, over the queue's and broker's.
        self.timeout = timeout_argument(self.arguments)

    def ready(self) -> bool:
        channel = self.channel
        if not channel.flow_active or not channel.connection.writable:
            return False
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        limit = channel.global_prefetch
        return not limit or channel.unacked_count < limit

    def deliver(self, entry: QueueEntry) -> None:
        self.channel.deliver(self, entry)

    def __repr__(self) -> str:
        return f"Consumer({self.tag!r})"


# An unacked delivery: the entry, the queue it came from, the consumer it went to
# (None for basic.get).
Unacked = tuple[QueueEntry, Queue | None, Consumer | None]


class Channel:
    def __init__(self, connection: Connection, number: int, sink: DeliverySink) -> None:
        self.connection = connection
        self.vhost: VHost = connection.vhost
        self.number = number
        self.sink = sink
        self.consumers: dict[str, Consumer] = {}
        self.unacked: dict[int, Unacked] = {}
        self._next_tag = 1
        self._ack_floor = 1  # no unacked tag is below this
        self.prefetch_count = 0  # for consumers created from now on
        self.global_prefetch = 0
        self.unacked_count = 0  # consumer deliveries awaiting ack
        self.flow_active = True
        self.confirm_mode = False
        self._publish_seq = 0
        self._stored_since_confirm = False
        self._syncs_pending = 0
        self.tx_mode = False
        self._tx_publishes: list[tuple[str, Message, bool, bool]] = []
        self._tx_settles: list[tuple[list[Unacked], int]] = []
        self._tx_taken: list[tuple[int, Unacked]] = []
        self.last_queue: str | None = None
        self.reply_address: str | None = None
        self.closed = False
        # (time, next delivery tag) marks for the ack timeout check (core/ack_timeout.py);
        # made at the first check (an empty deque costs 600 bytes per idle channel).
        self.ack_marks: deque[tuple[float, int]] | None = None

    @property
    def next_delivery_tag(self) -> int:
        return self._next_tag

    # -- queues --------------------------------------------------------------------

    def queue_name(self, name: str) -> str:
        """An empty queue name means the queue last declared on this channel."""
        if name:
            return name
        if self.last_queue is None:
            raise NotFound("no previously declared queue")
        return self.last_queue

    def declare_queue(
        self,
        name: str,
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> Queue | None:
        """Declares a queue and remembers it as the channel's last; None for the reply-to pseudo-queue."""
        if passive and (name == DIRECT_REPLY_TO or self.vhost.reply_consumer(name) is not None):
            return None
        queue = self.vhost.declare_queue(
            name,
            owner=self.connection,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        if queue.exclusive:
            self.connection.exclusive_queues[queue.name] = queue
        self.last_queue = queue.name
        return queue

    def queue(self, name: str) -> Queue:
        return self.vhost.queue(self.queue_name(name), self.connection)

    def delete_queue(self, name: str, *, if_unused: bool, if_empty: bool) -> int:
        name = self.queue_name(name)
        count = self.vhost.delete_queue(
            name, owner=self.connection, if_unused=if_unused, if_empty=if_empty
        )
        self.connection.exclusive_queues.pop(name, None)
        return count

    # -- consumers -----------------------------------------------------------------

    def consume(
        self,
        queue_name: str,
        tag: str,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> str:
        if tag in self.consumers:
            raise NotAllowed(f"attempt to reuse consumer tag '{tag}'")
        if not tag:
            tag = "amq.ctag-" + secrets.token_urlsafe(16)
        if queue_name == DIRECT_REPLY_TO:
            return self._consume_replies(tag, no_ack)
        queue = self.queue(queue_name)
        priority = (arguments or {}).get("x-priority")
        if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
            raise PreconditionFailed(
                f"invalid arg 'x-priority' for queue '{queue.name}' in vhost "
                f"'{self.vhost.name}': \"expected integer, got {wire_type(priority)}\""
            )
        if queue.consumers and (exclusive or any(c.exclusive for c in queue.consumers)):
            raise AccessRefused(
                f"queue '{queue.name}' in vhost '{self.vhost.name}' in exclusive use"
            )
        consumer = Consumer(
            tag,
            queue,
            self,
            no_ack=no_ack,
            exclusive=exclusive,
            prefetch=self.prefetch_count,
            arguments=arguments,
        )
        self.consumers[tag] = consumer
        queue.add_consumer(consumer)
        timeout = effective_timeout(consumer, queue, 0)
        if timeout is not None:
            self.connection.broker.ack_timeouts.watch(timeout)
        return tag

    def _consume_replies(self, tag: str, no_ack: bool) -> str:
        if not no_ack:
            raise PreconditionFailed("reply consumer cannot acknowledge")
        if self.reply_address is not None:
            raise PreconditionFailed("reply consumer already set")
        consumer = Consumer(
            tag, None, self, no_ack=True, exclusive=True, prefetch=0, arguments=None
        )
        self.consumers[tag] = consumer
        self.reply_address = self.vhost.add_reply_consumer(consumer)
        return tag

    def start(self, tag: str) -> None:
        """Starts deliveries to a new consumer, once the client has its consume-ok."""
        consumer = self.consumers.get(tag)
        if consumer is not None and consumer.queue is not None:
            consumer.queue.dispatch()

    def cancel(self, tag: str) -> None:
        """Cancels a consumer; an unknown tag is not an error (AMQP 0-9-1 basic.cancel)."""
        consumer = self.consumers.pop(tag, None)
        if consumer is not None:
            self._detach(consumer)

    def _detach(self, consumer: Consumer) -> None:
        queue = consumer.queue
        if queue is None:
            if self.reply_address is not None:
                self.vhost.remove_reply_consumer(self.reply_address)
                self.reply_address = None
            return
        queue.remove_consumer(consumer)
        if queue.unused_auto_delete and not queue.deleted:
            self.vhost.remove_queue(queue)

    def cancelled_by_server(self, consumer: Consumer) -> None:
        if self.consumers.pop(consumer.tag, None) is not None:
            if consumer.queue is not None:
                consumer.queue.remove_consumer(consumer)
            self.sink.consumer_cancelled(consumer.tag)

    # -- delivery ------------------------------------------------------------------

    def deliver(
        self, consumer: Consumer, entry: QueueEntry, message: Message | None = None
    ) -> None:
        """Delivers an entry to a consumer; ``message`` is what the consumer sees when a
        ruled queue added headers to it."""
        if message is None:
            message = entry.message or self.vhost.page_in(entry)  # before settling it
        tag = self._next_tag
        self._next_tag = tag + 1
        queue = consumer.queue
        if entry.store_id and queue is not None:
            queue.delivered(entry)
            if consumer.no_ack:
                queue.settle((entry,))
        if not consumer.no_ack:
            self.unacked[tag] = (entry, queue, consumer)
            consumer.unacked += 1
            self.unacked_count += 1
        self.sink.deliver(consumer.tag, tag, entry.redelivered, message)

    def get(self, queue_name: str, no_ack: bool) -> tuple[int, QueueEntry, Message, int] | None:
        """basic.get: (delivery tag, entry, message as sent, messages left), or None
        when the queue is empty."""
        queue = self.queue(queue_name)
        entry = queue.get()
        if entry is None:
            return None
        tag = self._next_tag
        self._next_tag = tag + 1
        message = queue.outgoing(entry, entry.message or self.vhost.page_in(entry))
        if entry.store_id:
            queue.delivered(entry)
        if no_ack and (entry.store_id or queue.settles_acks):
            queue.settle((entry,))
        if not no_ack:
            self.unacked[tag] = (entry, queue, None)
            timeout = effective_timeout(None, queue, 0)
            if timeout is not None:
                self.connection.broker.ack_timeouts.watch(timeout)
        return tag, entry, message, queue.message_count

    def qos(self, prefetch_size: int, prefetch_count: int, global_: bool) -> None:
        if prefetch_size:
            raise AMQPNotImplemented(f"prefetch_size!=0 ({prefetch_size})")
        if global_:
            self.global_prefetch = prefetch_count
        else:
            # As RabbitMQ: a per-consumer limit lifts the channel-wide one.
            self.prefetch_count = prefetch_count
            self.global_prefetch = 0
        self._kick_all()

    def flow(self, active: bool) -> None:
        self.flow_active = active
        if active:
            self._kick_all()

    def _kick_all(self) -> None:
        # A dict, not a set: the core is deterministic, queues are kicked in order.
        for queue in dict.fromkeys(c.queue for c in self.consumers.values() if c.queue is not None):
            queue.dispatch()

    # -- acknowledgements ----------------------------------------------------------

    def _take(self, delivery_tag: int, multiple: bool) -> list[Unacked]:
        unacked = self.unacked
        if multiple and delivery_tag == 0:
            taken = list(unacked.items())
            unacked.clear()
        else:
            if delivery_tag not in unacked:
                raise PreconditionFailed(f"unknown delivery tag {delivery_tag}")
            if not multiple:
                record = unacked.pop(delivery_tag)
                if self.tx_mode:
                    self._tx_taken.append((delivery_tag, record))
                return [record]
            taken = []
            for tag in range(self._ack_floor, delivery_tag + 1):
                record_ = unacked.pop(tag, None)
                if record_ is not None:
                    taken.append((tag, record_))
        self._ack_floor = max(self._ack_floor, delivery_tag + 1)
        if self.tx_mode:
            self._tx_taken.extend(taken)
        return [record for _, record in taken]

    def ack(self, delivery_tag: int, multiple: bool) -> None:
        if multiple and delivery_tag and not self.tx_mode and delivery_tag in self.unacked:
            self._ack_upto(delivery_tag)
            return
        records = self._take(delivery_tag, multiple)
        if self.tx_mode:
            self._tx_settles.append((records, ACKED))
        else:
            self._settle(records, ACKED)

    def _ack_upto(self, delivery_tag: int) -> None:
        """basic.ack multiple=true outside a transaction: the hot path of acks, without
        the (tag, record) pairs a transaction needs."""
        pop = self.unacked.pop
        records: list[Unacked] = []
        append = records.append
        for tag in range(self._ack_floor, delivery_tag + 1):
            record = pop(tag, None)
            if record is not None:
                append(record)
        self._ack_floor = delivery_tag + 1
        self._settle(records, ACKED)

    def nack(self, delivery_tag: int, multiple: bool, requeue: bool) -> None:
        records = self._take(delivery_tag, multiple)
        how = REQUEUED if requeue else REJECTED_
        if self.tx_mode:
            self._tx_settles.append((records, how))
        else:
            self._settle(records, how)

    def reject(self, delivery_tag: int, requeue: bool) -> None:
        self.nack(delivery_tag, False, requeue)

    def recover(self, requeue: bool) -> None:
        """basic.recover: every unacked delivery goes back to its queue, redelivered.

        As RabbitMQ, requeue=false (redeliver to the same consumer) is not
        implemented and closes the connection with 540.
        """
        if not requeue:
            raise AMQPNotImplemented("requeue=false")
        records = list(self.unacked.values())
        self.unacked.clear()
        self._settle(records, REQUEUED)

    def _settle(self, records: list[Unacked], how: int) -> None:
        """Ends deliveries: acked, requeued, or rejected (dead-lettered by a ruled queue)."""
        kicked: dict[Queue, None] = {}
        settled: dict[Queue, list[QueueEntry]] = {}
        # Deliveries to one consumer come in runs: its count is settled once per run.
        run_consumer: Consumer | None = None
        run = 0
        for entry, queue, consumer in records:
            if consumer is not run_consumer:
                if run_consumer is not None:
                    self._release_run(run_consumer, run, kicked)
                run_consumer, run = consumer, 0
            if consumer is not None:
                run += 1
            # Acks of transient messages concern only ruled queues (de-duplication keys).
            if queue is not None and (how or entry.store_id or queue.settles_acks):
                settled.setdefault(queue, []).append(entry)
        if run_consumer is not None:
            self._release_run(run_consumer, run, kicked)
        for queue, entries in settled.items():
            if how == REQUEUED:
                queue.requeue(entries)
            elif how == REJECTED_:
                queue.reject(entries)
            else:
                queue.settle(entries)
        if self.global_prefetch:
            self._kick_all()
        else:
            for queue in kicked:
                queue.dispatch()

    def _release_run(self, consumer: Consumer, count: int, kicked: dict[Queue, None]) -> None:
        """``count`` deliveries to ``consumer`` ended: it has prefetch room again."""
        consumer.unacked -= count
        self.unacked_count -= count
        if consumer.queue is not None:
            kicked[consumer.queue] = None

    # -- publishing ----------------------------------------------------------------

    def publish(
        self,
        exchange_name: str,
        routing_key: str,
        mandatory: bool,
        immediate: bool,
        properties: Properties,
        body: bytes,
    ) -> None:
        if immediate:
            raise AMQPNotImplemented("immediate=true")
        exchange = self.vhost.exchanges.get(exchange_name)
        if exchange is None:
            raise NotFound(f"no exchange '{exchange_name}' in vhost '{self.vhost.name}'")
        if exchange.internal:
            raise AccessRefused(
                f"cannot publish to internal exchange '{exchange_name}' in vhost '{self.vhost.name}'"
            )
        expiring = False
        inspect = properties.inspect_on_publish
        if inspect:
            properties, expiring = self._inspect(properties)
        message = Message(exchange_name, routing_key, properties, body)
        if self.tx_mode:
            self._tx_publishes.append((exchange_name, message, mandatory, expiring))
            return
        refused = self._route(message, mandatory, expiring, exchange, inspect)
        if self.confirm_mode:
            self._publish_seq += 1
            self._confirm(self._publish_seq, not refused)

    def _confirm(self, seq: int, ack: bool = True) -> None:
        """Confirms a publish, after the store has it on disk if it was stored; a nack
        when a full queue refused it (x-overflow reject-publish).

        Confirms leave in publish order: once one waits for the store, the ones after
        it wait too (the store runs its callbacks in order).
        """
        if not self._stored_since_confirm and not self._syncs_pending:
            self.sink.confirm(seq, ack)
            return
        self._stored_since_confirm = False
        self._syncs_pending += 1

        def synced() -> None:
            self._syncs_pending -= 1
            if not self.closed:
                self.sink.confirm(seq, ack)

        self.vhost.store.sync(synced)

    def _inspect(self, properties: Properties) -> tuple[Properties, bool]:
        """The publish-time rules on properties: user_id, expiration, direct reply-to.

        Returns the properties (maybe edited) and whether the message has an expiration.
        """
        user_id = properties.user_id
        if user_id is not None and user_id != self.connection.user:
            raise PreconditionFailed(
                f"user_id property set to '{user_id}' but authenticated user was "
                f"'{self.connection.user}'"
            )
        expiration = properties.expiration
        if expiration is not None:
            parse_expiration(expiration)  # 406 for a value RabbitMQ refuses
        if properties.reply_to == DIRECT_REPLY_TO:
            if self.reply_address is None:
                raise PreconditionFailed("fast reply consumer does not exist")
            properties = self.connection.broker.edit_properties(
                properties, {"reply_to": self.reply_address}
            )
        return properties, expiration is not None

    def _route(
        self,
        message: Message,
        mandatory: bool,
        expiring: bool = False,
        exchange: Exchange | None = None,
        inspect: bool = True,
    ) -> bool:
        """Routes and enqueues a message; True when a full queue refused it.

        ``exchange`` is the message's exchange when the caller has just looked it up
        (None: look it up, it may be gone after a transaction); ``inspect`` False is
        the properties' promise that no CC/BCC headers need reading.
        """
        vhost = self.vhost
        if exchange is None:
            exchange = vhost.exchanges.get(message.exchange)
        if exchange is None:  # deleted inside a transaction
            queues: list[Queue] = []
        elif inspect and message.properties.inspect_on_publish:
            queues = self._route_sender_selected(exchange, message)
        else:
            queues = vhost.route(exchange, message)
        result = None
        if exchange is not None and exchange.behaviour is not None:
            result = exchange.behaviour.publish(message, queues, expiring)
        if result is None:
            result = vhost.enqueue(message, queues, expiring) if queues else 0
        if result & STORED:
            self._stored_since_confirm = True
        if not result & ROUTED:
            if message.exchange == "":
                consumer = vhost.reply_consumer(message.routing_key)
                if consumer is not None:
                    consumer.deliver(QueueEntry(0, message))
                    return False
            if mandatory:
                self.sink.returned(NO_ROUTE, "NO_ROUTE", message)
        return bool(result & REJECTED)

    def _route_sender_selected(self, exchange: Exchange, message: Message) -> list[Queue]:
        """Routing with RabbitMQ's sender-selected distribution: the CC and BCC headers
        name more routing keys, and BCC is removed before delivery."""
        headers = message.properties.headers or {}
        extra = [*routing_keys_of(headers.get("CC")), *routing_keys_of(headers.get("BCC"))]
        if not extra:
            return self.vhost.route(exchange, message)
        if "BCC" in headers:
            trimmed = {key: value for key, value in headers.items() if key != "BCC"}
            message.properties = self.connection.broker.edit_properties(
                message.properties, {"headers": trimmed}
            )
        found = dict.fromkeys(self.vhost.route(exchange, message))
        for key in extra:
            probe = Message(message.exchange, key, message.properties, message.body)
            found.update(dict.fromkeys(self.vhost.route(exchange, probe)))
        return list(found)

    # -- confirms and transactions -------------------------------------------------

    def select_confirm(self) -> None:
        if self.tx_mode:
            raise PreconditionFailed("cannot switch from tx to confirm mode")
        self.confirm_mode = True

    def select_tx(self) -> None:
        if self.confirm_mode:
            raise PreconditionFailed("cannot switch from confirm to tx mode")
        self.tx_mode = True

    def commit(self) -> None:
        if not self.tx_mode:
            raise PreconditionFailed("channel is not transactional")
        publishes, settles = self._tx_publishes, self._tx_settles
        self._tx_publishes, self._tx_settles, self._tx_taken = [], [], []
        for _, message, mandatory, expiring in publishes:
            self._route(message, mandatory, expiring)
        for records, how in settles:
            self._settle(records, how)

    def rollback(self) -> None:
        if not self.tx_mode:
            raise PreconditionFailed("channel is not transactional")
        if self._tx_taken:
            for tag, record in self._tx_taken:
                self.unacked[tag] = record
            self.unacked = dict(sorted(self.unacked.items()))
            self._ack_floor = min(self._ack_floor, min(tag for tag, _ in self._tx_taken))
        self._tx_publishes, self._tx_settles, self._tx_taken = [], [], []

    # -- closing -------------------------------------------------------------------

    def close(self) -> None:
        """The channel is gone: cancel its consumers, requeue what it did not ack."""
        if self.closed:
            return
        self.closed = True
        for consumer in list(self.consumers.values()):
            self._detach(consumer)
        self.consumers.clear()
        self._tx_publishes, self._tx_settles = [], []
        for tag, record in self._tx_taken:
            self.unacked[tag] = record
        records = list(self.unacked.values())
        self.unacked.clear()
        self._settle(records, REQUEUED)
