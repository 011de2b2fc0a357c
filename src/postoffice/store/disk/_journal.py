"""Durable definitions: an append-only journal, rewritten atomically when mostly stale.

Each put or delete is one CRC'd frame appended to ``definitions.log`` and made durable
by the store's next flush, so a declare-ok waits for one small write and the flush's
single fdatasync, whatever the number of definitions (a snapshot rewritten on every
change would cost a write of all of them, twice the fsyncs, and a rename per flush).
When the journal has grown past twice what its live records need, it is rewritten:
a temporary file with one put per live record, fsync, rename over the journal, fsync
of the directory.  A crash leaves either the old journal or the new one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..records import Definitions, Record
from ._files import AppendFile
from ._format import (
    DEFINITIONS_MAGIC,
    FRAME,
    HEADER,
    HeaderProblem,
    check_header,
    cut_tail,
    frame,
    fsync_directory,
    header,
    scan,
    write_all,
)
from ._values import CodecError, decode_record, encode_record

__all__ = ["DefinitionsJournal"]

log = logging.getLogger("postoffice.store")

_PUT = b"\x01"
_DELETE = b"\x02"
_MIN_REWRITE = 256 * 1024


class DefinitionsJournal:
    def __init__(self, directory: Path, aside: Path, *, fsync: bool) -> None:
        self.path = directory / "definitions.log"
        self._aside = aside
        self._fsync = fsync
        self.records: dict[Any, Record] = {}
        self._sizes: dict[Any, int] = {}  # key -> bytes of its put frame
        self._live_bytes = 0
        # Definitions may be missing: the journal was cut, torn or absent.  The store then
        # keeps the messages of queues it has no definition for, rather than drop them.
        self.incomplete = False
        self.file = self._load()

    # -- start-up -------------------------------------------------------------------

    def _load(self) -> AppendFile:
        self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self.incomplete = True
            return AppendFile(self.path, 0, header(DEFINITIONS_MAGIC))
        try:
            check_header(self.path, data, DEFINITIONS_MAGIC)
        except HeaderProblem as problem:
            if not problem.torn:
                raise StoreError(
                    f"{self.path} is not a postoffice definitions journal ({problem}); "
                    "move it out of the data directory"
                ) from None
            log.warning(
                "%s: %s, left by a crash at creation or damaged; starting it afresh",
                self.path,
                problem,
            )
            self.incomplete = True
            self.path.unlink()
            return AppendFile(self.path, 0, header(DEFINITIONS_MAGIC))
        offsets, stop, reason = scan(data, HEADER.size)
        for offset in offsets:
            (length,) = FRAME.unpack_from(data, offset)[:1]
            payload = data[offset + FRAME.size : offset + FRAME.size + length]
            try:
                self._replay(payload)
            except CodecError as exc:
                stop, reason = offset, f"an undecodable record ({exc})"
                break
        file = AppendFile(self.path, stop)
        if stop < len(data):
            self.incomplete = True
            cut_tail(self.path, file.open(), data, stop, reason, self._aside)
        return file

    def _replay(self, payload: bytes) -> None:
        op = payload[:1]
        record = decode_record(payload, 1)
        if op == _PUT:
            self._remember(record, FRAME.size + len(payload))
        elif op == _DELETE:
            self._forget(record)
        else:
            raise CodecError(f"unknown operation {op!r}")

    # -- changes --------------------------------------------------------------------

    def put(self, record: Record) -> None:
        payload = _PUT + encode_record(record)
        self.file.add(payload)
        self._remember(record, FRAME.size + len(payload))

    def delete(self, record: Record) -> None:
        if record.key in self.records:
            self.file.add(_DELETE + encode_record(record))
            self._forget(record)

    def _remember(self, record: Record, size: int) -> None:
        key = record.key
        self.records[key] = record
        self._live_bytes += size - self._sizes.get(key, 0)
        self._sizes[key] = size

    def _forget(self, record: Record) -> None:
        key = record.key
        self.records.pop(key, None)
        self._live_bytes -= self._sizes.pop(key, 0)

    def definitions(self) -> Definitions:
        return Definitions.of(self.records.values())

    # -- upkeep ---------------------------------------------------------------------

    def maybe_rewrite(self) -> None:
        """Rewrites the journal when it is mostly superseded records (after a flush)."""
        file = self.file
        if file.pending or file.size <= max(_MIN_REWRITE, 2 * (HEADER.size + self._live_bytes)):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = header(DEFINITIONS_MAGIC) + b"".join(
            frame(_PUT + encode_record(record)) for record in self.records.values()
        )
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                write_all(fd, data, 0)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning(
                "%s: could not rewrite the journal (%s); keeping it as it is", self.path, exc
            )
            tmp.unlink(missing_ok=True)
            return
        file.close()
        self.file = AppendFile(self.path, len(data))
        try:
            if self._fsync:
                fsync_directory(self.path.parent)
        except OSError as exc:
            # The rename happened; until the directory is synced the next flush must sync it.
            log.warning("%s: fsync of the directory failed after a rewrite: %s", self.path, exc)
            self.file.linked = False

    def close(self) -> None:
        self.file.close()
