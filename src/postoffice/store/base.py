"""The narrow interface between the broker model and durable storage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .records import Definitions, Record

__all__ = ["Store"]


class Store(Protocol):
    """Durable storage behind the broker.

    ``put``/``delete`` record a durable definition; ``sync(callback)`` calls
    ``callback`` once everything recorded so far is on stable storage (at once for
    the in-memory store; after a group commit for a disk store), so a declare-ok is
    sent only when the definition would survive a crash.
    """

    def recover(self) -> Definitions: ...

    def put(self, record: Record) -> None: ...

    def delete(self, record: Record) -> None: ...

    def sync(self, callback: Callable[[], None]) -> None: ...

    def close(self) -> None: ...
