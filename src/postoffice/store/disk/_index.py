"""Where a queue's messages are: parallel arrays of ids, positions and expiry times.

A position is ``segment number << 32 | offset of the record in the segment``; 0 marks
a settled slot.  Ids are appended in increasing order (the store hands them out that
way), so a lookup is a check of the head (acks mostly arrive in order) and otherwise a
binary search.  That is 16 bytes per queued message instead of ~100 for a dict entry
with its int objects, which is what lets a backlog of millions stay small in RAM.

A third array, ``exp``, holds the messages' ``time_ms`` (0 for none).  It exists only
once the queue has held a message with one, and it may be shorter than the others: the
missing tail is all 0.  So a queue that never sees one pays nothing, a publish without
one never touches it, and a queue whose messages all have one (a TTL) pays 8 bytes each.

Settled slots at the head are skipped and trimmed in bulk; holes elsewhere (acks out
of order) are squeezed out once they outnumber the live entries.  While replaying the
log at start-up, messages rewritten by compaction arrive out of id order: they wait in
:attr:`QueueIndex.extra` until :meth:`QueueIndex.settle_order` merges them in.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator

__all__ = ["QueueIndex", "encode_tag"]

_TRIM = 4096


def encode_tag(vhost: str, name: str) -> bytes:
    """How records name a queue: vhost and name as short strings."""
    raw_vhost = vhost.encode()
    raw_name = name.encode()
    if len(raw_vhost) > 255 or len(raw_name) > 255:
        raise ValueError(f"queue name too long to store: {vhost!r}/{name!r}")
    return bytes((len(raw_vhost),)) + raw_vhost + bytes((len(raw_name),)) + raw_name


class QueueIndex:
    __slots__ = (
        "counts",
        "exp",
        "extra",
        "extra_exp",
        "head",
        "ids",
        "live",
        "name",
        "pos",
        "pub_part",
        "tag",
        "vhost",
    )

    def __init__(self, vhost: str, name: str, tag: bytes | None = None) -> None:
        self.vhost = vhost
        self.name = name
        self.tag = tag if tag is not None else encode_tag(vhost, name)
        self.pub_part = self.tag + b"\0\0\0\0"  # a fresh publish: delivery count 0
        self.ids = array("q")
        self.pos = array("q")
        self.head = 0
        self.live = 0
        self.counts: dict[int, int] = {}  # message id -> deliveries, only when > 0
        self.exp: array[int] | None = None  # see the module docstring
        self.extra: dict[int, int] | None = None  # start-up only, see the module docstring
        self.extra_exp: dict[int, int] = {}  # time_ms of messages in extra, when not 0

    def __repr__(self) -> str:
        return f"<QueueIndex {self.vhost!r}/{self.name!r} live={self.live}>"

    def _find(self, message_id: int) -> int:
        ids = self.ids
        head = self.head
        if head < len(ids) and ids[head] == message_id:
            return head
        i = bisect_left(ids, message_id, head)
        if i < len(ids) and ids[i] == message_id:
            return i
        return -1

    def position(self, message_id: int) -> int:
        """The message's position, or 0 when the queue does not hold it."""
        i = self._find(message_id)
        if i >= 0:
            return self.pos[i]
        if self.extra:
            return self.extra.get(message_id, 0)
        return 0

    def append(self, message_id: int, position: int, time_ms: int = 0) -> None:
        self.ids.append(message_id)
        self.pos.append(position)
        self.live += 1
        if time_ms:
            self._set_expires(len(self.ids) - 1, time_ms)

    def _set_expires(self, i: int, time_ms: int) -> None:
        exp = self.exp
        if exp is None:
            if not time_ms:
                return
            exp = self.exp = array("q")
        if i < len(exp):
            exp[i] = time_ms
        elif time_ms:
            exp.frombytes(bytes(8 * (i - len(exp))))  # the 0s of the missing tail
            exp.append(time_ms)

    def move(self, message_id: int, position: int) -> None:
        """The message's record was rewritten at ``position`` (compaction)."""
        i = self._find(message_id)
        if i >= 0 and self.pos[i]:
            self.pos[i] = position
        elif self.extra and message_id in self.extra:
            self.extra[message_id] = position

    def remove(self, message_id: int) -> int:
        """Forgets the message; its position, or 0 when the queue did not hold it."""
        ids = self.ids
        pos = self.pos
        head = self.head
        # Inline rather than _find: this runs once per ack.
        if head < len(ids) and ids[head] == message_id:
            i = head
        else:
            i = bisect_left(ids, message_id, head)
            if i == len(ids) or ids[i] != message_id:
                return self._remove_extra(message_id)
        position = pos[i]
        if not position:
            return 0
        pos[i] = 0
        self.live -= 1
        if self.counts:
            self.counts.pop(message_id, None)
        if i == head:
            size = len(pos)
            head += 1
            while head < size and not pos[head]:
                head += 1
            if head == size:
                del ids[:]
                del pos[:]
                self.exp = None
                head = 0
            elif head >= _TRIM and 2 * head > size:
                del ids[:head]
                del pos[:head]
                if self.exp is not None:
                    del self.exp[:head]
                head = 0
            self.head = head
        elif len(pos) - head - self.live > max(_TRIM, self.live):  # settled slots past the head
            self._squeeze()
        return position

    def _remove_extra(self, message_id: int) -> int:
        if self.extra and message_id in self.extra:
            self.live -= 1
            self.counts.pop(message_id, None)
            self.extra_exp.pop(message_id, None)
            return self.extra.pop(message_id)
        return 0

    def _squeeze(self) -> None:
        self._rebuild(list(self.entries()))

    def _rebuild(self, entries: list[tuple[int, int, int]]) -> None:
        """Arrays of exactly ``entries``: (message id, position, time_ms) in id order."""
        self.ids = array("q", [m for m, _, _ in entries])
        self.pos = array("q", [p for _, p, _ in entries])
        self.exp = array("q", [e for _, _, e in entries]) if any(e for _, _, e in entries) else None
        self.head = 0

    def entries(self) -> Iterator[tuple[int, int, int]]:
        """(message id, position, time_ms) of every message held, in id order (not
        ``extra``), as of the first step of the iteration."""
        head = self.head
        ids = self.ids[head:]
        pos = self.pos[head:]
        exp = self.exp[head:] if self.exp is not None else array("q")
        timed = len(exp)
        for i, position in enumerate(pos):
            if position:
                yield ids[i], position, exp[i] if i < timed else 0

    def positions(self) -> Iterator[int]:
        yield from (p for p in self.pos[self.head :] if p)
        if self.extra:
            yield from self.extra.values()

    def delivered(self, message_id: int) -> bool:
        """Counts a delivery; False when the queue does not hold the message."""
        if not self.position(message_id):
            return False
        counts = self.counts
        counts[message_id] = counts.get(message_id, 0) + 1
        return True

    # -- start-up -------------------------------------------------------------------

    def restore(self, message_id: int, position: int, count: int, time_ms: int = 0) -> None:
        """A publish record found while replaying: new, or a rewrite of one already held."""
        ids = self.ids
        if self.extra and message_id in self.extra:
            self._restore_extra(message_id, position, time_ms)
        elif ids and message_id <= ids[-1]:
            i = self._find(message_id)
            if i >= 0 and self.pos[i]:
                self.pos[i] = position
                self._set_expires(i, time_ms)
            else:
                if self.extra is None:
                    self.extra = {}
                self._restore_extra(message_id, position, time_ms)
                self.live += 1
        else:
            self.append(message_id, position, time_ms)
        if count:
            self.counts[message_id] = count
        else:
            self.counts.pop(message_id, None)

    def _restore_extra(self, message_id: int, position: int, time_ms: int) -> None:
        assert self.extra is not None
        self.extra[message_id] = position
        if time_ms:
            self.extra_exp[message_id] = time_ms
        else:
            self.extra_exp.pop(message_id, None)

    def drop(self, up_to: int) -> int:
        """Forgets every message with an id up to ``up_to`` (the queue was deleted); how many."""
        dropped = 0
        ids = self.ids
        pos = self.pos
        for i in range(self.head, len(pos)):
            if ids[i] > up_to:
                break
            if pos[i]:
                pos[i] = 0
                dropped += 1
        if self.extra:
            for message_id in [m for m in self.extra if m <= up_to]:
                del self.extra[message_id]
                self.extra_exp.pop(message_id, None)
                dropped += 1
        for message_id in [m for m in self.counts if m <= up_to]:
            del self.counts[message_id]
        self.live -= dropped
        self._squeeze_all()
        return dropped

    def settle_order(self) -> None:
        """Merges ``extra`` into the arrays, so every message is in id order again."""
        self._squeeze_all()

    def _squeeze_all(self) -> None:
        merged = list(self.entries())
        if self.extra:
            late = self.extra_exp
            merged.extend((m, p, late.get(m, 0)) for m, p in self.extra.items())
            merged.sort()
            self.extra = None
            self.extra_exp = {}
        self._rebuild(merged)
