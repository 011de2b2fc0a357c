"""The frame layer, and hand-written codecs for the frames every message crosses.

A general codec that turns each frame into objects costs about ten times a message's
whole CPU budget, so the five hot frames (basic.publish, its content header and body,
basic.deliver, basic.ack/nack/reject) are parsed in place and built from cached
bytes here.  Everything else goes through :mod:`postoffice.amqp.methods`.

Sans-IO: :class:`FrameReader` takes bytes and returns frames; the encoders return
bytes.  Malformed input raises :class:`~postoffice.errors.FrameError` (501) or
:class:`~postoffice.errors.AMQPSyntaxError` (502), as RabbitMQ answers.

Strings of the hot frames (exchange, routing key, consumer tag) are decoded as
UTF-8 with ``surrogateescape``: RabbitMQ does not check them, so any bytes a
publisher sends come back to consumers unchanged.
"""

from __future__ import annotations

import struct
from typing import Any

from ..errors import FrameError

__all__ = [
    "BASIC_ACK",
    "BASIC_NACK",
    "BASIC_PUBLISH",
    "BASIC_REJECT",
    "FRAME_BODY",
    "FRAME_HEADER",
    "FRAME_HEARTBEAT",
    "FRAME_METHOD",
    "FRAME_PUBLISH",
    "HEARTBEAT_FRAME",
    "PROTOCOL_HEADER",
    "FrameReader",
    "append_delivery",
    "decode_ack",
    "decode_content_header",
    "decode_nack",
    "decode_publish",
    "decode_reject",
    "deliver_framing",
    "encode_ack",
    "encode_content",
    "encode_frame",
    "encode_nack",
    "method_index",
    "shortstr",
]

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_PUBLISH = 0  # not on the wire: a whole publish (method, header, body) as one event
_FRAME_END = 0xCE
_END = b"\xce"

# (class-id << 16) | method-id of the hot methods.
BASIC_PUBLISH = (60 << 16) | 40
BASIC_ACK = (60 << 16) | 80
BASIC_REJECT = (60 << 16) | 90
BASIC_NACK = (60 << 16) | 120

_FRAME_HEADER = struct.Struct(">BHI")
_HEADER_FRAME_START = struct.Struct(">BHIHHQ")  # frame header, class-id, weight, body-size
_CONTENT_HEADER = struct.Struct(">HHQ")
_INDEX = struct.Struct(">I")
_PUBLISH_ID = b"\x00\x3c\x00\x28"
_TAG_BIT = struct.Struct(">QB")
_DELIVER_TAIL = struct.Struct(">QB")
_ACK = struct.Struct(">BHIIQB")  # frame header, method index, delivery-tag, bits

HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
_DELIVER_ID = b"\x00\x3c\x00\x3c"


