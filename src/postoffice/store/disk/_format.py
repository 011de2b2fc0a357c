"""The bytes on disk: file headers and checksummed record frames.

Every file starts with a 24-byte header::

    magic (8 bytes) | format version (u32) | flags (u32, 0) | extra (u64)

``extra`` is the first message id a segment may use (a floor for ids after a
restart); 0 in the definitions journal.  After the header come frames::

    payload length (u32) | CRC-32 of the payload (u32) | payload

all little-endian.  A frame is good when its length fits in the file and its CRC
matches; the first bad frame ends the file (see :func:`scan`).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from pathlib import Path

from ..errors import StoreFormatError

__all__ = [
    "DEFINITIONS_MAGIC",
    "FORMAT_VERSION",
    "FRAME",
    "HEADER",
    "SEGMENT_MAGIC",
    "HeaderProblem",
    "check_header",
    "cut_tail",
    "frame",
    "fsync_directory",
    "header",
    "scan",
    "write_all",
]

log = logging.getLogger("postoffice.store")

FORMAT_VERSION = 2  # 2: timed publish records (._segment)
DEFINITIONS_MAGIC = b"\x89POdefs\n"
SEGMENT_MAGIC = b"\x89POsegm\n"

HEADER = struct.Struct("<8sIIQ")
FRAME = struct.Struct("<II")
_pack_frame = FRAME.pack
_unpack_frame = FRAME.unpack_from
_crc32 = zlib.crc32


def header(magic: bytes, extra: int = 0) -> bytes:
    return HEADER.pack(magic, FORMAT_VERSION, 0, extra)


class HeaderProblem(Exception):
    """A file whose header is torn (too short) or not ours (wrong magic)."""

    def __init__(self, reason: str, torn: bool) -> None:
        super().__init__(reason)
        self.torn = torn


def check_header(path: Path, data: bytes, magic: bytes) -> int:
    """The header's ``extra``; raises StoreFormatError for a newer format."""
    if len(data) < HEADER.size:
        raise HeaderProblem(f"{len(data)} bytes, shorter than a header", torn=True)
    found, version, _flags, extra = HEADER.unpack_from(data)
    if found != magic:
        raise HeaderProblem(f"magic {found!r} is not {magic!r}", torn=False)
    if version > FORMAT_VERSION:
        raise StoreFormatError(
            f"{path} is in storage format {version}, written by a newer postoffice; this "
            f"version reads formats up to {FORMAT_VERSION}. Refusing to start rather than "
            "misread it: run the newer postoffice on this data directory."
        )
    if version == 0:
        raise HeaderProblem("format version 0", torn=False)
    if extra >= 1 << 62:
        # Not a floor any store wrote (ids are int64): a damaged header.  Dropping
        # the floor only loses a guarantee about ids of deleted segments; the ids in
        # this file's records still count.
        return 0
    return int(extra)


def frame(payload: bytes) -> bytes:
    return _pack_frame(len(payload), _crc32(payload)) + payload


def scan(data: bytes, start: int) -> tuple[list[int], int, str]:
    """Offsets of the good frames from ``start``, where they stop, and why (``""`` at the end).

    A torn write leaves a short or zero-filled tail; a flipped bit fails the CRC.  Either
    way nothing after the first bad frame is trusted: without a sync marker a wrong
    length would send a reader into the middle of other records.
    """
    offsets: list[int] = []
    append = offsets.append
    size = len(data)
    pos = start
    view = memoryview(data)
    while pos < size:
        if size - pos < FRAME.size:
            return offsets, pos, "a torn frame header"
        length, crc = _unpack_frame(data, pos)
        end = pos + FRAME.size + length
        if length == 0:
            return offsets, pos, "a frame of length 0 (a zero-filled tail)"
        if end > size:
            return offsets, pos, f"a frame of length {length} past the end of the file"
        if _crc32(view[pos + FRAME.size : end]) != crc:
            return offsets, pos, "a CRC mismatch"
        append(pos)
        pos = end
    return offsets, pos, ""


def write_all(fd: int, data: bytes, offset: int) -> None:
    """Writes all of ``data`` at ``offset`` (pwrite may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:  # pragma: no cover - pwrite raises rather than returning 0
            raise OSError(errno.EIO, "pwrite wrote nothing")
        view = view[written:]
        offset += written


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cut_tail(path: Path, fd: int, data: bytes, offset: int, reason: str, aside: Path) -> None:
    """Logs a bad tail, saves it under ``aside`` for a post-mortem, and truncates it away."""
    saved = aside / f"{path.parent.name}-{path.name}.{offset}.corrupt"
    log.error(
        "%s: %s at offset %d; keeping the %d intact bytes before it, cutting %d bytes "
        "(saved to %s)",
        path,
        reason,
        offset,
        offset,
        len(data) - offset,
        saved,
    )
    try:
        aside.mkdir(exist_ok=True)
        saved.write_bytes(data[offset:])
    except OSError as exc:
        log.error("%s: could not save the cut tail to %s: %s", path, saved, exc)
    os.ftruncate(fd, offset)
    os.fsync(fd)
