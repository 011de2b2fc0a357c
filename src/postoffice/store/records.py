"""What the store keeps: plain, immutable records of durable definitions.

The store knows nothing of the broker model; the core turns its objects into these
records and back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BindingRecord", "Definitions", "ExchangeRecord", "QueueRecord"]


@dataclass(frozen=True, slots=True)
class ExchangeRecord:
    vhost: str
    name: str
    type: str
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return ("exchange", self.vhost, self.name)


@dataclass(frozen=True, slots=True)
class QueueRecord:
    vhost: str
    name: str
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return ("queue", self.vhost, self.name)


@dataclass(frozen=True, slots=True)
class BindingRecord:
    vhost: str
    source: str
    destination: str
    destination_is_queue: bool
    routing_key: str
    arguments: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> tuple[Any, ...]:
        return (
            "binding",
            self.vhost,
            self.source,
            self.destination,
            self.destination_is_queue,
            self.routing_key,
            self.arguments,
        )


Record = ExchangeRecord | QueueRecord | BindingRecord


@dataclass(slots=True)
class Definitions:
    """Everything durable, in an order that can be replayed: exchanges, queues, bindings."""

    exchanges: list[ExchangeRecord] = field(default_factory=list)
    queues: list[QueueRecord] = field(default_factory=list)
    bindings: list[BindingRecord] = field(default_factory=list)

    @classmethod
    def of(cls, records: Iterable[Record]) -> Definitions:
        """Records sorted by kind, each kind in the order given."""
        definitions = cls()
        for record in records:
            if isinstance(record, ExchangeRecord):
                definitions.exchanges.append(record)
            elif isinstance(record, QueueRecord):
                definitions.queues.append(record)
            else:
                definitions.bindings.append(record)
        return definitions
