"""Exchanges: a name, a type, and the bindings that route through it."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import PreconditionFailed
from .arguments import wire_type
from .routing import DirectRouter, FanoutRouter, HeadersRouter, Router, TopicRouter

if TYPE_CHECKING:
    from .message import Message
    from .queue import Queue

__all__ = ["EXCHANGE_TYPES", "Binding", "Exchange", "ExchangeBehaviour"]

EXCHANGE_TYPES: dict[str, type[Router]] = {
    "direct": DirectRouter,
    "fanout": FanoutRouter,
    "topic": TopicRouter,
    "headers": HeadersRouter,
}


class ExchangeBehaviour(Protocol):
    """What an exchange type from a RabbitMQ plugin adds to publishing (delayed
    messages, de-duplication); plain exchanges have none and pay nothing for it."""

    def publish(self, message: Message, queues: list[Queue], expiring: bool) -> int | None:
        """A message published to the exchange, with the queues it routes to now.

        Returns None to let it be enqueued as usual, or the ROUTED/STORED/REJECTED
        bits of :meth:`VHost.enqueue` when the behaviour took it (held it for later,
        or dropped it as a duplicate).
        """
        ...

    def deleted(self) -> None:
        """The exchange was deleted: let go of what it holds."""
        ...


@dataclass(frozen=True, slots=True)
class Binding:
    """A route from ``source`` to a queue or exchange named ``destination``."""

    source: str
    destination: str
    destination_is_queue: bool
    routing_key: str
    arguments: tuple[tuple[str, Any], ...]

    @property
    def arguments_dict(self) -> dict[str, Any]:
        return dict(self.arguments)


def freeze_arguments(arguments: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """A hashable form of a binding's arguments (nested tables and arrays included)."""
    if not arguments:
        return ()
    return tuple(sorted((key, _freeze(value)) for key, value in arguments.items()))


def _freeze(value: Any) -> Any:
    if isinstance(value, bool):  # True == 1 in Python, never in AMQP
        return ("bool", value)
    if isinstance(value, dict):
        return ("table", freeze_arguments(value))
    if isinstance(value, list):
        return ("array", tuple(_freeze(item) for item in value))
    return value


class Exchange:
    __slots__ = (
        "alternate",
        "arguments",
        "auto_delete",
        "behaviour",
        "bindings",
        "durable",
        "internal",
        "name",
        "router",
        "type",
    )

    def __init__(
        self,
        name: str,
        type: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
        routing_type: str | None = None,
    ) -> None:
        """``routing_type``: the plain type whose router a plugin exchange type uses."""
        self.name = name
        self.type = type
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments: dict[str, Any] = dict(arguments or {})
        self.router: Router = EXCHANGE_TYPES[routing_type or type]()
        alternate = self.arguments.get("alternate-exchange")
        self.alternate: str | None = _as_text(alternate) if alternate else None
        # Bindings with this exchange as source, in the order they were made, with
        # their destination and their arguments as the client sent them.
        self.bindings: dict[Binding, tuple[Hashable, dict[str, Any]]] = {}
        # Set by the vhost for the plugin exchange types.
        self.behaviour: ExchangeBehaviour | None = None

    def add_binding(
        self, binding: Binding, destination: Hashable, arguments: Mapping[str, Any]
    ) -> bool:
        """Adds a binding; False if the same one was there already."""
        if binding in self.bindings:
            return False
        self.bindings[binding] = (destination, dict(arguments))
        self.router.bind(destination, binding.routing_key, arguments)
        return True

    def remove_binding(self, binding: Binding) -> bool:
        bound = self.bindings.pop(binding, None)
        if bound is None:
            return False
        destination, arguments = bound
        self.router.unbind(destination, binding.routing_key, arguments)
        return True

    def check_equivalent(
        self,
        type: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: Mapping[str, Any] | None,
        vhost: str,
    ) -> None:
        """Raises 406 when a redeclare differs from this exchange, as RabbitMQ does."""
        for field, received, current in (
            ("type", type, self.type),
            ("durable", durable, self.durable),
            ("auto_delete", auto_delete, self.auto_delete),
            ("internal", internal, self.internal),
        ):
            if received != current:
                raise PreconditionFailed(
                    f"inequivalent arg '{field}' for exchange '{self.name}' in vhost '{vhost}': "
                    f"received '{_show(received)}' but current is '{_show(current)}'"
                )
        check_arguments_equivalent(
            f"exchange '{self.name}' in vhost '{vhost}'",
            self.arguments,
            arguments or {},
            ("alternate-exchange",),
        )

    def __repr__(self) -> str:
        return f"Exchange({self.name!r}, {self.type!r})"


def check_arguments_equivalent(
    what: str, current: Mapping[str, Any], received: Mapping[str, Any], checked: tuple[str, ...]
) -> None:
    """Raises 406 when one of the ``checked`` arguments differs (RabbitMQ compares only those)."""
    for key in checked:
        have, want = current.get(key), received.get(key)
        if freeze_arguments({"v": have}) != freeze_arguments({"v": want}):
            if have is None:
                shown = f"received the value '{_show(want)}' of type '{wire_type(want)}' but current is none"
            elif want is None:
                shown = f"received none but current is the value '{_show(have)}' of type '{wire_type(have)}'"
            else:
                shown = f"received '{_show(want)}' but current is '{_show(have)}'"
            raise PreconditionFailed(f"inequivalent arg '{key}' for {what}: {shown}")


def _as_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _as_text(value)