class FrameReader:
    """Splits a byte stream into frames, and whole publishes into single events.

    :meth:`feed` returns a list of events.  Most are ``(type, channel, payload)``
    frames.  A basic.publish whose content header and single body frame follow it
    in the same buffer, well formed, comes as one event instead:
    ``(FRAME_PUBLISH, channel, (exchange, routing key, mandatory, immediate),
    properties, body)`` -- the common case, handled with one dispatch rather than
    three.  Anything unusual (a split body, a frame cut by the end of the buffer, a
    malformed header) is left to the frame-by-frame path, which reports errors.

    Keeps only the unparsed tail between calls.  ``frame_max`` (the negotiated
    maximum frame size, header and end octet included) may be changed after
    connection.tune-ok.
    """

    __slots__ = ("_buffer", "_publishes", "frame_max")

    def __init__(self, frame_max: int = 131072) -> None:
        self._buffer = b""
        self.frame_max = frame_max
        # Decoded basic.publish arguments by their wire bytes: publishers repeat them.
        self._publishes: dict[bytes, tuple[str, str, bool, bool]] = {}

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        buffer = self._buffer + data if self._buffer else data
        events: list[tuple[Any, ...]] = []
        append = events.append
        unpack = _FRAME_HEADER.unpack_from
        size_limit = self.frame_max - 8
        pos = 0
        end_of_data = len(buffer)
        while end_of_data - pos >= 8:
            frame_type, channel, size = unpack(buffer, pos)
            if size > size_limit:
                raise FrameError(
                    f"frame size {size + 8} larger than negotiated maximum {self.frame_max}"
                )
            end = pos + 7 + size
            if end >= end_of_data:
                break
            if buffer[end] != _FRAME_END:
                raise FrameError(f"invalid frame end marker 0x{buffer[end]:02x} (expected 0xce)")
            if frame_type == FRAME_METHOD and channel and buffer[pos + 7 : pos + 11] == _PUBLISH_ID:
                whole = self._whole_publish(buffer, pos, end, channel)
                if whole:
                    append(whole[0])
                    pos = whole[1]
                    continue
            elif frame_type not in (1, 2, 3, 8):
                raise FrameError(f"unknown frame type {frame_type}")
            append((frame_type, channel, buffer[pos + 7 : end]))
            pos = end + 1
        self._buffer = buffer[pos:] if pos < end_of_data else b""
        return events

    def _whole_publish(
        self, buffer: bytes, pos: int, end: int, channel: int
    ) -> tuple[tuple[Any, ...], int] | None:
        """A publish event and the position after its body, if all of it is here."""
        header = end + 1
        end_of_data = len(buffer)
        if end_of_data - header < 19:
            return None
        frame_type, header_channel, size, class_id, _weight, body_size = (
            _HEADER_FRAME_START.unpack_from(buffer, header)
        )
        header_end = header + 7 + size
        if (
            frame_type != FRAME_HEADER
            or header_channel != channel
            or class_id != 60
            or size < 14
            or size > self.frame_max - 8
            or header_end >= end_of_data
            or buffer[header_end] != _FRAME_END
        ):
            return None
        body = header_end + 1
        if body_size == 0:
            content = b""
            after = body
        else:
            if end_of_data - body < 8:
                return None
            frame_type, body_channel, size = _FRAME_HEADER.unpack_from(buffer, body)
            body_end = body + 7 + size
            if (
                frame_type != FRAME_BODY
                or body_channel != channel
                or size != body_size
                or size > self.frame_max - 8
                or body_end >= end_of_data
                or buffer[body_end] != _FRAME_END
            ):
                return None
            content = buffer[body + 7 : body_end]
            after = body_end + 1
        method = buffer[pos + 7 : end]
        publish = self._publishes.get(method)
        if publish is None:
            publish = decode_publish(method)
            if len(self._publishes) >= 1024:
                self._publishes.clear()
            self._publishes[method] = publish
        return (FRAME_PUBLISH, channel, publish, buffer[header + 19 : header_end], content), after

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buffer)


def method_index(payload: bytes) -> int:
    """(class-id << 16) | method-id of a method frame's payload."""
    if len(payload) < 4:
        raise FrameError(f"method frame payload of {len(payload)} bytes has no method id")
    index: int = _INDEX.unpack_from(payload, 0)[0]
    return index


def decode_publish(payload: bytes) -> tuple[str, str, bool, bool]:
    """basic.publish: (exchange, routing key, mandatory, immediate)."""
    try:
        n = payload[6]
        pos = 7 + n
        exchange = payload[7:pos].decode("utf-8", "surrogateescape")
        m = payload[pos]
        pos += 1
        routing_key = payload[pos : pos + m].decode("utf-8", "surrogateescape")
        pos += m
        bits = payload[pos]
    except IndexError:
        raise FrameError("basic.publish frame is truncated") from None
    if pos + 1 != len(payload):
        raise FrameError("basic.publish frame has trailing bytes")
    return exchange, routing_key, bool(bits & 1), bool(bits & 2)


def _tag_and_bits(payload: bytes, name: str) -> tuple[int, int]:
    if len(payload) != 13:
        raise FrameError(f"{name} frame has {len(payload)} bytes, expected 13")
    tag: int
    bits: int
    tag, bits = _TAG_BIT.unpack_from(payload, 4)
    return tag, bits


def decode_ack(payload: bytes) -> tuple[int, bool]:
    """basic.ack: (delivery tag, multiple)."""
    tag, bits = _tag_and_bits(payload, "basic.ack")
    return tag, bool(bits & 1)


