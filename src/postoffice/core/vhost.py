"""A virtual host: its exchanges, queues and bindings, and the rules for changing them.

Error texts follow RabbitMQ's word for word where clients or people match on them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import AccessRefused, InternalError, NotFound, PreconditionFailed, ResourceLocked
from ..store import BindingRecord, ExchangeRecord, QueueRecord, Store
from .arguments import check_queue_arguments, check_queue_type
from .clock import Clock, SystemClock
from .deadletter import dead_letter_headers, is_cycle
from .exchange import (
    EXCHANGE_TYPES,
    Binding,
    Exchange,
    check_arguments_equivalent,
    freeze_arguments,
)
from .message import Message, Properties, QueueEntry, routing_keys_of
from .plugins import PLUGIN_EXCHANGES
from .queue import Queue
from .ruled import RuledQueue, SingleActiveQueue, needs_rules, promote
from .timers import Timers

if TYPE_CHECKING:
    from .channel import Consumer

__all__ = ["DIRECT_REPLY_TO", "INTERNAL_QUEUE_PREFIX", "REJECTED", "ROUTED", "STORED", "VHost"]

# What became of a message handed to its queues (VHost.enqueue), as bits.
ROUTED = 1  # at least one queue took it
STORED = 2  # written to the store: a confirm waits for the store's sync
REJECTED = 4  # a full queue refused it (x-overflow reject-publish): the publisher gets a nack

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

# Store queues that hold a plugin exchange's durable state (held delayed messages, a
# de-duplication window) are named with this prefix: clients cannot declare "amq."
# queues, so the names never clash, and recovery leaves them to their exchange.
INTERNAL_QUEUE_PREFIX = "amq.internal."
_REPLY_TO_PREFIX = DIRECT_REPLY_TO + "."

# The queue arguments RabbitMQ compares when a queue is declared again.
QUEUE_EQUIVALENCE_ARGUMENTS = (
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-dead-letter-strategy",
    "x-queue-master-locator",
    "x-queue-leader-locator",
    "x-initial-cluster-size",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
)

_STANDARD_EXCHANGES = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)

QueueCancelled = Callable[["Consumer"], None]
PropertiesEditor = Callable[[Properties, dict[str, Any]], Properties]


class VHost:
    def __init__(
        self,
        name: str,
        store: Store,
        read_properties: Callable[[bytes], Properties] | None = None,
        *,
        clock: Clock | None = None,
        timers: Timers | None = None,
        edit_properties: PropertiesEditor | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self._read_properties = read_properties
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.timers = timers if timers is not None else Timers(self.clock)
        self._edit_properties = edit_properties
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        # Bindings by destination, so deleting a queue or exchange finds its bindings.
        self._incoming: dict[tuple[bool, str], dict[Binding, None]] = {}
        # Direct reply-to consumers by the token in their reply address.
        self.reply_consumers: dict[str, Consumer] = {}
        self.exchanges[""] = Exchange("", "direct", durable=True)
        for name_, type_ in _STANDARD_EXCHANGES:
            self.exchanges[name_] = Exchange(name_, type_, durable=True)

    # -- exchanges -----------------------------------------------------------------

    def declare_exchange(
        self,
        name: str,
        type: str,
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> Exchange:
        if not passive and type not in EXCHANGE_TYPES and type not in PLUGIN_EXCHANGES:
            # RabbitMQ 3.10 closes the connection with 503 here; newer versions close the
            # channel with 406, which is what clients' suites expect (docs/compatibility.md).
            raise PreconditionFailed(f"unknown exchange type '{type}'")
        if name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        existing = self.exchanges.get(name)
        if passive:
            if existing is None:
                raise NotFound(f"no exchange '{name}' in vhost '{self.name}'")
            return existing
        if existing is not None:
            existing.check_equivalent(type, durable, auto_delete, internal, arguments, self.name)
            return existing
        _check_name("exchange", name)
        plugin = PLUGIN_EXCHANGES.get(type)
        if plugin is not None:
            plugin.check_arguments(arguments or {}, f"exchange '{name}' in vhost '{self.name}'")
        exchange = self._new_exchange(name, type, durable, auto_delete, internal, arguments or {})
        if durable:
            self.store.put(_exchange_record(self.name, exchange))
        return exchange

    def _new_exchange(
        self,
        name: str,
        type: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: Mapping[str, Any],
    ) -> Exchange:
        plugin = PLUGIN_EXCHANGES.get(type)
        exchange = Exchange(
            name,
            type,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
            routing_type=plugin.routing_type(arguments) if plugin is not None else None,
        )
        self.exchanges[name] = exchange
        if plugin is not None:
            exchange.behaviour = plugin(self, exchange)
        return exchange

    def exchange(self, name: str) -> Exchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise NotFound(f"no exchange '{name}' in vhost '{self.name}'")
        return exchange

    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        if name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        if name.startswith("amq."):
            raise AccessRefused(
                f"deletion of system exchange '{name}' in vhost '{self.name}' not allowed"
            )
        exchange = self.exchanges.get(name)
        if exchange is None:
            return  # as RabbitMQ 3.x: deleting a missing exchange succeeds
        if if_unused and exchange.bindings:
            raise PreconditionFailed(f"exchange '{name}' in vhost '{self.name}' in use")
        self._remove_exchange(exchange)

    def _remove_exchange(self, exchange: Exchange) -> None:
        for binding in list(exchange.bindings):
            self._remove_binding(binding, allow_auto_delete=False)
        for binding in list(self._incoming.get((False, exchange.name), ())):
            self._remove_binding(binding)
        self._incoming.pop((False, exchange.name), None)
        del self.exchanges[exchange.name]
        if exchange.behaviour is not None:
            exchange.behaviour.deleted()
        if exchange.durable:
            self.store.delete(_exchange_record(self.name, exchange))

    # -- queues --------------------------------------------------------------------

    def declare_queue(
        self,
        name: str,
        *,
        owner: object,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> Queue:
        if passive:
            queue = self.queue(name, owner)
            queue.touch()  # as RabbitMQ: a passive declare counts as a use (x-expires)
            return queue
        if name == "":
            queue_type = (arguments or {}).get("x-queue-type")
            if queue_type in ("quorum", b"quorum"):
                raise PreconditionFailed(
                    'Cannot declare a server-named queue for type <<"quorum">>'
                )
            name = "amq.gen-" + secrets.token_urlsafe(16)
        else:
            _check_name("queue", name)
        existing = self.queues.get(name)
        if existing is None:
            what = f"queue '{name}' in vhost '{self.name}'"
            check_queue_arguments(arguments or {}, what)
            check_queue_type(arguments or {}, what, durable, exclusive, auto_delete)
        else:
            self._check_access(existing, owner)
            _check_queue_equivalent(
                existing, durable, exclusive, auto_delete, arguments or {}, self.name
            )
            existing.touch()
            return existing
        queue = self._new_queue(
            name,
            durable=durable,
            exclusive_owner=owner if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments or {},
        )
        if queue.persisted:
            queue.store = self.store
            self.store.put(_queue_record(queue))
        return queue

    def _new_queue(
        self,
        name: str,
        *,
        durable: bool,
        exclusive_owner: object | None,
        auto_delete: bool,
        arguments: Mapping[str, Any],
    ) -> Queue:
        """A queue of the class its arguments call for, registered in this vhost."""
        kind: type[Queue] = Queue
        if arguments.get("x-single-active-consumer") is True:
            kind = SingleActiveQueue
        elif needs_rules(arguments):
            kind = RuledQueue
        queue = kind(
            name,
            self.name,
            durable=durable,
            exclusive_owner=exclusive_owner,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        if isinstance(queue, RuledQueue):
            queue.setup(self)
        self.queues[name] = queue
        return queue

    def expire_queue(self, queue: Queue) -> None:
        """x-expires: the queue went unused for its time; deleted as if by queue.delete."""
        if self.queues.get(queue.name) is queue:
            if queue.exclusive_owner is not None:
                getattr(queue.exclusive_owner, "exclusive_queues", {}).pop(queue.name, None)
            self.remove_queue(queue)

    def queue(self, name: str, owner: object) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise NotFound(f"no queue '{name}' in vhost '{self.name}'")
        self._check_access(queue, owner)
        return queue

    def _check_access(self, queue: Queue, owner: object) -> None:
        if queue.exclusive_owner is not None and queue.exclusive_owner is not owner:
            raise ResourceLocked(
                f"cannot obtain exclusive access to locked queue '{queue.name}' in vhost "
                f"'{self.name}'. It could be originally declared on another connection or the "
                "exclusive property value does not match that of the original declaration."
            )

    def delete_queue(
        self,
        name: str,
        *,
        owner: object,
        if_unused: bool = False,
        if_empty: bool = False,
        cancelled: QueueCancelled | None = None,
    ) -> int:
        queue = self.queues.get(name)
        if queue is None:
            return 0  # as RabbitMQ 3.x: deleting a missing queue succeeds
        self._check_access(queue, owner)
        if if_unused and queue.consumer_count:
            raise PreconditionFailed(f"queue '{name}' in vhost '{self.name}' in use")
        if if_empty and queue.message_count:
            raise PreconditionFailed(f"queue '{name}' in vhost '{self.name}' not empty")
        return self.remove_queue(queue)

    def remove_queue(self, queue: Queue) -> int:
        """Deletes a queue, telling its consumers; returns how many messages it held."""
        if queue.deleted:
            return 0
        queue.deleted = True
        del self.queues[queue.name]
        count = queue.purge()
        for consumer in list(queue.consumers):
            consumer.channel.cancelled_by_server(consumer)
        for binding in list(self._incoming.get((True, queue.name), ())):
            self._remove_binding(binding)
        self._incoming.pop((True, queue.name), None)
        if queue.persisted:
            self.store.delete(_queue_record(queue))
        return count

    # -- bindings ------------------------------------------------------------------

    def bind_queue(
        self,
        queue_name: str,
        exchange_name: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
        owner: object,
    ) -> None:
        if exchange_name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        exchange = self.exchange(exchange_name)
        self._bind(exchange, self.queue(queue_name, owner), routing_key, arguments)

    def unbind_queue(
        self,
        queue_name: str,
        exchange_name: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
        owner: object,
    ) -> None:
        """Removes a binding; as RabbitMQ, a missing binding, queue or exchange is no error."""
        if exchange_name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        exchange = self.exchanges.get(exchange_name)
        if exchange is None:
            return
        binding = Binding(exchange.name, queue_name, True, routing_key, freeze_arguments(arguments))
        if binding in exchange.bindings:
            queue = self.queues.get(queue_name)
            if queue is not None:
                self._check_access(queue, owner)
            self._remove_binding(binding)

    def bind_exchange(
        self, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        if destination == "" or source == "":
            raise AccessRefused("operation not permitted on the default exchange")
        origin = self.exchange(source)
        self._bind(origin, self.exchange(destination), routing_key, arguments)

    def unbind_exchange(
        self, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        """Removes an exchange-to-exchange binding; missing things are no error, as in RabbitMQ."""
        if destination == "" or source == "":
            raise AccessRefused("operation not permitted on the default exchange")
        exchange = self.exchanges.get(source)
        if exchange is None:
            return
        binding = Binding(
            exchange.name, destination, False, routing_key, freeze_arguments(arguments)
        )
        if binding in exchange.bindings:
            self._remove_binding(binding)

    def _bind(
        self,
        exchange: Exchange,
        destination: Queue | Exchange,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
        persist: bool = True,
    ) -> None:
        is_queue = isinstance(destination, Queue)
        binding = Binding(
            exchange.name, destination.name, is_queue, routing_key, freeze_arguments(arguments)
        )
        if not exchange.add_binding(binding, destination, arguments or {}):
            return
        self._incoming.setdefault((is_queue, destination.name), {})[binding] = None
        if persist and exchange.durable and _outlives_broker(destination):
            self.store.put(_binding_record(self.name, binding))

    def _remove_binding(self, binding: Binding, allow_auto_delete: bool = True) -> None:
        exchange = self.exchanges.get(binding.source)
        if exchange is not None and exchange.remove_binding(binding):
            self.store.delete(_binding_record(self.name, binding))
            if allow_auto_delete and exchange.auto_delete and not exchange.bindings:
                self._remove_exchange(exchange)
        incoming = self._incoming.get((binding.destination_is_queue, binding.destination))
        if incoming is not None:
            incoming.pop(binding, None)

    # -- routing -------------------------------------------------------------------

    def route(self, exchange: Exchange, message: Message) -> list[Queue]:
        """The queues a message published to ``exchange`` goes to, each once.

        Follows exchange-to-exchange bindings and alternate exchanges, each exchange
        visited at most once, so cycles end.
        """
        if exchange.name == "":
            queue = self.queues.get(message.routing_key)
            return [queue] if queue is not None else []
        found: dict[Queue, None] = {}
        visited: set[Exchange] = {exchange}
        self._route_into(exchange, message, found, visited)
        return list(found)

    def _route_into(
        self, exchange: Exchange, message: Message, found: dict[Queue, None], visited: set[Exchange]
    ) -> None:
        destinations = exchange.router.route(message)
        for destination in destinations:
            if isinstance(destination, Queue):
                found[destination] = None
            elif destination not in visited:
                assert isinstance(destination, Exchange)
                visited.add(destination)
                self._route_into(destination, message, found, visited)
        # As RabbitMQ: the alternate exchange is for messages the exchange itself could
        # not route anywhere; reaching an exchange that routes nowhere does not count.
        if not destinations and exchange.alternate is not None:
            alternate = self.exchanges.get(exchange.alternate)
            if alternate is not None and alternate not in visited:
                visited.add(alternate)
                self._route_into(alternate, message, found, visited)

    # -- into queues ----------------------------------------------------------------

    def enqueue(self, message: Message, queues: list[Queue], expiring: bool = False) -> int:
        """Hands a routed message to its queues, storing it once first if it is persistent
        and one of them is durable; returns ROUTED/STORED/REJECTED bits.

        ``expiring``: the message has an ``expiration`` property; plain queues become
        ruled queues to honour it.
        """
        if expiring:
            queues = [promote(queue, self) for queue in queues]
        result = 0
        store_id = 0
        for queue in queues:
            if queue.store is not None and not store_id and message.properties.persistent:
                store_id = self._store(message, queues, expiring)
                result |= STORED
            stored = store_id if queue.store is not None else 0
            if queue.publish(message, False, stored, expiring) is None:
                result |= REJECTED
            result |= ROUTED
        return result

    def _store(self, message: Message, queues: list[Queue], expiring: bool) -> int:
        """Writes a persistent message once for all the durable queues it goes to, with
        its publish time when an expiry will count from it."""
        timed = expiring or any(
            queue.rules is not None and queue.rules.ttl is not None for queue in queues
        )
        return self.store.publish(
            self.name,
            [queue.name for queue in queues if queue.store is not None],
            message.exchange,
            message.routing_key,
            message.properties.raw,
            message.body,
            int(self.clock.time() * 1000) if timed else 0,
        )

    def dead_letter(
        self,
        source: Queue,
        entry: QueueEntry,
        reason: str,
        exchange_name: str,
        routing_key: str | None,
    ) -> None:
        """Republishes a message leaving ``source`` to its dead-letter exchange, with
        the x-death headers (:mod:`postoffice.core.deadletter`).  A missing exchange
        drops the message, as in RabbitMQ."""
        exchange = self.exchanges.get(exchange_name)
        if exchange is None:
            return
        message = entry.message or self.page_in(entry)
        properties = message.properties
        headers = properties.headers
        original_keys = [message.routing_key, *routing_keys_of((headers or {}).get("CC"))]
        keys = [routing_key] if routing_key is not None else original_keys
        new_headers = dead_letter_headers(
            headers,
            reason=reason,
            queue=source.name,
            exchange=message.exchange,
            routing_keys=original_keys,
            expiration=properties.expiration,
            now=self.clock.time(),
            drop_cc=routing_key is not None,
        )
        dead = Message(
            exchange_name,
            keys[0],
            self.edit_properties(properties, {"headers": new_headers, "expiration": None}),
            message.body,
        )
        found: dict[Queue, None] = dict.fromkeys(self.route(exchange, dead))
        for key in keys[1:]:
            probe = Message(exchange_name, key, dead.properties, dead.body)
            found.update(dict.fromkeys(self.route(exchange, probe)))
        targets = list(found)
        if reason != "rejected":
            targets = [queue for queue in targets if not is_cycle(new_headers, queue.name)]
        if targets:
            self.enqueue(dead, targets)

    def edit_properties(self, properties: Properties, changes: dict[str, Any]) -> Properties:
        if self._edit_properties is None:
            raise InternalError("this broker was built without a properties editor")
        return self._edit_properties(properties, changes)

    # -- paging -------------------------------------------------------------------

    def page_in(self, entry: QueueEntry) -> Message:
        """The entry's message, read back from the store if it was paged out."""
        message = entry.message
        if message is None:
            message = entry.message = self.page_in_id(entry.store_id)
        return message

    def page_in_id(self, store_id: int) -> Message:
        """The stored message ``store_id``, read back from the store."""
        if self._read_properties is None:
            raise InternalError("this broker was built without a properties reader")
        exchange, routing_key, properties, body = self.store.read(store_id)
        return Message(exchange, routing_key, self._read_properties(properties), body)

    # -- direct reply-to -----------------------------------------------------------

    def add_reply_consumer(self, consumer: Consumer) -> str:
        token = secrets.token_urlsafe(18)
        self.reply_consumers[token] = consumer
        return _REPLY_TO_PREFIX + token

    def remove_reply_consumer(self, address: str) -> None:
        self.reply_consumers.pop(address[len(_REPLY_TO_PREFIX) :], None)

    def reply_consumer(self, routing_key: str) -> Consumer | None:
        if not routing_key.startswith(_REPLY_TO_PREFIX):
            return None
        return self.reply_consumers.get(routing_key[len(_REPLY_TO_PREFIX) :])

    # -- recovery ------------------------------------------------------------------

    def restore_exchange(self, record: ExchangeRecord) -> None:
        known = record.type in EXCHANGE_TYPES or record.type in PLUGIN_EXCHANGES
        if record.name not in self.exchanges and known:
            self._new_exchange(
                record.name,
                record.type,
                True,
                record.auto_delete,
                record.internal,
                record.arguments,
            )

    def internal_queue(self, kind: str, exchange: Exchange) -> QueueRecord:
        """The store queue where a plugin exchange keeps its durable state."""
        return QueueRecord(self.name, f"{INTERNAL_QUEUE_PREFIX}{kind}.{exchange.name}", False, {})

    def restore_queue(self, record: QueueRecord) -> None:
        if record.name.startswith(INTERNAL_QUEUE_PREFIX):
            return  # its exchange reads it back
        if record.name not in self.queues:
            queue = self._new_queue(
                record.name,
                durable=True,
                exclusive_owner=None,
                auto_delete=record.auto_delete,
                arguments=record.arguments,
            )
            queue.store = self.store

    def restore_binding(self, record: BindingRecord) -> None:
        source = self.exchanges.get(record.source)
        destination: Hashable | None
        if record.destination_is_queue:
            destination = self.queues.get(record.destination)
        else:
            destination = self.exchanges.get(record.destination)
        if source is not None and isinstance(destination, Queue | Exchange):
            self._bind(
                source, destination, record.routing_key, dict(record.arguments), persist=False
            )


