"""The load generator's frames: publishes encoded ahead, deliveries counted in place.

No sockets here, so every piece is tested on bytes alone.

Every message body starts with a :data:`MESSAGE_ID`: the publisher's index and a
sequence number counting from 0.  Consumers check that, per publisher, the numbers
on one subscription only go up (a number seen again that is not flagged redelivered
is a duplicate) and add them all up: with the count, the sum tells a loss hidden by
a duplicate elsewhere.  Latency bodies also carry two monotonic timestamps
(:data:`SEND_TIMES`): when the message was due and when it was written.

Publishers write :class:`PublishBatch` bytes: a batch of whole publishes encoded
once, into which one ``struct`` call stamps the sequence numbers.  With priorities,
message ``seq`` carries priority ``seq % N``; a priority queue may then deliver out
of order, but keeps each priority's messages in order, so consumers check the order
per publisher and priority (a *lane*).  Consumers read
with :class:`DeliveryStream`, which learns the byte layout of a delivery on each
channel and then takes runs of deliveries with a few comparisons each, falling back
to a frame-by-frame walk for anything else (a redelivery, another method, a body
split over frames), so nothing is miscounted.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from postoffice import amqp
from postoffice.amqp.frames import encode_content

__all__ = [
    "MESSAGE_ID",
    "SEND_TIMES",
    "TIMED_SIZE",
    "ConfirmTracker",
    "DeliveryStream",
    "Message",
    "PublishBatch",
    "expected_id_sum",
]

MESSAGE_ID = struct.Struct(">IQ")  # publisher index, sequence number
SEND_TIMES = struct.Struct(">QQ")  # due and sent, time.monotonic_ns()
TIMED_SIZE = MESSAGE_ID.size + SEND_TIMES.size

_FRAME_HEADER = struct.Struct(">BHI")
_CHANNEL = struct.Struct(">H")
_INDEX = struct.Struct(">I")
_TAG = struct.Struct(">Q")
_FRAME_END = 0xCE
_BASIC_DELIVER = amqp.BasicDeliver.INDEX
_AUTO_BATCH_BYTES = 256 * 1024
_MAX_BATCH = 2000
_MAX_RUN = 1024  # deliveries checked with one struct call; bounds the cache of Structs
_MAX_TEMPLATES = 1 << 16  # (route, priority) pairs a publisher encodes ahead
_MAX_HEADERS = 256  # content headers one channel's fast path recognises (a priority each)


def expected_id_sum(published: Sequence[int]) -> int:
    """The sum of the sequence numbers of every message, ``published[i]`` from publisher i."""
    return sum(n * (n - 1) // 2 for n in published)


class PublishBatch:
    """Whole basic.publish frame sets for one channel, encoded once and re-stamped per use.

    Message ``seq`` goes to ``routes[seq % len(routes)]`` (exchange, routing key) and,
    with ``priorities`` N, carries the ``priority`` property ``seq % N``: one
    template per (route, priority) pair of a cycle, all encoded here.  :meth:`encode`
    returns ``count`` messages numbered from ``first``; a full batch starting on a
    cycle is stamped with a single ``struct`` call, so a publisher spends a few tens
    of nanoseconds per message on top of the copy into the socket.
    """

    def __init__(
        self,
        channel: int,
        routes: Sequence[tuple[str, str]],
        publisher: int,
        size: int,
        properties: Mapping[str, Any],
        frame_max: int,
        batch: int = 0,
        priorities: int = 0,
    ) -> None:
        if not routes:
            raise ValueError("a publisher needs at least one route")
        if size < MESSAGE_ID.size:
            raise ValueError(f"bodies of {size} bytes cannot carry a message id")
        self.publisher = publisher
        self.size = size
        variants = [properties]
        if priorities:
            variants = [{**properties, "priority": p} for p in range(priorities)]
        headers = [amqp.encode_properties(variant) for variant in variants]
        cycle = math.lcm(len(routes), len(headers))
        if cycle > _MAX_TEMPLATES:
            raise ValueError(
                f"{len(routes)} routes and {len(headers)} priorities make {cycle:,} different "
                f"messages, more than {_MAX_TEMPLATES:,}: choose a number of priorities that "
                "divides the number of routes"
            )
        body = MESSAGE_ID.pack(publisher, 0) + bytes(size - MESSAGE_ID.size)
        publishes = [
            amqp.encode_method_frame(
                channel, amqp.BasicPublish(exchange=exchange, routing_key=routing_key)
            )
            for exchange, routing_key in routes
        ]
        # Each template is split around the 8-byte sequence number.
        self._templates: list[tuple[bytes, bytes]] = []
        for k in range(cycle):
            frames = publishes[k % len(routes)] + b"".join(
                encode_content(channel, headers[k % len(headers)], body, frame_max)
            )
            seq_at = _body_start(frames) + 4
            self._templates.append((frames[:seq_at], frames[seq_at + 8 :]))
        length = sum(len(head) + 8 + len(tail) for head, tail in self._templates)
        per_message = length / cycle
        if batch <= 0:
            batch = max(1, min(_MAX_BATCH, int(_AUTO_BATCH_BYTES // per_message)))
        # Whole cycles, so that every batch spreads evenly over routes and priorities.
        cycles = max(1, round(batch / cycle))
        self.count = cycles * cycle
        templates = self._templates * cycles
        self._struct = struct.Struct(
            ">" + "".join(f"{len(head)}sQ{len(tail)}s" for head, tail in templates)
        )
        self._values: list[Any] = []
        for head, tail in templates:
            self._values += [head, 0, tail]

    def encode(self, first: int, count: int) -> bytes:
        """``count`` (at most :attr:`count`) messages numbered ``first``, ``first + 1``..."""
        templates = self._templates
        cycle = len(templates)
        if count == self.count and first % cycle == 0:
            values = self._values
            values[1::3] = range(first, first + count)
            return self._struct.pack(*values)
        pack = _TAG.pack
        parts: list[bytes] = []
        for seq in range(first, first + count):
            head, tail = templates[seq % cycle]
            parts += (head, pack(seq), tail)
        return b"".join(parts)

    def timed(self, seq: int, due_ns: int, sent_ns: int) -> bytes:
        """Message ``seq`` whose body also carries its due and sent times."""
        if self.size < TIMED_SIZE:
            raise ValueError(f"bodies of {self.size} bytes cannot carry send times")
        head, tail = self._templates[seq % len(self._templates)]
        return head + _TAG.pack(seq) + SEND_TIMES.pack(due_ns, sent_ns) + tail[SEND_TIMES.size :]


def _body_start(frames: bytes) -> int:
    """Where the first body frame's payload starts in method + header + body frames."""
    method_size: int = _FRAME_HEADER.unpack_from(frames, 0)[2]
    header_at = method_size + 8
    header_size: int = _FRAME_HEADER.unpack_from(frames, header_at)[2]
    return header_at + header_size + 8 + 7


