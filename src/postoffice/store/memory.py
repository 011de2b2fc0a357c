"""The in-memory store: durable definitions kept for the life of the process.

A broker restarted in the same process on the same ``MemoryStore`` (embedded use,
tests) gets its durable exchanges, queues and bindings back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .records import BindingRecord, Definitions, ExchangeRecord, QueueRecord, Record

__all__ = ["MemoryStore"]


class MemoryStore:
    def __init__(self) -> None:
        self._records: dict[Any, Record] = {}

    def recover(self) -> Definitions:
        definitions = Definitions()
        for record in self._records.values():
            if isinstance(record, ExchangeRecord):
                definitions.exchanges.append(record)
            elif isinstance(record, QueueRecord):
                definitions.queues.append(record)
            elif isinstance(record, BindingRecord):
                definitions.bindings.append(record)
        return definitions

    def put(self, record: Record) -> None:
        self._records[record.key] = record

    def delete(self, record: Record) -> None:
        self._records.pop(record.key, None)

    def sync(self, callback: Callable[[], None]) -> None:
        callback()

    def close(self) -> None:
        pass
