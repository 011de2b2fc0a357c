"""Start-up: rebuild every queue's index from the segment files, streaming them.

Segments are replayed in number order.  Bodies are not
kept: a publish record leaves only (id, position) in its queues' indexes.  A file whose
tail is torn or corrupt is cut at its first bad record (logged with the file and the
offset, the tail saved aside); everything before it is kept, and the other files are
independent of it (see :mod:`._segment`).
"""

from __future__ import annotations

import logging
import re
import struct
import zlib
from collections import Counter
from pathlib import Path

from ._format import (
    FRAME,
    HEADER,
    SEGMENT_MAGIC,
    HeaderProblem,
    check_header,
    cut_tail,
)
from ._index import QueueIndex
from ._segment import (
    DELIVERED,
    DROP,
    I64,
    PUBLISH,
    PUBLISH_HEAD,
    PUBLISH_TIMED,
    SETTLE,
    U32,
    U64,
    Segment,
    unpack_ids,
)

__all__ = ["Recovery"]

log = logging.getLogger("postoffice.store")

_NAME = re.compile(r"^(\d{10})\.seg$")
_HEAD_SIZE = PUBLISH_HEAD.size
_unpack_head = PUBLISH_HEAD.unpack_from
_unpack_u32 = U32.unpack_from
_unpack_frame = FRAME.unpack_from
_crc32 = zlib.crc32
_SEGMENT_OF = (32).__rrshift__  # position -> segment number, at C speed


class _BadRecord(Exception):
    pass