def decode_nack(payload: bytes) -> tuple[int, bool, bool]:
    """basic.nack: (delivery tag, multiple, requeue)."""
    tag, bits = _tag_and_bits(payload, "basic.nack")
    return tag, bool(bits & 1), bool(bits & 2)


def decode_reject(payload: bytes) -> tuple[int, bool]:
    """basic.reject: (delivery tag, requeue)."""
    tag, bits = _tag_and_bits(payload, "basic.reject")
    return tag, bool(bits & 1)


def decode_content_header(payload: bytes) -> tuple[int, int, bytes]:
    """A content header: (class-id, body size, raw properties: flags and values)."""
    if len(payload) < 14:
        raise FrameError(f"content header of {len(payload)} bytes is truncated")
    class_id, _weight, body_size = _CONTENT_HEADER.unpack_from(payload, 0)
    return class_id, body_size, payload[12:]


def shortstr(text: str) -> bytes:
    """The wire form of a shortstr (length octet, UTF-8 bytes)."""
    data = text.encode("utf-8", "surrogateescape")
    if len(data) > 255:
        raise ValueError(f"shortstr longer than 255 bytes: {text[:40]!r}...")
    return bytes((len(data),)) + data


def encode_frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEADER.pack(frame_type, channel, len(payload)) + payload + _END


def encode_content(channel: int, properties: bytes, body: bytes, frame_max: int) -> list[bytes]:
    """The content header frame and body frames of a message, bodies split at frame_max."""
    size = len(body)
    parts = [
        _HEADER_FRAME_START.pack(FRAME_HEADER, channel, 12 + len(properties), 60, 0, size),
        properties,
        _END,
    ]
    chunk = frame_max - 8 if frame_max else size
    if size <= chunk:
        if size:
            parts.append(_FRAME_HEADER.pack(FRAME_BODY, channel, size))
            parts.append(body)
            parts.append(_END)
        return parts
    view = memoryview(body)
    for start in range(0, size, chunk):
        piece = view[start : start + chunk]
        parts.append(_FRAME_HEADER.pack(FRAME_BODY, channel, len(piece)))
        parts.append(bytes(piece))
        parts.append(_END)
    return parts


def encode_ack(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    return _ACK.pack(FRAME_METHOD, channel, 13, BASIC_ACK, delivery_tag, multiple) + _END


def encode_nack(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    return _ACK.pack(FRAME_METHOD, channel, 13, BASIC_NACK, delivery_tag, multiple) + _END


_BODY_START = struct.Struct(">BBHI")  # the content header's frame-end, then a body frame header


def deliver_framing(
    channel: int, consumer_tag: str, exchange: str, routing_key: str
) -> tuple[bytes, bytes]:
    """The bytes of a basic.deliver frame before and after its delivery-tag and redelivered.

    They are the same for every delivery to one consumer from one exchange and routing
    key, so a server computes them once and keeps them.
    """
    tag, exchange_, routing_key_ = shortstr(consumer_tag), shortstr(exchange), shortstr(routing_key)
    size = 4 + len(tag) + 9 + len(exchange_) + len(routing_key_)
    return (
        _FRAME_HEADER.pack(FRAME_METHOD, channel, size) + _DELIVER_ID + tag,
        exchange_ + routing_key_ + _END,
    )


def append_delivery(
    out: list[bytes],
    channel: int,
    framing: tuple[bytes, bytes],
    delivery_tag: int,
    redelivered: bool,
    properties: bytes,
    body: bytes,
    frame_max: int,
) -> None:
    """Appends the frames of one basic.deliver with its content to ``out``."""
    size = len(body)
    out.append(framing[0])
    out.append(_DELIVER_TAIL.pack(delivery_tag, redelivered))
    out.append(framing[1])
    if 0 < size <= frame_max - 8:
        out.append(
            _HEADER_FRAME_START.pack(FRAME_HEADER, channel, 12 + len(properties), 60, 0, size)
        )
        out.append(properties)
        out.append(_BODY_START.pack(_FRAME_END, FRAME_BODY, channel, size))
        out.append(body)
        out.append(_END)
    else:
        out.extend(encode_content(channel, properties, body, frame_max))
