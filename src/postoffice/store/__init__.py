"""Durable storage behind a narrow interface (see DESIGN.md, "Storage engine")."""

from .base import RecoveredMessage, Store
from .disk import DiskStore
from .errors import StoreError, StoreFailed, StoreFormatError, StoreLocked, StoreWriteError
from .memory import MemoryStore
from .records import BindingRecord, Definitions, ExchangeRecord, QueueRecord, Record

__all__ = [
    "BindingRecord",
    "Definitions",
    "DiskStore",
    "ExchangeRecord",
    "MemoryStore",
    "QueueRecord",
    "Record",
    "RecoveredMessage",
    "Store",
    "StoreError",
    "StoreFailed",
    "StoreFormatError",
    "StoreLocked",
    "StoreWriteError",
]