def _check_name(kind: str, name: str) -> None:
    if name.startswith("amq."):
        raise AccessRefused(f"{kind} name '{name}' contains reserved prefix 'amq.*'")


def _outlives_broker(destination: Queue | Exchange) -> bool:
    if isinstance(destination, Queue):
        return destination.persisted
    return destination.durable


def _check_queue_equivalent(
    queue: Queue,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    arguments: Mapping[str, Any],
    vhost: str,
) -> None:
    what = f"queue '{queue.name}' in vhost '{vhost}'"
    if exclusive != queue.exclusive:
        raise ResourceLocked(
            f"cannot obtain exclusive access to locked queue '{queue.name}' in vhost '{vhost}'. "
            "It could be originally declared on another connection or the exclusive property "
            "value does not match that of the original declaration."
        )
    for field, received, current in (
        ("durable", durable, queue.durable),
        ("auto_delete", auto_delete, queue.auto_delete),
    ):
        if received != current:
            raise PreconditionFailed(
                f"inequivalent arg '{field}' for {what}: received '{str(received).lower()}' "
                f"but current is '{str(current).lower()}'"
            )
    # As RabbitMQ: no x-queue-type and x-queue-type "classic" are the same thing.
    check_arguments_equivalent(
        what, _typed(queue.arguments), _typed(arguments), QUEUE_EQUIVALENCE_ARGUMENTS
    )


def _typed(arguments: Mapping[str, Any]) -> Mapping[str, Any]:
    if arguments.get("x-queue-type") in (None, "classic", b"classic"):
        return {**arguments, "x-queue-type": "classic"}
    return arguments


def _exchange_record(vhost: str, exchange: Exchange) -> ExchangeRecord:
    return ExchangeRecord(
        vhost,
        exchange.name,
        exchange.type,
        exchange.auto_delete,
        exchange.internal,
        exchange.arguments,
    )


def _queue_record(queue: Queue) -> QueueRecord:
    return QueueRecord(queue.vhost, queue.name, queue.auto_delete, queue.arguments)


def _binding_record(vhost: str, binding: Binding) -> BindingRecord:
    return BindingRecord(
        vhost,
        binding.source,
        binding.destination,
        binding.destination_is_queue,
        binding.routing_key,
        binding.arguments,
    )
