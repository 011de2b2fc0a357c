"""What a store raises when durable storage itself fails.

All are :class:`~postoffice.errors.InternalError` (541, closes the connection) should
one ever reach a client; most are meant for the server and the operator instead:

* at start-up, :class:`StoreLocked` and :class:`StoreFormatError` mean "do not start";
* from ``flush()``, :class:`StoreWriteError` means "nothing of this flush is durable,
  no callback ran; call ``flush()`` again later" (a full disk), and
  :class:`StoreFailed` means "this store can no longer promise durability": every
  later call raises it too, and only a restart (which recovers from the files) helps.
"""

from __future__ import annotations

from ..errors import InternalError

__all__ = ["StoreError", "StoreFailed", "StoreFormatError", "StoreLocked", "StoreWriteError"]


class StoreError(InternalError):
    """Durable storage failed; the text says what, where, and what to do."""


class StoreLocked(StoreError):
    """Another process (or another store in this one) holds the data directory."""


class StoreFormatError(StoreError):
    """A file is in a format this version cannot read (written by a newer version)."""


class StoreWriteError(StoreError):
    """A flush could not write; the pending work is kept and the next flush retries it."""

    def __init__(self, text: str, errno: int | None = None) -> None:
        super().__init__(text)
        self.errno = errno


class StoreFailed(StoreError):
    """Durability is lost (e.g. fsync failed): the store refuses all further work."""
