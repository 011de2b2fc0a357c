"""Messages as the core sees them.

The core never parses the wire format.  A message's properties come as an object
that decodes itself when a rule first needs a field (the server passes the codec's
lazy ``BasicProperties``); the core only reads attributes of it.  Bodies are bytes,
passed through untouched.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Message", "Properties", "QueueEntry", "routing_keys_of"]


def routing_keys_of(value: Any) -> list[str]:
    """Routing keys from a CC or BCC header: an array of strings (or one string)."""
    if isinstance(value, str | bytes):
        value = [value]
    if not isinstance(value, list):
        return []
    return [
        item.decode("utf-8", "surrogateescape") if isinstance(item, bytes) else item
        for item in value
        if isinstance(item, str | bytes)
    ]


class Properties(Protocol):
    """What the core reads from a message's basic properties."""

    @property
    def headers(self) -> dict[str, Any] | None: ...

    @property
    def delivery_mode(self) -> int | None: ...

    @property
    def reply_to(self) -> str | None: ...

    @property
    def user_id(self) -> str | None: ...

    @property
    def priority(self) -> int | None: ...

    @property
    def expiration(self) -> str | None: ...

    @property
    def persistent(self) -> bool:
        """delivery_mode == 2; cheap, asked of every message bound for a durable queue."""
        ...

    @property
    def inspect_on_publish(self) -> bool:
        """True when the broker must look closer at publish time: a reply_to, user_id or
        expiration is set, or the headers may hold CC/BCC.  False is a promise; True may be wrong."""
        ...

    @property
    def raw(self) -> bytes: ...


class Message:
    """One published message, shared by every queue it was routed to."""

    __slots__ = ("body", "exchange", "properties", "routing_key")

    def __init__(
        self, exchange: str, routing_key: str, properties: Properties, body: bytes
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = properties
        self.body = body

    @property
    def persistent(self) -> bool:
        return self.properties.persistent

    def __repr__(self) -> str:
        return f"Message({self.exchange!r}, {self.routing_key!r}, {len(self.body)} bytes)"


class QueueEntry:
    """A message's place in one queue: its position (``seq``), whether it was delivered
    before, and its id in the store (0 when the queue does not keep it on disk).

    ``message`` is None while the message is paged out: deep in a long queue, or
    recovered at start-up, only this small entry is in memory and the message is read
    back from the store when it is about to be delivered.
    """

    __slots__ = ("message", "redelivered", "seq", "store_id")

    def __init__(
        self, seq: int, message: Message | None, redelivered: bool = False, store_id: int = 0
    ) -> None:
        self.seq = seq
        self.message = message
        self.redelivered = redelivered
        self.store_id = store_id
