"""AMQP 0-9-1 field tables and arrays (sections 4.2.1, 4.2.5.5), with RabbitMQ's types.

Wire types, as RabbitMQ's ``rabbit_binary_parser`` reads them, and what they decode to:

====  =====================================  ===========================================
tag   wire                                   Python
====  =====================================  ===========================================
t     octet, non-zero is true                bool
b B   int8 / uint8                           int
s u   int16 / uint16                         int
I i   int32 / uint32                         int
l L   int64 (RabbitMQ reads both signed)     int
f d   float32 / float64                      float
D     scale octet + int32                    decimal.Decimal
S     longstr                                str, or bytes when not valid UTF-8
x     longstr                                bytes
A     array                                  list
F     table                                  dict
T     uint64 seconds since the epoch         datetime (UTC), or int past year 9999
V     nothing                                None
====  =====================================  ===========================================

Encoding picks one tag per Python type: bool ``t``; int the smallest of ``b s I l``
that holds it; float ``d``; Decimal ``D``; str ``S``; bytes-like ``x``; list and
tuple ``A``; mapping ``F``; datetime ``T`` (naive means UTC); None ``V``.  So
``decode(encode(x)) == x`` for those types, while a decoded table re-encodes with
canonical tags (the broker forwards message headers as raw bytes, never re-encoded).

A decimal's value is signed here, as in the Java, .NET and pika clients;
RabbitMQ itself reads it unsigned.  Timestamps too large for ``datetime`` (clients
that put milliseconds there) decode to the plain int rather than failing.

Malformed input raises :class:`~postoffice.errors.AMQPSyntaxError`; a value that
cannot be encoded raises ValueError or TypeError (a bug in the caller, not the peer).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeAlias

from ..errors import AMQPSyntaxError

__all__ = [
    "MAX_DEPTH",
    "datetime_to_timestamp",
    "decode_array",
    "decode_table",
    "decode_table_body",
    "encode_array",
    "encode_shortstr",
    "encode_table",
    "encode_table_keeping",
    "encode_value",
    "timestamp_to_datetime",
]

MAX_DEPTH = 100
"""Deepest nesting of tables and arrays accepted, so hostile input cannot recurse far."""

Buffer: TypeAlias = bytes | bytearray | memoryview
_Decoder: TypeAlias = Callable[[Buffer, int, int, int], tuple[Any, int]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TIMESTAMP = (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH) // timedelta(seconds=1)
_ONE_SECOND = timedelta(seconds=1)

_LONG = struct.Struct(">I")
_unpack_long = _LONG.unpack_from
_pack_long = _LONG.pack
_DECIMAL = struct.Struct(">Bi")
_pack_int8 = struct.Struct(">b").pack
_pack_int16 = struct.Struct(">h").pack
_pack_int32 = struct.Struct(">i").pack
_pack_int64 = struct.Struct(">q").pack
_pack_uint64 = struct.Struct(">Q").pack
_pack_double = struct.Struct(">d").pack


def _truncated(what: str) -> AMQPSyntaxError:
    return AMQPSyntaxError(f"{what} is truncated")


# -- decoding -------------------------------------------------------------------------


def decode_table(buf: Buffer, offset: int) -> tuple[dict[str, Any], int]:
    """Decode the field table whose 4-byte length prefix starts at ``offset``.

    Returns the table and the offset just past it.
    """
    start, stop = _span(buf, offset, len(buf), "field table")
    return decode_table_body(buf, start, stop), stop


def decode_array(buf: Buffer, offset: int) -> tuple[list[Any], int]:
    """Decode the field array whose 4-byte length prefix starts at ``offset``."""
    start, stop = _span(buf, offset, len(buf), "field array")
    return _decode_items(buf, start, stop, 0), stop


def decode_table_body(buf: Buffer, start: int, stop: int, depth: int = 0) -> dict[str, Any]:
    """Decode the table entries in ``buf[start:stop]`` (no length prefix)."""
    if depth > MAX_DEPTH:
        raise AMQPSyntaxError(f"field table nested deeper than {MAX_DEPTH}")
    table: dict[str, Any] = {}
    pos = start
    while pos < stop:
        key_end = pos + 1 + buf[pos]
        if key_end >= stop:
            raise _truncated("field table entry")
        try:
            key = str(buf[pos + 1 : key_end], "utf-8")
        except UnicodeDecodeError:
            raise AMQPSyntaxError("field table key is not valid UTF-8") from None
        decoder = _DECODERS.get(buf[key_end])
        if decoder is None:
            raise AMQPSyntaxError(f"unknown field type {chr(buf[key_end])!r} for key {key!r}")
        table[key], pos = decoder(buf, key_end + 1, stop, depth)
    return table


def _decode_items(buf: Buffer, start: int, stop: int, depth: int) -> list[Any]:
    if depth > MAX_DEPTH:
        raise AMQPSyntaxError(f"field array nested deeper than {MAX_DEPTH}")
    items: list[Any] = []
    append = items.append
    pos = start
    while pos < stop:
        decoder = _DECODERS.get(buf[pos])
        if decoder is None:
            raise AMQPSyntaxError(f"unknown field type {chr(buf[pos])!r} in field array")
        value, pos = decoder(buf, pos + 1, stop, depth)
        append(value)
    return items


def _span(buf: Buffer, pos: int, stop: int, what: str) -> tuple[int, int]:
    """Read a 4-byte length at ``pos``; return where the value starts and ends."""
    start = pos + 4
    if start > stop:
        raise _truncated(f"{what} length")
    end = start + _unpack_long(buf, pos)[0]
    if end > stop:
        raise AMQPSyntaxError(f"{what} length {end - start} exceeds the {stop - start} bytes left")
    return start, end


def _fixed(fmt: str, what: str) -> _Decoder:
    layout = struct.Struct(fmt)
    size, unpack = layout.size, layout.unpack_from

    def decode(buf: Buffer, pos: int, stop: int, depth: int) -> tuple[Any, int]:
        end = pos + size
        if end > stop:
            raise _truncated(what)
        return unpack(buf, pos)[0], end

    return decode


def _decode_bool(buf: Buffer, pos: int, stop: int, depth: int) -> tuple[bool, int]:
    if pos >= stop:
        raise _truncated("boolean field")
    return buf[pos] != 0, pos + 1


def _decode_decimal(buf: Buffer, pos: int, stop: int, depth: int) -> tuple[Decimal, int]:
    if pos + 5 > stop:
        raise _truncated("decimal field")
    scale, value = _DECIMAL.unpack_from(buf, pos)
    # Built from a string so that the value is exact whatever the decimal context.
    return Decimal(f"{value}E-{scale}"), pos + 5


def _decode_longstr(buf: Buffer, pos: int, stop: int, depth: int) -> tuple[str | bytes, int]:
    start, end = _span(buf, pos, stop, "string field")
    try:
        return str(buf[start:end], "utf-8"), end
    except UnicodeDecodeError:
        return bytes(buf[start:end]), end


def _decode_bytes(buf: Buffer, pos: int, stop: int, depth: int) -> tuple[bytes, int]:
    start, end = _span(buf, pos, stop, "byte array field")
    return bytes(buf[start:end]), end


def _decode_timestamp(buf: Buffer, pos: int, stop: int, depth: int) -> tuple[datetime | int, int]:
    if pos + 8 > stop:
        raise _truncated("timestamp field")
    seconds: int = struct.unpack_from(">Q", buf, pos)[0]
    return timestamp_to_datetime(seconds), pos + 8


def timestamp_to_datetime(seconds: int) -> datetime | int:
    """An AMQP timestamp as a UTC datetime, or the int itself past year 9999."""
    if seconds > _MAX_TIMESTAMP:
        return seconds
    return _EPOCH + timedelta(seconds=seconds)


def _decode_nested_table(
    buf: Buffer, pos: int, stop: int, depth: int
) -> tuple[dict[str, Any], int]:
    start, end = _span(buf, pos, stop, "nested field table")
    return decode_table_body(buf, start, end, depth + 1), end


def _decode_nested_array(buf: Buffer, pos: int, stop: int, depth: int) -> tuple[list[Any], int]:
    start, end = _span(buf, pos, stop, "field array")
    return _decode_items(buf, start, end, depth + 1), end


def _decode_void(buf: Buffer, pos: int, stop: int, depth: int) -> tuple[None, int]:
    return None, pos


_DECODERS: dict[int, _Decoder] = {
    ord("t"): _decode_bool,
    ord("b"): _fixed(">b", "int8 field"),
    ord("B"): _fixed(">B", "uint8 field"),
    ord("s"): _fixed(">h", "int16 field"),
    ord("u"): _fixed(">H", "uint16 field"),
    ord("I"): _fixed(">i", "int32 field"),
    ord("i"): _fixed(">I", "uint32 field"),
    ord("l"): _fixed(">q", "int64 field"),
    ord("L"): _fixed(">q", "int64 field"),
    ord("f"): _fixed(">f", "float field"),
    ord("d"): _fixed(">d", "double field"),
    ord("D"): _decode_decimal,
    ord("S"): _decode_longstr,
    ord("x"): _decode_bytes,
    ord("T"): _decode_timestamp,
    ord("F"): _decode_nested_table,
    ord("A"): _decode_nested_array,
    ord("V"): _decode_void,
}


# -- encoding -------------------------------------------------------------------------


def encode_table(table: Mapping[str, Any] | None) -> bytes:
    """Encode a field table with its 4-byte length prefix; None is the empty table."""
    if not table:
        return b"\x00\x00\x00\x00"
    parts: list[bytes] = []
    _encode_entries(table, parts, 0)
    body = b"".join(parts)
    return _pack_long(len(body)) + body


def encode_array(items: list[Any] | tuple[Any, ...]) -> bytes:
    """Encode a field array with its 4-byte length prefix."""
    parts: list[bytes] = []
    for item in items:
        _encode_value(item, parts, 0)
    body = b"".join(parts)
    return _pack_long(len(body)) + body


def encode_value(value: Any) -> bytes:
    """Encode one field value: its type tag, then the value."""
    parts: list[bytes] = []
    _encode_value(value, parts, 0)
    return b"".join(parts)


def encode_table_keeping(table: Mapping[str, Any], old: Buffer, offset: int) -> bytes:
    """Encode ``table``, copying byte for byte each entry whose value is unchanged
    from the table at ``old[offset:]``, so its wire type survives an edit (an int32
    header stays int32 after the broker adds or removes another header)."""
    start, stop = _span(old, offset, len(old), "field table")
    kept: dict[str, tuple[Any, bytes]] = {}
    pos = start
    while pos < stop:
        key_end = pos + 1 + old[pos]
        key = str(old[pos + 1 : key_end], "utf-8")
        value, end = _DECODERS[old[key_end]](old, key_end + 1, stop, 0)
        kept[key] = (value, bytes(old[pos:end]))
        pos = end
    parts: list[bytes] = []
    for key, value in table.items():
        previous = kept.get(key)
        if previous is not None and type(previous[0]) is type(value) and previous[0] == value:
            parts.append(previous[1])
        else:
            _encode_entries({key: value}, parts, 0)
    body = b"".join(parts)
    return _pack_long(len(body)) + body


def encode_shortstr(text: str) -> bytes:
    """A shortstr with its length octet; surrogate escapes turn back into their bytes."""
    if not isinstance(text, str):
        raise TypeError(f"a shortstr must be str, not {type(text).__name__}")
    data = text.encode("utf-8", "surrogateescape")
    if len(data) > 255:
        raise ValueError(f"shortstr is {len(data)} bytes long, more than 255: {text[:40]!r}...")
    return bytes((len(data),)) + data


def _encode_entries(table: Mapping[str, Any], parts: list[bytes], depth: int) -> None:
    for key, value in table.items():
        if not isinstance(key, str):
            raise TypeError(f"field table keys must be str, not {type(key).__name__}")
        data = key.encode("utf-8")
        if len(data) > 255:
            raise ValueError(f"field table key longer than 255 bytes: {key[:40]!r}...")
        parts.append(bytes((len(data),)))
        parts.append(data)
        _encode_value(value, parts, depth)


def _encode_value(value: Any, parts: list[bytes], depth: int) -> None:
    kind = type(value)
    if kind is str:
        data = value.encode("utf-8")
        parts.append(b"S" + _pack_long(len(data)))
        parts.append(data)
    elif kind is bool:
        parts.append(b"t\x01" if value else b"t\x00")
    elif kind is int:
        parts.append(_encode_int(value))
    elif isinstance(value, bool):
        parts.append(b"t\x01" if value else b"t\x00")
    elif isinstance(value, int):
        # An int subclass may ask for 64 bits (``field_type = "l"``), as RabbitMQ
        # writes x-death counts: Java clients read them as Long.
        if getattr(value, "field_type", None) == "l":
            parts.append(b"l" + _pack_int64(value))
        else:
            parts.append(_encode_int(int(value)))
    elif isinstance(value, str):
        _encode_value(str(value), parts, depth)
    elif isinstance(value, float):
        parts.append(b"d" + _pack_double(value))
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        parts.append(b"x" + _pack_long(len(data)))
        parts.append(data)
    elif isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            raise ValueError(f"field table nested deeper than {MAX_DEPTH}")
        nested: list[bytes] = []
        _encode_entries(value, nested, depth + 1)
        body = b"".join(nested)
        parts.append(b"F" + _pack_long(len(body)))
        parts.append(body)
    elif isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            raise ValueError(f"field array nested deeper than {MAX_DEPTH}")
        nested = []
        for item in value:
            _encode_value(item, nested, depth + 1)
        body = b"".join(nested)
        parts.append(b"A" + _pack_long(len(body)))
        parts.append(body)
    elif value is None:
        parts.append(b"V")
    elif isinstance(value, datetime):
        parts.append(b"T" + _pack_uint64(datetime_to_timestamp(value)))
    elif isinstance(value, Decimal):
        parts.append(b"D" + _encode_decimal(value))
    else:
        raise TypeError(f"cannot encode {type(value).__name__} in a field table")


def _encode_int(value: int) -> bytes:
    if -0x80 <= value < 0x80:
        return b"b" + _pack_int8(value)
    if -0x8000 <= value < 0x8000:
        return b"s" + _pack_int16(value)
    if -0x8000_0000 <= value < 0x8000_0000:
        return b"I" + _pack_int32(value)
    if -0x8000_0000_0000_0000 <= value < 0x8000_0000_0000_0000:
        return b"l" + _pack_int64(value)
    raise ValueError(f"integer {value} does not fit in a signed 64-bit field")


def _encode_decimal(value: Decimal) -> bytes:
    if not value.is_finite():
        raise ValueError(f"cannot encode the non-finite decimal {value}")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite, so never 'n', 'N' or 'F'
    unscaled = int("".join(map(str, digits)) or "0")
    if sign:
        unscaled = -unscaled
    if exponent > 0:
        unscaled *= 10**exponent
        exponent = 0
    if -exponent > 255 or not -0x8000_0000 <= unscaled < 0x8000_0000:
        raise ValueError(f"decimal {value} needs more than a scale octet and a 32-bit value")
    return _DECIMAL.pack(-exponent, unscaled)


def datetime_to_timestamp(value: datetime) -> int:
    """Whole seconds since the epoch; a naive datetime is taken to be UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = (value - _EPOCH) // _ONE_SECOND
    if seconds < 0:
        raise ValueError(f"timestamp {value} is before 1970")
    return seconds