class ConfirmTracker:
    """Which of a publisher's messages the broker has confirmed (acked) or nacked.

    Publish sequence numbers start at 1 on a channel in confirm mode.  A settlement
    with ``multiple`` covers every number up to its tag; one without covers just
    its tag.  A number settled twice is counted in :attr:`duplicates`.
    """

    __slots__ = ("_singles", "_upto", "acked", "duplicates", "nacked")

    def __init__(self) -> None:
        self._upto = 0  # every number up to this one is settled
        self._singles: set[int] = set()  # settled numbers above _upto
        self.acked = 0
        self.nacked = 0
        self.duplicates = 0

    @property
    def settled(self) -> int:
        return self.acked + self.nacked

    def settle(self, tag: int, multiple: bool, nack: bool = False) -> None:
        if multiple:
            if tag <= self._upto:
                return
            newly = tag - self._upto
            inside = [single for single in self._singles if single <= tag]
            newly -= len(inside)
            self._singles.difference_update(inside)
            self._upto = tag
        else:
            if tag <= self._upto or tag in self._singles:
                self.duplicates += 1
                return
            newly = 1
            self._singles.add(tag)
            while self._upto + 1 in self._singles:
                self._singles.remove(self._upto + 1)
                self._upto += 1
        if nack:
            self.nacked += newly
        else:
            self.acked += newly


class Message(NamedTuple):
    """A delivery kept whole (:class:`DeliveryStream` with ``collect=True``)."""

    channel: int
    delivery_tag: int
    redelivered: bool
    routing_key: str
    properties: bytes
    body: bytes


