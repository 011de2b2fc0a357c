"""A small, lossless binary encoding of definition records and their arguments.

Arguments are whatever a client put in a field table, as the codec decoded it (None,
bool, int, float, Decimal, str, bytes, datetime, lists, dicts) plus the tuples of
frozen binding arguments; each value is a one-byte tag and its bytes, so a record read
back compares equal to the one written (a list stays a list, a tuple a tuple).  The
store does not import the AMQP codec: its tags would merge list and tuple.
"""

from __future__ import annotations

import struct
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..records import BindingRecord, ExchangeRecord, QueueRecord, Record

__all__ = ["CodecError", "decode_record", "encode_record"]

MAX_DEPTH = 100

_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")


class CodecError(ValueError):
    """Bytes that do not decode (only reachable with a CRC collision or a bug)."""


def encode_record(record: Record) -> bytes:
    if isinstance(record, ExchangeRecord):
        value: tuple[Any, ...] = (
            "exchange",
            record.vhost,
            record.name,
            record.type,
            record.auto_delete,
            record.internal,
            record.arguments,
        )
    elif isinstance(record, QueueRecord):
        value = ("queue", record.vhost, record.name, record.auto_delete, record.arguments)
    else:
        value = (
            "binding",
            record.vhost,
            record.source,
            record.destination,
            record.destination_is_queue,
            record.routing_key,
            record.arguments,
        )
    parts: list[bytes] = []
    _encode(value, parts, 0)
    return b"".join(parts)


def decode_record(data: bytes, start: int = 0) -> Record:
    try:
        value, end = _decode(data, start, 0)
        if end != len(data) or not isinstance(value, tuple) or not value:
            raise CodecError("not a record")
        kind, *fields = value
        if kind == "exchange":
            vhost, name, type_, auto_delete, internal, arguments = fields
            return ExchangeRecord(vhost, name, type_, auto_delete, internal, arguments)
        if kind == "queue":
            vhost, name, auto_delete, arguments = fields
            return QueueRecord(vhost, name, auto_delete, arguments)
        if kind == "binding":
            vhost, source, destination, is_queue, routing_key, arguments = fields
            return BindingRecord(vhost, source, destination, is_queue, routing_key, arguments)
    except (ValueError, TypeError, IndexError, struct.error) as exc:
        raise CodecError(str(exc)) from exc
    raise CodecError(f"unknown record kind {kind!r}")


def _encode(value: Any, parts: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("arguments nested too deeply to store")
    if value is None:
        parts.append(b"N")
    elif value is True:
        parts.append(b"T")
    elif value is False:
        parts.append(b"F")
    elif isinstance(value, int):
        raw = value.to_bytes((value.bit_length() + 8) // 8 or 1, "little", signed=True)
        parts += (b"i", _U32.pack(len(raw)), raw)
    elif isinstance(value, float):
        parts += (b"f", _F64.pack(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        parts += (b"s", _U32.pack(len(raw)), raw)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        parts += (b"b", _U32.pack(len(raw)), raw)
    elif isinstance(value, Decimal):
        raw = str(value).encode()
        parts += (b"D", _U32.pack(len(raw)), raw)
    elif isinstance(value, datetime):
        raw = value.isoformat().encode()
        parts += (b"t", _U32.pack(len(raw)), raw)
    elif isinstance(value, list | tuple):
        parts += (b"l" if isinstance(value, list) else b"u", _U32.pack(len(value)))
        for item in value:
            _encode(item, parts, depth + 1)
    elif isinstance(value, dict):
        parts += (b"m", _U32.pack(len(value)))
        for key, item in value.items():
            _encode(key, parts, depth + 1)
            _encode(item, parts, depth + 1)
    else:
        raise TypeError(f"cannot store a {type(value).__name__} in a definition")


_SIMPLE = {ord("N"): None, ord("T"): True, ord("F"): False}


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise CodecError("nested too deeply")
    tag = data[pos]
    pos += 1
    if tag in _SIMPLE:
        return _SIMPLE[tag], pos
    if tag == ord("f"):
        return _F64.unpack_from(data, pos)[0], pos + 8
    (size,) = _U32.unpack_from(data, pos)
    pos += 4
    if tag in _CONTAINERS:
        return _CONTAINERS[tag](data, pos, size, depth)
    end = pos + size
    if end > len(data):
        raise CodecError("value runs past its record")
    raw = data[pos:end]
    if tag == ord("i"):
        return int.from_bytes(raw, "little", signed=True), end
    if tag == ord("s"):
        return raw.decode("utf-8", "surrogatepass"), end
    if tag == ord("b"):
        return raw, end
    if tag == ord("D"):
        return Decimal(raw.decode()), end
    if tag == ord("t"):
        return datetime.fromisoformat(raw.decode()), end
    raise CodecError(f"unknown value tag {tag}")


def _decode_items(data: bytes, pos: int, count: int, depth: int) -> tuple[list[Any], int]:
    if count > len(data) - pos:
        raise CodecError("more items than bytes")
    items = []
    for _ in range(count):
        item, pos = _decode(data, pos, depth + 1)
        items.append(item)
    return items, pos


def _decode_list(data: bytes, pos: int, count: int, depth: int) -> tuple[Any, int]:
    return _decode_items(data, pos, count, depth)


def _decode_tuple(data: bytes, pos: int, count: int, depth: int) -> tuple[Any, int]:
    items, pos = _decode_items(data, pos, count, depth)
    return tuple(items), pos


def _decode_dict(data: bytes, pos: int, count: int, depth: int) -> tuple[Any, int]:
    items, pos = _decode_items(data, pos, 2 * count, depth)
    return dict(zip(items[::2], items[1::2], strict=True)), pos


_CONTAINERS = {ord("l"): _decode_list, ord("u"): _decode_tuple, ord("m"): _decode_dict}
