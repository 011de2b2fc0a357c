"""Fakes for loop-free tests of the broker model: properties, a recording sink, a broker."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from postoffice.core import Broker, Channel, Connection, Message
from postoffice.core.clock import Clock
from postoffice.store import MemoryStore


@dataclass(frozen=True)
class FakeProperties:
    """What the core reads from basic properties, plus the ``replace`` the codec offers."""

    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    reply_to: str | None = None
    user_id: str | None = None
    priority: int | None = None
    expiration: str | None = None
    raw: bytes = b""

    @property
    def persistent(self) -> bool:
        return self.delivery_mode == 2

    @property
    def inspect_on_publish(self) -> bool:
        headers = self.headers or {}
        return bool(
            self.reply_to
            or self.user_id
            or self.expiration is not None
            or "CC" in headers
            or "BCC" in headers
        )

    def replace(self, **changes: Any) -> FakeProperties:
        return dataclasses.replace(self, **changes)


NO_PROPERTIES = FakeProperties()


@dataclass(frozen=True)
class Delivery:
    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    message: Message

    @property
    def body(self) -> bytes:
        return self.message.body


@dataclass
class RecordingSink:
    """A DeliverySink that writes down everything the channel sends, in order."""

    events: list[tuple[Any, ...]] = field(default_factory=list)

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        self.events.append(("deliver", Delivery(consumer_tag, delivery_tag, redelivered, message)))

    def returned(self, reply_code: int, reply_text: str, message: Message) -> None:
        self.events.append(("returned", reply_code, reply_text, message))

    def confirm(self, seq: int, ack: bool) -> None:
        self.events.append(("confirm", seq, ack))

    def consumer_cancelled(self, consumer_tag: str) -> None:
        self.events.append(("cancelled", consumer_tag))

    def fail(self, error: Any) -> None:
        self.events.append(("failed", error.reply_code, error.text))

    # -- views -----------------------------------------------------------------

    @property
    def deliveries(self) -> list[Delivery]:
        return [event[1] for event in self.events if event[0] == "deliver"]

    def bodies(self, consumer_tag: str | None = None) -> list[bytes]:
        return [
            d.body
            for d in self.deliveries
            if consumer_tag is None or d.consumer_tag == consumer_tag
        ]

    def kinds(self) -> list[str]:
        return [event[0] for event in self.events]

    def clear(self) -> None:
        self.events.clear()


def edit_properties(properties: Any, changes: dict[str, Any]) -> Any:
    return properties.replace(**changes)


def make_broker(
    store: MemoryStore | None = None,
    *,
    clock: Clock | None = None,
    consumer_timeout: int = 1_800_000,
) -> Broker:
    return Broker(
        store=store if store is not None else MemoryStore(),
        clock=clock,
        edit_properties=edit_properties,
        consumer_timeout=consumer_timeout,
    )


def open_channel(
    broker: Broker, number: int = 1, connection: Connection | None = None
) -> tuple[Channel, RecordingSink]:
    if connection is None:
        connection = broker.connect("/", "guest")
    sink = RecordingSink()
    return connection.open_channel(number, sink), sink


def publish(
    channel: Channel,
    exchange: str,
    routing_key: str,
    body: bytes = b"",
    *,
    mandatory: bool = False,
    properties: FakeProperties = NO_PROPERTIES,
) -> None:
    channel.publish(exchange, routing_key, mandatory, False, properties, body)


def message(
    routing_key: str = "", headers: dict[str, Any] | None = None, exchange: str = "x"
) -> Message:
    return Message(exchange, routing_key, FakeProperties(headers=headers), b"")


def consume(channel: Channel, queue: str, tag: str, **options: Any) -> str:
    """basic.consume followed by the consume-ok that starts deliveries, as the server does."""
    tag = channel.consume(queue, tag, **options)
    channel.start(tag)
    return tag
