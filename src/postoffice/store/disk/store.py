"""The disk store: definitions in a journal, messages in a shared segment log.

Layout of a data directory (docs/storage.md says why)::

    lock                      flock'ed while a store has the directory
    definitions.log           journal of durable definitions (._journal)
    messages/NNNNNNNNNN.seg   segments: publish records and their messages' acks (._segment)
    corrupt/                  tails cut from damaged files, kept for a post-mortem

Every operation only buffers; :meth:`DiskStore.flush` writes each touched file once,
fdatasyncs them, and then runs the callbacks registered with :meth:`DiskStore.sync`
before it, in order (group commit).  The store is used from one thread (the event
loop's); nothing here locks.
"""

from __future__ import annotations

import errno
import logging
import os
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..base import RecoveredMessage
from ..errors import StoreError, StoreFailed, StoreWriteError
from ..records import Definitions, QueueRecord, Record
from ._files import AppendFile, lock_directory
from ._format import FRAME, HEADER, fsync_directory, scan
from ._index import QueueIndex
from ._journal import DefinitionsJournal
from ._recovery import Recovery
from ._segment import DROP, I64, PUBLISH, PUBLISH_HEAD, PUBLISH_TIMED, U32, U64, Segment

__all__ = ["DiskStore"]

log = logging.getLogger("postoffice.store")

SEGMENT_SIZE = 16 * 1024 * 1024
_READ_AHEAD = 128 * 1024
_SMALL = 512
_OPEN_SEGMENTS = 64  # sealed segments whose fds stay open for reading
_COMPACT_EVERY = 16  # flushes between looks for segments worth compacting
_RETRYABLE = frozenset({errno.ENOSPC, errno.EDQUOT})
_OFFSET = 0xFFFFFFFF

_pack_head = PUBLISH_HEAD.pack
_unpack_head = PUBLISH_HEAD.unpack_from
_pack_i64 = I64.pack
_pack_frame = FRAME.pack
_unpack_frame = FRAME.unpack_from
_crc32 = zlib.crc32
_fdatasync = getattr(os, "fdatasync", os.fsync)


def _nothing() -> None:
    pass