class _Layout(NamedTuple):
    """The bytes of one channel's deliveries that do not change from one to the next."""

    prefix: bytes  # frame header, method id, consumer tag: up to the delivery tag
    redelivered_at: int
    header_at: int  # where the content header frame starts
    # The content header frame and the body frame's header: one per priority seen.
    middles: tuple[bytes, ...]
    length: int  # the whole delivery, method frame to the last frame end
    id_at: int  # where the body (its MESSAGE_ID) starts


class _Channel:
    """Counts for one subscription (one channel)."""

    __slots__ = ("acked", "count", "last_seq", "last_tag", "layout", "pending", "tag_gaps")

    def __init__(self, lanes: int) -> None:
        self.count = 0
        self.last_tag = 0
        self.acked = 0  # the highest tag the consumer has acked
        self.tag_gaps = 0
        self.last_seq = [-1] * lanes  # by publisher * priorities + seq % priorities
        self.layout: _Layout | None = None
        self.pending: _Pending | None = None


class _Pending:
    """A delivery whose content has not all arrived (the frame-by-frame path)."""

    __slots__ = (
        "body_at",
        "body_size",
        "generation",
        "header_at",
        "ids",
        "method_end",
        "parts",
        "properties",
        "redelivered",
        "remaining",
        "routing_key",
        "start",
        "tag",
        "tag_at",
    )

    def __init__(self, start: int, generation: int, tag: int, redelivered: bool) -> None:
        self.start = start
        self.generation = generation
        self.tag = tag
        self.redelivered = redelivered
        self.tag_at = 0
        self.method_end = -1
        self.header_at = -1
        self.body_at = -1
        self.body_size = -1
        self.remaining = 0
        self.ids: tuple[int, ...] = ()
        self.properties = b""
        self.routing_key = ""
        self.parts: list[bytes] = []


