"""The in-memory store: durable definitions and persistent messages kept for the
life of the process.

A broker restarted in the same process on the same ``MemoryStore`` (embedded use,
tests) gets its durable exchanges, queues, bindings and persistent messages back.
Everything is "on stable storage" at once, so ``sync`` calls back immediately.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .base import RecoveredMessage
from .records import Definitions, QueueRecord, Record

__all__ = ["MemoryStore"]


def _nothing() -> None:
    pass


class MemoryStore:
    def __init__(self) -> None:
        self._records: dict[Any, Record] = {}
        # (vhost, queue) -> message id ->
        #     [id, exchange, rk, properties, body, deliveries, time_ms]
        self._queues: dict[tuple[str, str], dict[int, list[Any]]] = {}
        self._next_id = 1
        self.wakeup: Callable[[], None] = _nothing

    def recover(self) -> Definitions:
        return Definitions.of(self._records.values())

    def put(self, record: Record) -> None:
        self._records[record.key] = record

    def delete(self, record: Record) -> None:
        self._records.pop(record.key, None)
        if isinstance(record, QueueRecord):
            self._queues.pop((record.vhost, record.name), None)

    def publish(
        self,
        vhost: str,
        queues: Sequence[str],
        exchange: str,
        routing_key: str,
        properties: bytes,
        body: bytes,
        time_ms: int = 0,
    ) -> int:
        message_id = self._next_id
        self._next_id += 1
        for queue in queues:
            stored = self._queues.setdefault((vhost, queue), {})
            stored[message_id] = [message_id, exchange, routing_key, properties, body, 0, time_ms]
        return message_id

    def delivered(self, vhost: str, queue: str, message_ids: Sequence[int]) -> None:
        stored = self._queues.get((vhost, queue), {})
        for message_id in message_ids:
            entry = stored.get(message_id)
            if entry is not None:
                entry[5] += 1

    def settle(self, vhost: str, queue: str, message_ids: Sequence[int]) -> None:
        stored = self._queues.get((vhost, queue))
        if stored is not None:
            for message_id in message_ids:
                stored.pop(message_id, None)

    def messages(self, vhost: str, queue: str) -> Iterator[RecoveredMessage]:
        for message_id, exchange, routing_key, properties, body, count, time_ms in list(
            self._queues.get((vhost, queue), {}).values()
        ):
            yield RecoveredMessage(
                message_id, exchange, routing_key, properties, body, count > 0, count, time_ms
            )

    def index(self, vhost: str, queue: str) -> Iterator[tuple[int, int, int]]:
        for message_id, *_, count, time_ms in list(self._queues.get((vhost, queue), {}).values()):
            yield message_id, count, time_ms

    def read(self, message_id: int) -> tuple[str, str, bytes, bytes]:
        for stored in self._queues.values():
            entry = stored.get(message_id)
            if entry is not None:
                return entry[1], entry[2], entry[3], entry[4]
        raise KeyError(message_id)

    def sync(self, callback: Callable[[], None]) -> None:
        callback()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