class Recovery:
    """What the segment files hold: queues, segments, and the highest id seen."""

    def __init__(self, directory: Path, aside: Path) -> None:
        self.directory = directory
        self.aside = aside
        self.queues: dict[tuple[str, str], QueueIndex] = {}
        self.by_tag: dict[bytes, QueueIndex] = {}
        self.segments: dict[int, Segment] = {}
        self.max_id = 0
        self._files: dict[int, Path] = {}

    def check_formats(self) -> None:
        """Lists the segments and reads every header first, so a newer format is refused
        before anything (a tail cut, a deletion) has changed."""
        for path in sorted(self.directory.iterdir()):
            match = _NAME.match(path.name)
            if match is None or not path.is_file():
                log.warning("%s: not a file postoffice knows, ignored", path)
                continue
            self._files[int(match[1])] = path
            with path.open("rb") as file:
                head = file.read(HEADER.size)
            try:
                check_header(path, head, SEGMENT_MAGIC)
            except HeaderProblem:
                pass  # dealt with when the file is replayed

    @property
    def highest(self) -> int:
        """The highest segment number in use, foreign files named like segments included."""
        return max(self._files, default=0)

    def run(self) -> None:
        for number in sorted(self._files):
            self._replay_segment(number, self._files[number])
        for queue in self.queues.values():
            if queue.extra:
                queue.settle_order()
        live: Counter[int] = Counter()
        for queue in self.queues.values():
            live.update(map(_SEGMENT_OF, queue.positions()))
        for number, count in live.items():
            self.segments[number].live = count
        for key in [key for key, queue in self.queues.items() if not queue.live]:
            del self.by_tag[self.queues.pop(key).tag]

    def _replay_segment(self, number: int, path: Path) -> None:
        data = path.read_bytes()
        try:
            first_id = check_header(path, data, SEGMENT_MAGIC)
        except HeaderProblem as problem:
            if problem.torn:
                log.warning("%s: %s, left by a crash at creation; removed", path, problem)
                path.unlink()
            else:
                log.error("%s: %s: not a postoffice segment, ignored", path, problem)
            return
        self.max_id = max(self.max_id, first_id - 1)
        segment = Segment(self.directory, number, len(data))
        self.segments[number] = segment
        stop, reason = self._replay(segment, data)
        if stop < len(data):
            segment.size = segment.end = stop
            cut_tail(path, segment.open(), data, stop, reason, self.aside)
            segment.close()

    def _replay(self, segment: Segment, data: bytes) -> tuple[int, str]:
        """Applies the segment's good records; where they stop and why ("" at the end).

        The loop is :func:`._format.scan` fused with the decoding, and a publish to one
        queue (nearly all of them) is decoded inline: a million records per second or so
        is what makes restarting on a large backlog quick.
        """
        size = len(data)
        view = memoryview(data)
        base = segment.base
        by_tag = self.by_tag
        max_id = self.max_id
        pairs = 0
        pos = HEADER.size
        reason = ""
        while pos < size:
            if size - pos < FRAME.size:
                reason = "a torn frame header"
                break
            length, crc = _unpack_frame(data, pos)
            start = pos + FRAME.size
            end = start + length
            if length == 0:
                reason = "a frame of length 0 (a zero-filled tail)"
                break
            if end > size:
                reason = f"a frame of length {length} past the end of the file"
                break
            if _crc32(view[start:end]) != crc:
                reason = "a CRC mismatch"
                break
            try:
                kind = data[start]
                if kind == PUBLISH:
                    _, message_id, count, exchange_len, key_len, properties_len = _unpack_head(
                        data, start
                    )
                    tag_start = start + _HEAD_SIZE
                    vhost_end = tag_start + 1 + data[tag_start]
                    tag_end = vhost_end + 1 + data[vhost_end]
                    if count != 1 or tag_end + 4 + exchange_len + key_len + properties_len > end:
                        self._publish(PUBLISH, data, start, end, base | pos)
                    else:
                        tag = data[tag_start:tag_end]
                        queue = by_tag.get(tag) or self._queue(data, tag_start)[0]
                        (deliveries,) = _unpack_u32(data, tag_end)
                        ids = queue.ids
                        if (
                            not deliveries
                            and queue.extra is None
                            and (not ids or message_id > ids[-1])
                        ):
                            ids.append(message_id)
                            queue.pos.append(base | pos)
                            queue.live += 1
                        else:
                            queue.restore(message_id, base | pos, deliveries)
                    pairs += count
                    if message_id > max_id:
                        max_id = message_id
                elif kind == PUBLISH_TIMED:
                    message_id, count = self._publish(kind, data, start, end, base | pos)
                    pairs += count
                    if message_id > max_id:
                        max_id = message_id
                elif kind in (SETTLE, DELIVERED):
                    max_id = max(max_id, self._acks(kind, data, start, end))
                elif kind == DROP:
                    max_id = max(max_id, self._drop(data, start, end))
                else:
                    raise _BadRecord(f"an unexpected record of type {kind}")
            except (_BadRecord, IndexError, ValueError, struct.error) as exc:
                reason = f"an undecodable record ({exc})"
                break
            pos = end
        segment.pairs += pairs
        self.max_id = max(self.max_id, max_id)
        return pos, reason

    def _queue(self, data: bytes, start: int) -> tuple[QueueIndex, int]:
        """The queue a tag at ``start`` names (created on first sight) and where it ends."""
        vhost_end = start + 1 + data[start]
        end = vhost_end + 1 + data[vhost_end]
        if end > len(data):
            raise _BadRecord("a queue tag past its record")
        tag = data[start:end]
        queue = self.by_tag.get(tag)
        if queue is None:
            vhost = data[start + 1 : vhost_end].decode()
            name = data[vhost_end + 1 : end].decode()
            queue = self.by_tag[tag] = self.queues[(vhost, name)] = QueueIndex(vhost, name, tag)
        return queue, end

    def _publish(
        self, kind: int, data: bytes, start: int, end: int, position: int
    ) -> tuple[int, int]:
        """A publish record to several queues (or one that fails its checks), or a timed
        one; its message id and number of queues."""
        _, message_id, count, exchange_len, key_len, properties_len = _unpack_head(data, start)
        pos = start + _HEAD_SIZE
        time_ms = 0
        if kind == PUBLISH_TIMED:
            (time_ms,) = I64.unpack_from(data, pos)
            pos += I64.size
            if not time_ms:
                raise _BadRecord("a timed publish record without a time")
        held = []
        for _ in range(count):
            queue, pos = self._queue(data, pos)
            held.append((queue, _unpack_u32(data, pos)[0]))
            pos += 4
        if pos + exchange_len + key_len + properties_len > end:
            raise _BadRecord("a publish record shorter than its fields")
        for queue, deliveries in held:
            queue.restore(message_id, position, deliveries, time_ms)
        return message_id, count

    def _acks(self, kind: int, data: bytes, start: int, end: int) -> int:
        """Applies a delivered or settle record; the highest id in it."""
        queue, pos = self._queue(data, start + 1)
        if (end - pos) % 8:
            raise _BadRecord("a list of ids of a length not a multiple of 8")
        ids = unpack_ids(memoryview(data)[pos:end])
        if kind == SETTLE:
            for message_id in ids:
                queue.remove(message_id)
        else:
            for message_id in ids:
                queue.delivered(message_id)
        return max(ids, default=0)

    def _drop(self, data: bytes, start: int, end: int) -> int:
        """Applies a drop record; its id bound."""
        queue, pos = self._queue(data, start + 1)
        if end - pos != U64.size:
            raise _BadRecord("a drop record of the wrong length")
        (up_to,) = U64.unpack_from(data, pos)
        queue.drop(up_to)
        return int(up_to)
