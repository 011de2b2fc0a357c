"""Durable storage behind a narrow interface (see DESIGN.md, "Storage engine")."""

from .base import RecoveredMessage, Store
from .memory import MemoryStore
from .records import BindingRecord, Definitions, ExchangeRecord, QueueRecord, Record

__all__ = [
    "BindingRecord",
    "Definitions",
    "ExchangeRecord",
    "MemoryStore",
    "QueueRecord",
    "Record",
    "RecoveredMessage",
    "Store",
]
