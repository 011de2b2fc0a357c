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
    "HEARTBEAT_FRAME",
    "PROTOCOL_HEADER",
    "FrameReader",
    "decode_ack",
    "decode_content_header",
    "decode_nack",
    "decode_publish",
    "decode_reject",
    "encode_ack",
    "encode_content",
    "encode_deliver",
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
_TAG_BIT = struct.Struct(">QB")
_DELIVER_TAIL = struct.Struct(">QB")
_ACK = struct.Struct(">BHIIQB")  # frame header, method index, delivery-tag, bits

HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
_DELIVER_ID = b"\x00\x3c\x00\x3c"


class FrameReader:
    """Splits a byte stream into ``(type, channel, payload)`` frames.

    Keeps only the unparsed tail between calls.  ``frame_max`` (the negotiated
    maximum frame size, header and end octet included) may be raised after
    connection.tune-ok.
    """

    __slots__ = ("_buffer", "frame_max")

    def __init__(self, frame_max: int = 131072) -> None:
        self._buffer = b""
        self.frame_max = frame_max

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buffer = self._buffer + data if self._buffer else data
        frames: list[tuple[int, int, bytes]] = []
        append = frames.append
        unpack = _FRAME_HEADER.unpack_from
        size_limit = self.frame_max - 8
        pos = 0
        end_of_data = len(buffer)
        while end_of_data - pos >= 8:
            frame_type, channel, size = unpack(buffer, pos)
            if size > size_limit and self.frame_max:
                raise FrameError(
                    f"frame size {size + 8} larger than negotiated maximum {self.frame_max}"
                )
            end = pos + 7 + size
            if end >= end_of_data:
                break
            if buffer[end] != _FRAME_END:
                raise FrameError(f"invalid frame end marker 0x{buffer[end]:02x} (expected 0xce)")
            if frame_type not in (1, 2, 3, 8):
                raise FrameError(f"unknown frame type {frame_type}")
            append((frame_type, channel, buffer[pos + 7 : end]))
            pos = end + 1
        self._buffer = buffer[pos:] if pos < end_of_data else b""
        return frames

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


def encode_deliver(
    channel: int,
    consumer_tag: bytes,
    delivery_tag: int,
    redelivered: bool,
    exchange: bytes,
    routing_key: bytes,
) -> bytes:
    """A basic.deliver method frame; the strings come already in shortstr form."""
    payload = b"".join(
        (
            _DELIVER_ID,
            consumer_tag,
            _DELIVER_TAIL.pack(delivery_tag, redelivered),
            exchange,
            routing_key,
        )
    )
    return _FRAME_HEADER.pack(FRAME_METHOD, channel, len(payload)) + payload + _END


def encode_ack(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    return _ACK.pack(FRAME_METHOD, channel, 13, BASIC_ACK, delivery_tag, multiple) + _END


def encode_nack(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    return _ACK.pack(FRAME_METHOD, channel, 13, BASIC_NACK, delivery_tag, multiple) + _END
