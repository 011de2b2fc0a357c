"""Files written only at their end, through a buffer that one flush writes in one go;
and the data directory's lock."""

from __future__ import annotations

import fcntl
import os
import zlib
from pathlib import Path

from ..errors import StoreLocked
from ._format import FRAME, write_all

__all__ = ["AppendFile", "lock_directory"]

_pack_frame = FRAME.pack
_crc32 = zlib.crc32


class AppendFile:
    """``size`` bytes are on disk (and synced, as far as the store knows); ``end - size``
    more wait in ``buf`` for the next flush, which writes them with one pwrite at
    ``size``.  A failed flush leaves ``size`` alone, so the retry rewrites the same bytes
    at the same place.
    """

    __slots__ = ("buf", "end", "exists", "fd", "linked", "path", "size")

    def __init__(self, path: Path, size: int, header: bytes | None = None) -> None:
        self.path = path
        self.fd = -1
        self.size = size
        self.buf: list[bytes] = []
        self.end = size
        self.exists = header is None  # else the first flush creates it
        self.linked = self.exists  # its directory entry is durable
        if header is not None:
            self.buf.append(header)
            self.end += len(header)

    @property
    def pending(self) -> bool:
        return self.end != self.size

    def add(self, payload: bytes) -> int:
        """Frames ``payload`` at the end; its offset."""
        offset = self.end
        self.buf += (_pack_frame(len(payload), _crc32(payload)), payload)
        self.end = offset + 8 + len(payload)
        return offset

    def pending_bytes(self) -> bytes:
        """Everything in ``buf`` as one bytes object (kept that way for a retry)."""
        buf = self.buf
        if len(buf) != 1:
            buf[:] = [b"".join(buf)]
        return buf[0] if buf else b""

    def open(self) -> int:
        if self.fd < 0:
            flags = os.O_RDWR | os.O_CLOEXEC
            if not self.exists:
                flags |= os.O_CREAT | os.O_EXCL
            self.fd = os.open(self.path, flags, 0o644)
            self.exists = True
        return self.fd

    def write(self) -> bool:
        """Writes what is pending; True when the file's directory needs a sync as well."""
        write_all(self.open(), self.pending_bytes(), self.size)
        return not self.linked

    def commit(self) -> None:
        """The pending bytes are durable."""
        self.size = self.end
        self.buf.clear()
        self.linked = True

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def lock_directory(directory: Path) -> int:
    """Takes the directory's lock (an flock, released when the fd closes); the fd."""
    path = directory / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreLocked(
            f"the data directory {directory} is in use by another postoffice ({holder}); "
            "stop that broker first, or give this one its own data directory"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    try:  # who holds it, for the message above; nothing depends on it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    return fd