class DiskStore:
    """A :class:`~postoffice.store.Store` on a data directory (see the module docstring).

    ``fsync=False`` skips every fsync: fast and unsafe, for tests and benchmarks.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        segment_size: int = SEGMENT_SIZE,
    ) -> None:
        self.wakeup: Callable[[], None] = _nothing
        self.path = Path(path)
        self._fsync = fsync
        self._segment_size = segment_size
        self._refusal: StoreError | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._dirty = False  # something for flush to do
        self._woken = False  # wakeup() called since the last flush
        self._touched: dict[int, Segment] = {}  # segments with acks or data to flush
        # Compacted segments, with the number of flushes done when they were: each is
        # deleted once a later flush has made its rewritten messages durable.
        self._doomed: list[tuple[int, Segment]] = []
        self._open: OrderedDict[int, Segment] = OrderedDict()
        self._chunk: tuple[Segment | None, int, bytes] = (None, 0, b"")
        self._last_read: QueueIndex | None = None
        self._flushes = 0
        self._rolled = False
        self._messages_dir = self.path / "messages"
        self._aside = self.path / "corrupt"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._messages_dir.mkdir(exist_ok=True)
            self._lock_fd = lock_directory(self.path)
        except OSError as exc:
            raise StoreError(f"cannot open the data directory {self.path}: {exc}") from exc
        try:
            self._open_files()
        except BaseException:
            self._release()
            raise

    def __repr__(self) -> str:
        return f"<DiskStore {str(self.path)!r}>"

    # -- start-up -------------------------------------------------------------------

    def _open_files(self) -> None:
        recovery = Recovery(self._messages_dir, self._aside)
        try:
            recovery.check_formats()
            self._journal = DefinitionsJournal(self.path, self._aside, fsync=self._fsync)
            recovery.run()
        except OSError as exc:
            raise StoreError(f"cannot read the data directory {self.path}: {exc}") from exc
        self._queues = recovery.queues
        self._by_tag = recovery.by_tag
        self._segments = recovery.segments
        self._next_id = recovery.max_id + 1
        self._drop_orphans()
        number = recovery.highest + 1
        self._active = Segment(self._messages_dir, number, 0, self._next_id)
        self._segments[number] = self._active
        self._dirty = True
        # Creates the active segment, whose header keeps ids increasing even if every
        # older segment goes next; and a full disk shows now rather than at a publish.
        self.flush()
        for segment in list(self._segments.values()):
            if segment.sealed and not segment.live:
                self._delete_segment(segment)
        messages = sum(queue.live for queue in self._queues.values())
        log.info(
            "recovered %d durable definitions and %d queued messages in %d queues from %s",
            len(self._journal.records),
            messages,
            len(self._queues),
            self.path,
        )

    def _drop_orphans(self) -> None:
        """Drops the messages of queues without a definition: deleted queues whose drop
        records were not yet durable at a crash.  Unless the journal was damaged or missing:
        then the definition may be what was lost, and the messages are kept for the queue
        to be declared again."""
        durable = {(q.vhost, q.name) for q in self._journal.definitions().queues}
        for vhost, name in [key for key in self._queues if key not in durable]:
            count = self._queues[(vhost, name)].live
            if self._journal.incomplete:
                log.warning(
                    "keeping %d messages of queue %r in vhost %r although it has no "
                    "definition (the definitions journal was damaged or missing); declare "
                    "the queue again to get them back at the next start, or delete it",
                    count,
                    name,
                    vhost,
                )
            else:
                log.info(
                    "dropping %d messages of queue %r in vhost %r: it has no definition",
                    count,
                    name,
                    vhost,
                )
                self._drop_queue(vhost, name)

    # -- definitions ----------------------------------------------------------------

    def recover(self) -> Definitions:
        return self._journal.definitions()

    def put(self, record: Record) -> None:
        self._check()
        self._journal.put(record)
        self._wake()

    def delete(self, record: Record) -> None:
        self._check()
        self._journal.delete(record)
        if isinstance(record, QueueRecord):
            self._drop_queue(record.vhost, record.name)
        self._wake()

    # -- messages -------------------------------------------------------------------

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
        # The hot path: one message to one queue, a few hundred ns of Python each line.
        if len(queues) != 1 or self._refusal is not None or time_ms:
            return self._publish_many(
                vhost, queues, exchange, routing_key, properties, body, time_ms
            )
        message_id = self._next_id
        self._next_id = message_id + 1
        queue = self._queues.get((vhost, queues[0])) or self._new_queue(vhost, queues[0])
        raw_exchange = exchange.encode()
        raw_key = routing_key.encode()
        head = _pack_head(PUBLISH, message_id, 1, len(raw_exchange), len(raw_key), len(properties))
        segment = self._active
        offset = segment.end
        if len(body) <= _SMALL:  # one copy of a small body costs less than a second CRC call
            payload = b"".join((head, queue.pub_part, raw_exchange, raw_key, properties, body))
            segment.buf += (_pack_frame(len(payload), _crc32(payload)), payload)
            segment.end = offset + 8 + len(payload)
        else:
            meta = b"".join((head, queue.pub_part, raw_exchange, raw_key, properties))
            size = len(meta) + len(body)
            segment.buf += (_pack_frame(size, _crc32(body, _crc32(meta))), meta, body)
            segment.end = offset + 8 + size
        queue.ids.append(message_id)
        queue.pos.append(segment.base | offset)
        queue.live += 1
        segment.live += 1
        segment.pairs += 1
        if segment.end >= self._segment_size:
            self._roll()
        if not self._woken:
            self._wake()
        return message_id

    def _publish_many(
        self,
        vhost: str,
        queues: Sequence[str],
        exchange: str,
        routing_key: str,
        properties: bytes,
        body: bytes,
        time_ms: int,
    ) -> int:
        """Any publish but the hot path's: to several queues (or none), or with ``time_ms``."""
        self._check()
        message_id = self._next_id
        self._next_id = message_id + 1
        if not queues:
            return message_id
        held = [
            self._queues.get((vhost, name)) or self._new_queue(vhost, name)
            for name in dict.fromkeys(queues)
        ]
        raw_exchange = exchange.encode()
        raw_key = routing_key.encode()
        kind = PUBLISH_TIMED if time_ms else PUBLISH
        meta = b"".join(
            (
                _pack_head(
                    kind, message_id, len(held), len(raw_exchange), len(raw_key), len(properties)
                ),
                _pack_i64(time_ms) if time_ms else b"",
                *(queue.pub_part for queue in held),
                raw_exchange,
                raw_key,
                properties,
            )
        )
        segment = self._active
        offset = segment.end
        size = len(meta) + len(body)
        segment.buf += (_pack_frame(size, _crc32(body, _crc32(meta))), meta, body)
        segment.end = offset + 8 + size
        position = segment.base | offset
        for queue in held:
            queue.append(message_id, position, time_ms)
        segment.live += len(held)
        segment.pairs += len(held)
        if segment.end >= self._segment_size:
            self._roll()
        self._wake()
        return message_id

    def delivered(self, vhost: str, queue: str, message_ids: Sequence[int]) -> None:
        index = self._queues.get((vhost, queue))
        if index is None:
            return
        segments = self._segments
        for message_id in message_ids:
            position = index.position(message_id)
            if not position:
                continue
            counts = index.counts
            counts[message_id] = counts.get(message_id, 0) + 1
            segment = segments[position >> 32]
            pending = segment.delivers.get(index)
            if pending is None:
                segment.delivers[index] = [message_id]
                self._touched[segment.number] = segment
            else:
                pending.append(message_id)
        if not self._woken:
            self._wake()

    def settle(self, vhost: str, queue: str, message_ids: Sequence[int]) -> None:
        index = self._queues.get((vhost, queue))
        if index is None:
            return
        segments = self._segments
        remove = index.remove
        number = -1
        segment = self._active
        pending: list[int] = []
        for message_id in message_ids:
            position = remove(message_id)
            if not position:
                continue
            if position >> 32 != number:  # acks mostly come in order: same segment as the last
                number = position >> 32
                segment = segments[number]
                found = segment.settles.get(index)
                if found is None:
                    found = segment.settles[index] = []
                    self._touched[number] = segment
                pending = found
            segment.live -= 1
            pending.append(message_id)
        if not self._woken:
            self._wake()

    def messages(self, vhost: str, queue: str) -> Iterator[RecoveredMessage]:
        """The queue's messages as they are when the iteration starts, bodies read lazily."""
        index = self._queues.get((vhost, queue))
        if index is None:
            return
        counts = index.counts
        segments = self._segments
        for message_id, position, time_ms in index.entries():
            if (position >> 32) not in segments:
                continue  # settled, and its segment deleted, since the iteration began
            exchange, routing_key, properties, body = _parse_publish(*self._record(position))
            count = counts.get(message_id, 0)
            yield RecoveredMessage(
                message_id,
                exchange.decode(),
                routing_key.decode(),
                properties,
                body,
                count > 0,
                count,
                time_ms,
            )

    def index(self, vhost: str, queue: str) -> Iterator[tuple[int, int, int]]:
        """The queue's (message id, delivery count, time_ms) in order, no record read."""
        index = self._queues.get((vhost, queue))
        if index is None:
            return
        counts = index.counts
        segments = self._segments
        for message_id, position, time_ms in index.entries():
            if (position >> 32) in segments:
                yield message_id, counts.get(message_id, 0), time_ms

    def read(self, message_id: int) -> tuple[str, str, bytes, bytes]:
        position = self._find(message_id)
        if not position:
            raise KeyError(message_id)
        exchange, routing_key, properties, body = _parse_publish(*self._record(position))
        return exchange.decode(), routing_key.decode(), properties, body

    # -- durability -----------------------------------------------------------------

    def sync(self, callback: Callable[[], None]) -> None:
        self._check()
        if not self._dirty:
            callback()  # everything recorded so far is durable already
            return
        self._callbacks.append(callback)
        if not self._woken:
            self._wake()

    def flush(self) -> None:
        """Writes and syncs what is pending, then runs the callbacks it covered.

        Raises :class:`StoreWriteError` (nothing of it is durable, no callback ran, all of
        it is kept for the next flush) when a file cannot be written for lack of space,
        and :class:`StoreFailed` for any other I/O error: the store then refuses all
        further work, since after a failed fsync nobody knows what reached the disk.
        """
        self._check()
        self._woken = False
        if not self._dirty:
            return
        files = self._stage()
        directories = self._write(files)
        try:
            if self._fsync:
                for file in files:
                    _fdatasync(file.fd)
                for directory in directories:
                    fsync_directory(directory)
        except OSError as exc:
            raise self._fail(f"cannot sync to the disk under {self.path}: {exc}") from exc
        active = self._active
        for file in files:
            file.commit()
            if file is not active and file is not self._journal.file:
                file.close()
        touched = list(self._touched.values())
        self._touched.clear()
        callbacks, self._callbacks = self._callbacks, []
        self._dirty = False
        self._flushes += 1
        try:
            _run(callbacks)
        finally:
            self._maintain(touched)

    def _stage(self) -> list[AppendFile]:
        """Encodes pending acks; every file with bytes to write."""
        files: list[AppendFile] = []
        journal = self._journal.file
        if journal.pending or not journal.linked:
            files.append(journal)
        segments = dict(self._touched)
        segments[self._active.number] = self._active
        for segment in segments.values():
            segment.stage_acks()
            if segment.pending:
                files.append(segment)
        return files

    def _write(self, files: list[AppendFile]) -> set[Path]:
        directories: set[Path] = set()
        for file in files:
            try:
                if file.write():
                    directories.add(file.path.parent)
            except OSError as exc:
                if exc.errno in _RETRYABLE:
                    text = (
                        f"cannot write {file.path}: {exc.strerror}; nothing of this flush is "
                        "durable, the next flush retries it"
                    )
                    log.error("%s", text)
                    raise StoreWriteError(text, exc.errno) from exc
                raise self._fail(f"cannot write {file.path}: {exc}") from exc
        return directories

    def close(self) -> None:
        if self._refusal is not None and self._lock_fd < 0:
            return
        try:
            if self._refusal is None:
                self.flush()
        finally:
            self._release()
            if self._refusal is None:
                self._refusal = StoreError(f"the store on {self.path} is closed")

    def _crash(self) -> None:
        """Test hook: dies as ``kill -9`` would, losing everything not flushed."""
        self._callbacks = []
        self._release()
        self._refusal = StoreError(f"the store on {self.path} crashed (test hook)")

    # -- internals ------------------------------------------------------------------

    def _check(self) -> None:
        if self._refusal is not None:
            raise self._refusal

    def _wake(self) -> None:
        self._dirty = True
        if not self._woken:
            self._woken = True
            self.wakeup()

    def _fail(self, text: str) -> StoreFailed:
        log.critical("%s; the store refuses all further work until a restart", text)
        self._refusal = StoreFailed(text)
        return self._refusal

    def _release(self) -> None:
        for segment in getattr(self, "_segments", {}).values():
            segment.close()
        journal: DefinitionsJournal | None = getattr(self, "_journal", None)
        if journal is not None:
            journal.close()
        self._open.clear()
        self._chunk = (None, 0, b"")
        if self._lock_fd >= 0:
            fd, self._lock_fd = self._lock_fd, -1
            os.close(fd)  # releases the flock

    def _new_queue(self, vhost: str, name: str) -> QueueIndex:
        queue = QueueIndex(vhost, name)
        self._queues[(vhost, name)] = queue
        self._by_tag[queue.tag] = queue
        return queue

    def _drop_queue(self, vhost: str, name: str) -> None:
        queue = self._queues.pop((vhost, name), None)
        if queue is None:
            return
        del self._by_tag[queue.tag]
        if self._last_read is queue:
            self._last_read = None
        hit: dict[int, Segment] = {}
        for position in queue.positions():
            segment = self._segments[position >> 32]
            segment.live -= 1
            hit[segment.number] = segment
        drop = bytes((DROP,)) + queue.tag + U64.pack(self._next_id - 1)
        for segment in hit.values():
            segment.drops.append(drop)
            self._touched[segment.number] = segment
        if hit:
            self._wake()

    def _roll(self) -> None:
        sealed = self._active
        sealed.sealed = True
        self._rolled = True
        self._touched[sealed.number] = sealed
        number = sealed.number + 1
        self._active = self._segments[number] = Segment(
            self._messages_dir, number, 0, self._next_id
        )

    def _find(self, message_id: int) -> int:
        last = self._last_read
        if last is not None:
            position = last.position(message_id)
            if position:
                return position
        for queue in self._queues.values():
            ids = queue.ids
            if queue.extra or (ids and ids[queue.head] <= message_id <= ids[-1]):
                position = queue.position(message_id)
                if position:
                    self._last_read = queue
                    return position
        return 0

    def _record(self, position: int) -> tuple[bytes, int, int]:
        """The bytes holding the record at ``position``, and where its payload is in them.

        Records on disk are read through a read-ahead chunk, so reading a queue in order
        costs one pread per chunk, and checked against their CRC.
        """
        segment = self._segments[position >> 32]
        offset = position & _OFFSET
        if offset >= segment.size:  # not written yet
            data = segment.pending_bytes()
            start = offset - segment.size + FRAME.size
            (length,) = _unpack_frame(data, start - FRAME.size)[:1]
            return data, start, start + length
        cached, chunk_start, chunk = self._chunk
        start = offset - chunk_start
        if cached is not segment or start < 0 or start + FRAME.size > len(chunk):
            chunk, start = self._read_chunk(segment, offset), 0
        length, crc = _unpack_frame(chunk, start)
        end = start + FRAME.size + length
        if end > len(chunk):
            chunk, start, end = self._read_chunk(segment, offset, end - start), 0, end - start
        if _crc32(memoryview(chunk)[start + FRAME.size : end]) != crc:
            raise StoreError(f"{segment.path}: the message record at offset {offset} is corrupt")
        return chunk, start + FRAME.size, end

    def _read_chunk(self, segment: Segment, offset: int, size: int = _READ_AHEAD) -> bytes:
        try:
            chunk = os.pread(self._reader(segment), min(size, segment.size - offset), offset)
        except OSError as exc:
            raise StoreError(f"cannot read {segment.path} at offset {offset}: {exc}") from exc
        if len(chunk) < min(size, FRAME.size):
            raise StoreError(f"{segment.path}: the message record at offset {offset} is missing")
        self._chunk = (segment, offset, chunk)
        return chunk

    def _reader(self, segment: Segment) -> int:
        if segment is not self._active:
            self._open[segment.number] = segment
            self._open.move_to_end(segment.number)
            while len(self._open) > _OPEN_SEGMENTS:
                _, evicted = self._open.popitem(last=False)
                if not evicted.pending:
                    evicted.close()
        return segment.open()

    def _delete_segment(self, segment: Segment) -> None:
        segment.close()
        del self._segments[segment.number]
        self._touched.pop(segment.number, None)
        self._open.pop(segment.number, None)
        if self._chunk[0] is segment:
            self._chunk = (None, 0, b"")
        try:
            segment.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("%s: could not delete it: %s", segment.path, exc)

    # -- upkeep ---------------------------------------------------------------------

    def _maintain(self, touched: list[Segment]) -> None:
        """After a flush: deletes dead segments, compacts sparse ones, rewrites the journal."""
        for flushes, segment in self._doomed:
            if flushes < self._flushes and segment.number in self._segments:
                self._delete_segment(segment)
        self._doomed = [(f, s) for f, s in self._doomed if s.number in self._segments]
        for segment in touched:
            if (
                segment.sealed
                and not segment.live
                and not segment.doomed
                and segment.number in self._segments
                and segment.number not in self._touched  # more to write first
            ):
                self._delete_segment(segment)
        if self._rolled or self._flushes % _COMPACT_EVERY == 0:
            self._rolled = False
            self._maybe_compact()
        self._journal.maybe_rewrite()

    def _maybe_compact(self) -> None:
        """Compacts the sparsest segments while dead records take more room than live ones.

        Compacting only when garbage is both large (four segments) and the majority keeps
        a draining backlog from being copied: there the dead bytes are one partly
        consumed segment, the live ones all the others.  Each call copies at most about
        a segment's worth of live data, so a flush never stalls for long.
        """
        live_bytes = dead_bytes = 0
        sparse: list[tuple[float, Segment]] = []
        for segment in self._segments.values():
            if not segment.sealed or segment.doomed or not segment.pairs:
                continue
            if segment.pending or segment.number in self._touched:
                continue  # sealed this turn: some of it is not on disk yet
            live = segment.end * segment.live // segment.pairs
            live_bytes += live
            dead_bytes += segment.end - live
            if 2 * segment.live < segment.pairs:
                sparse.append((segment.live / segment.pairs, segment))
        sparse.sort(key=lambda item: item[0])
        copied = 0
        for _, segment in sparse:
            if dead_bytes <= max(4 * self._segment_size, live_bytes) or copied > self._segment_size:
                break
            live = segment.end * segment.live // segment.pairs
            self._compact(segment)
            copied += live
            dead_bytes -= segment.end - live

    def _compact(self, segment: Segment) -> None:
        """Rewrites the live messages of a sealed, fully written segment into the active one."""
        assert segment.sealed and not segment.pending and segment is not self._active
        try:
            data = os.pread(self._reader(segment), segment.size, 0)
        except OSError as exc:
            log.warning("%s: cannot read it for compaction: %s", segment.path, exc)
            return
        offsets, stop, reason = scan(data, HEADER.size)
        if stop != segment.size:
            log.error("%s: %s at offset %d; not compacting it", segment.path, reason, stop)
            return
        moved = 0
        for offset in offsets:
            (length,) = _unpack_frame(data, offset)[:1]
            start = offset + FRAME.size
            if data[start] in (PUBLISH, PUBLISH_TIMED):
                moved += self._rewrite(data, start, start + length, segment.base | offset)
        if segment.live:  # pragma: no cover - every live message was on disk and moved
            log.error("%s: %d messages not found while compacting it", segment.path, segment.live)
            return
        log.info("compacted %s: moved %d live messages out of it", segment.path, moved)
        segment.doomed = True
        self._doomed.append((self._flushes, segment))
        self._wake()

    def _rewrite(self, data: bytes, start: int, end: int, position: int) -> int:
        """Copies a live publish record (either type) to the active segment, with the
        queues that still hold it and their delivery counts; how many messages moved."""
        kind, message_id, count, exchange_len, key_len, properties_len = _unpack_head(data, start)
        pos = start + PUBLISH_HEAD.size
        raw_expires = b""  # kept as it is: a timed record is rewritten as a timed record
        if kind == PUBLISH_TIMED:
            raw_expires = data[pos : pos + I64.size]
            pos += I64.size
        keep: list[QueueIndex] = []
        for _ in range(count):
            tag_end = pos + 2 + data[pos] + data[pos + 1 + data[pos]]
            queue = self._by_tag.get(data[pos:tag_end])
            if queue is not None and queue.position(message_id) == position:
                keep.append(queue)
            pos = tag_end + 4
        if not keep:
            return 0
        payload = b"".join(
            (
                _pack_head(kind, message_id, len(keep), exchange_len, key_len, properties_len),
                raw_expires,
                *(queue.tag + U32.pack(queue.counts.get(message_id, 0)) for queue in keep),
                data[pos:end],
            )
        )
        active = self._active
        new_position = active.base | active.add(payload)
        for queue in keep:
            queue.move(message_id, new_position)
        self._segments[position >> 32].live -= len(keep)
        active.live += len(keep)
        active.pairs += len(keep)
        if active.end >= self._segment_size:
            self._roll()
        return 1


def _run(callbacks: list[Callable[[], None]]) -> None:
    """Runs every callback in order; the first exception is raised after the last ran."""
    error: BaseException | None = None
    for callback in callbacks:
        try:
            callback()
        except Exception as exc:
            if error is None:
                error = exc
            else:
                log.exception("a sync callback failed as well")
    if error is not None:
        raise error


def _parse_publish(data: bytes, start: int, end: int) -> tuple[bytes, bytes, bytes, bytes]:
    """(exchange, routing key, properties, body) of a publish record's payload."""
    kind, _, count, exchange_len, key_len, properties_len = _unpack_head(data, start)
    pos = start + PUBLISH_HEAD.size
    if kind == PUBLISH_TIMED:
        pos += I64.size
    for _ in range(count):
        pos += 2 + data[pos] + data[pos + 1 + data[pos]] + 4
    exchange_end = pos + exchange_len
    key_end = exchange_end + key_len
    properties_end = key_end + properties_len
    return (
        data[pos:exchange_end],
        data[exchange_end:key_end],
        data[key_end:properties_end],
        data[properties_end:end],
    )
