"""The disk engine: a :class:`~postoffice.store.Store` on a data directory.

See ``store.py`` for the layout and docs/storage.md for the reasons behind it.
"""

from .store import DiskStore

__all__ = ["DiskStore"]
