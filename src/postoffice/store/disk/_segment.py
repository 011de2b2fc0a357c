"""Segment files and their record types.

A segment ``NNNNNNNNNN.seg`` holds publish records (each message once, naming all its
queues) and, appended after them, the delivered/settle/drop records of *its own*
messages: while the segment is active they interleave with new publishes, once it is
sealed (the next one takes new publishes) only they are appended.  So everything
about a message lives in the file that holds its body: replaying one segment rebuilds
its share of every queue whatever happened to the others, and a segment whose
messages are all settled is deleted without looking at any other file.

Payloads (after the frame of :mod:`._format`), little-endian::

    publish    1 | id u64 | nq u16 | len(exchange) u8 | len(routing key) u8 |
               len(properties) u32 | nq x (queue tag, deliveries u32) |
               exchange | routing key | properties | body
    delivered  2 | queue tag | ids (u64 each)
    settle     3 | queue tag | ids (u64 each)
    drop       4 | queue tag | up to id u64        (the queue was deleted)
    timed      5 | id u64 | nq u16 | len(exchange) u8 | len(routing key) u8 |
               len(properties) u32 | time_ms i64 | nq x (queue tag, deliveries u32) |
               exchange | routing key | properties | body           (format 2 on)

A queue tag is ``len u8 | vhost | len u8 | name``.  A timed publish is a publish whose
message has an ``time_ms`` (epoch milliseconds, never 0): a type of its own rather
than a field of every publish, so a message without one costs no byte more.  A
publish record (of either type) for an id already held is compaction's rewrite of a
live message: it replaces the earlier one (the queues still holding it and their
delivery counts, as of the rewrite).
"""

from __future__ import annotations

import struct
import sys
from array import array
from pathlib import Path

from ._files import AppendFile
from ._format import SEGMENT_MAGIC, header
from ._index import QueueIndex

__all__ = [
    "DELIVERED",
    "DROP",
    "I64",
    "PUBLISH",
    "PUBLISH_HEAD",
    "PUBLISH_TIMED",
    "SETTLE",
    "U32",
    "U64",
    "Segment",
    "pack_ids",
    "unpack_ids",
]

PUBLISH = 1
DELIVERED = 2
SETTLE = 3
DROP = 4
PUBLISH_TIMED = 5

PUBLISH_HEAD = struct.Struct("<BQHBBI")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
I64 = struct.Struct("<q")

_BIG_ENDIAN = sys.byteorder == "big"


def pack_ids(ids: list[int]) -> bytes:
    packed = array("q", ids)
    if _BIG_ENDIAN:  # pragma: no cover - the files are little-endian everywhere
        packed.byteswap()
    return packed.tobytes()


def unpack_ids(data: bytes | memoryview) -> array[int]:
    ids = array("q")
    ids.frombytes(data)
    if _BIG_ENDIAN:  # pragma: no cover
        ids.byteswap()
    return ids


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:010d}.seg"


class Segment(AppendFile):
    """One segment file and what the store knows of it."""

    __slots__ = (
        "base",
        "delivers",
        "doomed",
        "drops",
        "live",
        "number",
        "pairs",
        "sealed",
        "settles",
    )

    def __init__(
        self, directory: Path, number: int, size: int, first_id: int | None = None
    ) -> None:
        """An existing segment of ``size`` bytes, or (with ``first_id``) a new one."""
        new_header = None if first_id is None else header(SEGMENT_MAGIC, first_id)
        super().__init__(segment_path(directory, number), size, new_header)
        self.number = number
        self.base = number << 32  # a record's position is base | offset
        self.live = 0  # (queue, message) pairs held whose publish record is here
        self.pairs = 0  # (queue, message) pairs ever published here
        self.sealed = first_id is None
        self.doomed = False  # compacted: deleted once the rewritten records are durable
        self.settles: dict[QueueIndex, list[int]] = {}
        self.delivers: dict[QueueIndex, list[int]] = {}
        self.drops: list[bytes] = []

    def __repr__(self) -> str:
        return f"<Segment {self.number} live={self.live}/{self.pairs} size={self.end}>"

    def stage_acks(self) -> None:
        """Appends the pending delivered/settle/drop records, after this turn's publishes."""
        if self.delivers:
            for queue, ids in self.delivers.items():
                self.add(bytes((DELIVERED,)) + queue.tag + pack_ids(ids))
            self.delivers = {}
        if self.settles:
            for queue, ids in self.settles.items():
                self.add(bytes((SETTLE,)) + queue.tag + pack_ids(ids))
            self.settles = {}
        if self.drops:
            for payload in self.drops:
                self.add(payload)
            self.drops = []