class DeliveryStream:
    """Counts and checks the deliveries in what a consumer connection receives.

    :meth:`feed` takes the consumer's receive buffer and the range of unread bytes,
    consumes every whole frame and returns where it stopped.  Methods other than
    basic.deliver are left in :attr:`methods` as ``(channel, payload)`` for the
    caller.  With ``collect=True`` every delivery is also kept whole in
    :attr:`messages` (for latency and request-reply), and the fast path is off.
    With ``priorities`` N, message ``seq`` is taken to carry priority ``seq % N``,
    and the order is checked per publisher and priority.
    """

    def __init__(self, publishers: int, collect: bool = False, priorities: int = 0) -> None:
        self.publishers = publishers
        self.collect = collect
        self.lanes = max(1, priorities)
        self.count = 0
        self.redelivered = 0
        self.duplicates = 0  # a sequence number not above the last from its publisher
        self.foreign = 0  # bodies without a MESSAGE_ID from one of our publishers
        self.id_sum = 0
        self.channels: dict[int, _Channel] = {}
        self.methods: list[tuple[int, bytes]] = []
        self.messages: list[Message] = []
        self._generation = 0
        self._run_structs: dict[tuple[int, int], struct.Struct] = {}

    def channel(self, number: int) -> _Channel:
        state = self.channels.get(number)
        if state is None:
            state = self.channels[number] = _Channel(self.publishers * self.lanes)
        return state

    def feed(self, buffer: bytearray, pos: int, end: int) -> int:
        # Positions remembered from an earlier feed may have moved (the caller compacts).
        self._generation += 1
        channels = self.channels
        while end - pos >= 8:
            state = channels.get(_CHANNEL.unpack_from(buffer, pos + 1)[0])
            if state is not None and state.layout is not None:
                after = self._run(state, state.layout, buffer, pos, end)
                if after != pos:
                    pos = after
                    continue
            frame_type, channel, size = _FRAME_HEADER.unpack_from(buffer, pos)
            frame_end = pos + 7 + size
            if frame_end >= end:
                break
            if buffer[frame_end] != _FRAME_END:
                raise ValueError(f"bad frame end 0x{buffer[frame_end]:02x} from the broker")
            self._frame(frame_type, channel, buffer, pos, frame_end)
            pos = frame_end + 1
        return pos

    # -- the fast path -------------------------------------------------------------------

    def _run(self, state: _Channel, layout: _Layout, buffer: bytearray, pos: int, end: int) -> int:
        """Takes consecutive deliveries that match ``layout``; returns the position after them."""
        prefix, redelivered_at, header_at, middles, length, id_at = layout
        startswith = buffer.startswith
        start = pos
        limit = min(end, pos + length * _MAX_RUN)
        while (
            limit - pos >= length
            and startswith(prefix, pos)
            and not buffer[pos + redelivered_at]
            and startswith(middles, pos + header_at)
            and buffer[pos + length - 1] == _FRAME_END
        ):
            pos += length
        taken = (pos - start) // length
        if not taken:
            return start
        tag_at = redelivered_at - 8
        first = _TAG.unpack_from(buffer, start + tag_at)[0]
        last = _TAG.unpack_from(buffer, pos - length + tag_at)[0]
        if first != state.last_tag + 1 or last - first != taken - 1:
            state.tag_gaps += 1
        state.last_tag = last
        state.count += taken
        self.count += taken
        self._check_run(state, buffer, start + id_at, length, taken)
        return pos

    def _check_run(
        self, state: _Channel, buffer: bytearray, first_id_at: int, stride: int, taken: int
    ) -> None:
        # Checked in power-of-two pieces, so that a few Structs per layout serve any run.
        piece = _MAX_RUN
        while taken:
            while piece > taken:
                piece >>= 1
            self._check_piece(state, buffer, first_id_at, stride, piece)
            first_id_at += piece * stride
            taken -= piece

    def _check_piece(
        self, state: _Channel, buffer: bytearray, first_id_at: int, stride: int, taken: int
    ) -> None:
        key = (stride, taken)
        unpack = self._run_structs.get(key)
        if unpack is None:
            gap = f"{stride - MESSAGE_ID.size}x"
            unpack = struct.Struct(">" + ("IQ" + gap) * (taken - 1) + "IQ")
            self._run_structs[key] = unpack
        values = unpack.unpack_from(buffer, first_id_at)
        publishers = values[0::2]
        seqs = values[1::2]
        self.id_sum += sum(seqs)
        publisher = publishers[0]
        last_seq, lanes = state.last_seq, self.lanes
        # The usual case, one publisher's numbers going up past every number seen from
        # it, is checked at C speed.
        if (
            0 <= publisher < self.publishers
            and publishers.count(publisher) == taken
            and all(map(operator.lt, seqs, seqs[1:]))
        ):
            if lanes == 1:
                if seqs[0] > last_seq[publisher]:
                    last_seq[publisher] = seqs[-1]
                    return
            else:
                first_lane = publisher * lanes
                if seqs[0] > max(last_seq[first_lane : first_lane + lanes]):
                    _advance_lanes(last_seq, first_lane, lanes, seqs)
                    return
        for publisher, seq in zip(publishers, seqs, strict=True):
            self._check_id(state, publisher, seq, False)

    def _check_id(self, state: _Channel, publisher: int, seq: int, redelivered: bool) -> None:
        last_seq = state.last_seq
        if not 0 <= publisher < self.publishers:
            self.foreign += 1
            return
        lane = publisher * self.lanes + seq % self.lanes
        if seq > last_seq[lane]:
            last_seq[lane] = seq
        elif not redelivered:
            self.duplicates += 1

    # -- the frame-by-frame path --------------------------------------------------------

    def _frame(
        self, frame_type: int, channel: int, buffer: bytearray, start: int, frame_end: int
    ) -> None:
        if frame_type == amqp.FRAME_METHOD:
            if _INDEX.unpack_from(buffer, start + 7)[0] == _BASIC_DELIVER:
                self._deliver(channel, buffer, start, frame_end)
            else:
                self.methods.append((channel, bytes(buffer[start + 7 : frame_end])))
        elif frame_type == amqp.FRAME_HEADER:
            pending = self._pending(channel, "content header")
            pending.header_at = start
            pending.body_size = pending.remaining = _TAG.unpack_from(buffer, start + 11)[0]
            pending.properties = bytes(buffer[start + 19 : frame_end])
            if pending.body_size == 0:
                self._complete(channel, pending, buffer)
        elif frame_type == amqp.FRAME_BODY:
            pending = self._pending(channel, "body")
            if pending.body_at < 0:
                pending.body_at = start
                if frame_end - start - 7 >= MESSAGE_ID.size:
                    pending.ids = MESSAGE_ID.unpack_from(buffer, start + 7)
            if self.collect:
                pending.parts.append(bytes(buffer[start + 7 : frame_end]))
            pending.remaining -= frame_end - start - 7
            if pending.remaining <= 0:
                self._complete(channel, pending, buffer)
        elif frame_type != amqp.FRAME_HEARTBEAT:
            raise ValueError(f"unknown frame type {frame_type} from the broker")

    def _deliver(self, channel: int, buffer: bytearray, start: int, frame_end: int) -> None:
        # basic.deliver: consumer-tag, delivery-tag, redelivered, exchange, routing-key.
        tag_at = 12 + buffer[start + 11]
        pending = _Pending(
            start,
            self._generation,
            _TAG.unpack_from(buffer, start + tag_at)[0],
            bool(buffer[start + tag_at + 8] & 1),
        )
        pending.tag_at = tag_at
        pending.method_end = frame_end + 1
        if self.collect:
            exchange_at = start + tag_at + 9
            key_at = exchange_at + 1 + buffer[exchange_at]
            key = bytes(buffer[key_at + 1 : key_at + 1 + buffer[key_at]])
            pending.routing_key = key.decode("utf-8", "surrogateescape")
        state = self.channel(channel)
        if state.pending is not None:
            raise ValueError(f"channel {channel}: basic.deliver before the last one's content")
        state.pending = pending

    def _pending(self, channel: int, what: str) -> _Pending:
        state = self.channels.get(channel)
        if state is None or state.pending is None:
            raise ValueError(f"channel {channel}: {what} frame without a basic.deliver")
        if what == "body" and state.pending.header_at < 0:
            raise ValueError(f"channel {channel}: body frame before the content header")
        return state.pending

    def _complete(self, channel: int, pending: _Pending, buffer: bytearray) -> None:
        state = self.channels[channel]
        state.pending = None
        if pending.tag != state.last_tag + 1:
            state.tag_gaps += 1
        state.last_tag = pending.tag
        state.count += 1
        self.count += 1
        if pending.redelivered:
            self.redelivered += 1
        if pending.ids:
            publisher, seq = pending.ids
            self.id_sum += seq
            self._check_id(state, publisher, seq, pending.redelivered)
        else:
            self.foreign += 1
        if self.collect:
            self.messages.append(
                Message(
                    channel,
                    pending.tag,
                    pending.redelivered,
                    pending.routing_key,
                    pending.properties,
                    b"".join(pending.parts),
                )
            )
        elif (
            not pending.redelivered
            and pending.generation == self._generation
            and pending.ids
            and pending.header_at == pending.method_end
            and pending.body_at > pending.header_at
            and pending.body_at - pending.header_at < 65536
        ):
            self._learn(state, pending, buffer)

    def _learn(self, state: _Channel, pending: _Pending, buffer: bytearray) -> None:
        start = pending.start
        body_size = _FRAME_HEADER.unpack_from(buffer, pending.body_at)[2]
        if body_size != pending.body_size:
            return  # the body came in several frames
        # Right after the content header: nothing else in between.
        header_size = _FRAME_HEADER.unpack_from(buffer, pending.header_at)[2]
        if pending.body_at != pending.header_at + header_size + 8:
            return
        layout = _Layout(
            prefix=bytes(buffer[start : start + pending.tag_at]),
            redelivered_at=pending.tag_at + 8,
            header_at=pending.method_end - start,
            middles=(bytes(buffer[pending.header_at : pending.body_at + 7]),),
            length=pending.body_at + 8 + body_size - start,
            id_at=pending.body_at + 7 - start,
        )
        known = state.layout
        # Deliveries that differ in their header's property values alone (a priority)
        # share a layout, so that cycling priorities stay on the fast path.
        if known is not None and known._replace(middles=layout.middles) == layout:
            if layout.middles[0] in known.middles:
                return
            if len(known.middles) < _MAX_HEADERS:
                layout = known._replace(middles=known.middles + layout.middles)
        state.layout = layout


def _advance_lanes(last_seq: list[int], first_lane: int, lanes: int, seqs: Sequence[int]) -> None:
    """Each lane's last number from a run of rising ``seqs`` above every number seen."""
    found = 0
    for seq in reversed(seqs):
        lane = first_lane + seq % lanes
        if last_seq[lane] < seq:  # the lane's last in the run: later ones came first
            last_seq[lane] = seq
            found += 1
            if found == lanes:
                return
