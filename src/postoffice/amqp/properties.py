"""Basic content properties: the property flags and list of a content header.

A content header payload is class-id (2), weight (2), body-size (8), then property
flags and the property list (AMQP 0-9-1 section 4.2.6.1).  This module handles that
last part.  Flags come in 16-bit words: bit 15 downward flag the properties in spec
order, and bit 0 says another flag word follows.  Only the present properties are
in the list.

``shortstr`` properties decode to str; bytes that are not UTF-8 (RabbitMQ does not
check these) become surrogate escapes and encode back to the same bytes.
``timestamp`` decodes to a UTC datetime, or to the int when past year 9999.

Malformed input raises :class:`~postoffice.errors.AMQPSyntaxError` (502).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Generic, TypeAlias, TypeVar, overload

from ..errors import AMQPSyntaxError
from ._spec import BASIC_PROPERTIES
from ._table import (
    Buffer,
    datetime_to_timestamp,
    decode_table_body,
    encode_shortstr,
    encode_table,
    encode_table_keeping,
    timestamp_to_datetime,
)

__all__ = ["BasicProperties", "decode_properties", "encode_properties"]

_Decoder: TypeAlias = Callable[[Buffer, int, int], tuple[Any, int]]
_Encoder: TypeAlias = Callable[[Any], bytes]

_FLAGS = struct.Struct(">H")
_LONG = struct.Struct(">I")
_UINT64 = struct.Struct(">Q")
_CONTINUATION = 0x0001
_EMPTY = b"\x00\x00"


def decode_properties(raw: Buffer) -> dict[str, Any]:
    """Decode property flags and list into ``{python_name: value}`` for present properties."""
    end = len(raw)
    if end < 2:
        raise AMQPSyntaxError("content header property flags are truncated")
    flags = _FLAGS.unpack_from(raw, 0)[0]
    pos = 2
    word = flags
    while word & _CONTINUATION:
        if pos + 2 > end:
            raise AMQPSyntaxError("content header property flags are truncated")
        word = _FLAGS.unpack_from(raw, pos)[0]
        pos += 2
        if word & ~_CONTINUATION:
            raise AMQPSyntaxError("property flags set for properties class basic does not have")
    if flags & _UNKNOWN_FLAGS:
        raise AMQPSyntaxError(f"unknown basic property flags 0x{flags & _UNKNOWN_FLAGS:04x}")
    properties: dict[str, Any] = {}
    if flags:
        for name, decode, flag in _DECODERS:
            if flags & flag:
                properties[name], pos = decode(raw, pos, end)
    if pos != end:
        raise AMQPSyntaxError(f"{end - pos} unexpected bytes after the content properties")
    return properties


def encode_properties(
    properties: Mapping[str, Any], encoded: Mapping[str, bytes] | None = None
) -> bytes:
    """Encode property flags and list; keys that are absent or None are left out.

    ``encoded`` gives some values already encoded (used as they are).
    """
    if not properties.keys() <= _NAMES:
        unknown = sorted(set(properties) - _NAMES)
        raise ValueError(f"unknown basic properties: {', '.join(unknown)}")
    flags = 0
    parts = [_EMPTY]
    for name, encode, flag in _ENCODERS:
        value = properties.get(name)
        if value is not None:
            flags |= flag
            if encoded is not None and name in encoded:
                parts.append(encoded[name])
                continue
            try:
                parts.append(encode(value))
            except TypeError as exc:
                raise TypeError(f"property {name}: {exc}") from None
            except ValueError as exc:
                raise ValueError(f"property {name}: {exc}") from None
    parts[0] = _FLAGS.pack(flags)
    return b"".join(parts)


T = TypeVar("T")


_FLAG_OF = {name: flag for name, _type, flag in BASIC_PROPERTIES}
_INSPECT_FLAGS = _FLAG_OF["reply_to"] | _FLAG_OF["user_id"] | _FLAG_OF["expiration"]
_HEADERS_FLAG = _FLAG_OF["headers"]
_DELIVERY_MODE_FLAG = _FLAG_OF["delivery_mode"]
_PRIORITY_FLAG = _FLAG_OF["priority"]
_UNKNOWN: Any = object()
_CONTENT_TYPE_FLAG = _FLAG_OF["content_type"]
_CONTENT_ENCODING_FLAG = _FLAG_OF["content_encoding"]


class _Property(Generic[T]):
    """A BasicProperties attribute, read from the lazily decoded values."""

    __slots__ = ("_flag", "_name")

    def __init__(self) -> None:
        self._name = ""
        self._flag = 0

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name
        self._flag = _FLAG_OF[name]

    @overload
    def __get__(self, instance: None, owner: type) -> _Property[T]: ...
    @overload
    def __get__(self, instance: BasicProperties, owner: type) -> T | None: ...
    def __get__(self, instance: BasicProperties | None, owner: type) -> _Property[T] | T | None:
        if instance is None:
            return self
        if instance._decoded is None:
            # An absent property is told by its flag bit alone: no decoding needed.
            raw = instance._raw
            if len(raw) >= 2 and not (raw[0] << 8 | raw[1]) & self._flag:
                return None
        value: T | None = instance._values().get(self._name)
        return value


class BasicProperties:
    """The properties of one message, decoded only when an attribute is first read.

    ``raw`` is the property flags and list exactly as received, so a broker that
    only forwards the message never decodes them.  An absent property reads as None.
    Decoding errors (:class:`~postoffice.errors.AMQPSyntaxError`) surface on the
    first attribute read; call :meth:`as_dict` to validate eagerly.
    """

    __slots__ = ("_decoded", "_inspect", "_priority", "_raw")
    _priority: Any  # the priority once read; _UNKNOWN before

    content_type: _Property[str] = _Property()
    content_encoding: _Property[str] = _Property()
    headers: _Property[dict[str, Any]] = _Property()
    delivery_mode: _Property[int] = _Property()

    @property
    def priority(self) -> int | None:
        """The priority property, read without decoding the others, and remembered (a
        priority queue asks it of every message, often of the same properties)."""
        priority = self._priority
        if priority is _UNKNOWN:
            priority = self._priority = self._read_priority()
        return priority  # type: ignore[no-any-return]

    def _read_priority(self) -> int | None:
        raw = self._raw
        if self._decoded is not None or len(raw) < 2:
            return self._values().get("priority")
        flags = raw[0] << 8 | raw[1]
        if not flags & _PRIORITY_FLAG:
            return None
        if flags & 1:
            return self._values().get("priority")
        try:
            pos = _past_headers(raw, flags)
            if flags & _DELIVERY_MODE_FLAG:
                pos += 1
            return raw[pos]
        except IndexError:
            return self._values().get("priority")  # decodes, and reports what is malformed

    correlation_id: _Property[str] = _Property()
    reply_to: _Property[str] = _Property()
    expiration: _Property[str] = _Property()
    message_id: _Property[str] = _Property()
    timestamp: _Property[datetime | int] = _Property()
    type: _Property[str] = _Property()
    user_id: _Property[str] = _Property()
    app_id: _Property[str] = _Property()
    cluster_id: _Property[str] = _Property()

    def __init__(self, raw: Buffer = _EMPTY) -> None:
        self._raw = raw if isinstance(raw, bytes) else bytes(raw)
        self._decoded: dict[str, Any] | None = None
        self._inspect: bool | None = None
        self._priority = _UNKNOWN

    @classmethod
    def from_fields(
        cls,
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: Mapping[str, Any] | None = None,
        delivery_mode: int | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        expiration: str | None = None,
        message_id: str | None = None,
        timestamp: datetime | int | None = None,
        type: str | None = None,
        user_id: str | None = None,
        app_id: str | None = None,
        cluster_id: str | None = None,
    ) -> BasicProperties:
        """Build properties from values; None leaves a property out."""
        return cls._from_mapping(
            {
                "content_type": content_type,
                "content_encoding": content_encoding,
                "headers": headers,
                "delivery_mode": delivery_mode,
                "priority": priority,
                "correlation_id": correlation_id,
                "reply_to": reply_to,
                "expiration": expiration,
                "message_id": message_id,
                "timestamp": timestamp,
                "type": type,
                "user_id": user_id,
                "app_id": app_id,
                "cluster_id": cluster_id,
            }
        )

    @classmethod
    def _from_mapping(cls, values: Mapping[str, Any]) -> BasicProperties:
        properties = cls(encode_properties(values))
        # Decode our own encoding once so values read back in their decoded types.
        properties._decoded = decode_properties(properties._raw)
        return properties

    @property
    def raw(self) -> bytes:
        """The property flags and list, as received or encoded."""
        return self._raw

    @property
    def persistent(self) -> bool:
        """delivery_mode == 2, read without decoding the other properties.

        Only the properties before delivery_mode are skipped over (two shortstrs and
        a length-prefixed table); a broker asks this of every message it might store.
        """
        raw = self._raw
        if self._decoded is not None or len(raw) < 2:
            return self.delivery_mode == 2
        flags = raw[0] << 8 | raw[1]
        if not flags & _DELIVERY_MODE_FLAG:
            return False
        if flags & 1:  # a continuation word: rare, take the long way
            return self.delivery_mode == 2
        try:
            return raw[_past_headers(raw, flags)] == 2
        except IndexError:
            return self.delivery_mode == 2  # decodes, and reports what is malformed

    @property
    def inspect_on_publish(self) -> bool:
        """True if reply_to, user_id or expiration is set, or the headers may hold CC or BCC.

        Read from the flag bits and a byte search, without decoding, and remembered:
        a broker asks it of every published message, often of the same properties.
        """
        inspect = self._inspect
        if inspect is None:
            raw = self._raw
            if len(raw) < 2:
                inspect = False
            else:
                flags = raw[0] << 8 | raw[1]
                inspect = bool(flags & _INSPECT_FLAGS) or (
                    bool(flags & _HEADERS_FLAG) and (b"\x02CC" in raw or b"\x03BCC" in raw)
                )
            self._inspect = inspect
        return inspect

    def as_dict(self) -> dict[str, Any]:
        """The present properties as ``{python_name: value}`` (a copy)."""
        return dict(self._values())

    def replace(self, **changes: Any) -> BasicProperties:
        """New properties with ``changes`` applied; a None value removes a property.

        Header values left unchanged keep their bytes (and so their wire types).
        """
        values = {**self._values(), **changes}
        headers = changes.get("headers")
        offset = self._headers_offset() if headers else None
        if headers is None or offset is None:
            return self._from_mapping(values)
        kept = {"headers": encode_table_keeping(headers, self._raw, offset)}
        properties = type(self)(encode_properties(values, kept))
        properties._decoded = decode_properties(properties._raw)
        return properties

    def _headers_offset(self) -> int | None:
        """Where the headers table starts in ``raw``, or None without headers."""
        raw = self._raw
        flags = raw[0] << 8 | raw[1]
        if not flags & _HEADERS_FLAG or flags & 1:
            return None
        return _past_headers(raw, flags & ~_HEADERS_FLAG)

    def _values(self) -> dict[str, Any]:
        if self._decoded is None:
            self._decoded = decode_properties(self._raw)
        return self._decoded

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BasicProperties):
            return NotImplemented
        return self._raw == other._raw or self._values() == other._values()

    def __repr__(self) -> str:
        try:
            fields = ", ".join(f"{name}={value!r}" for name, value in self._values().items())
        except AMQPSyntaxError:
            return f"BasicProperties(<malformed> raw={self._raw!r})"
        return f"BasicProperties({fields})"


def _past_headers(raw: bytes, flags: int) -> int:
    """Where the properties after headers start: past content_type, content_encoding
    (shortstrs) and headers (a length-prefixed table).  IndexError if ``raw`` is short."""
    pos = 2
    if flags & _CONTENT_TYPE_FLAG:
        pos += 1 + raw[pos]
    if flags & _CONTENT_ENCODING_FLAG:
        pos += 1 + raw[pos]
    if flags & _HEADERS_FLAG:
        pos += 4 + int.from_bytes(raw[pos : pos + 4], "big")
    return pos


def _decode_shortstr(buf: Buffer, pos: int, end: int) -> tuple[str, int]:
    if pos >= end:
        raise AMQPSyntaxError("content properties are truncated")
    stop = pos + 1 + buf[pos]
    if stop > end:
        raise AMQPSyntaxError("content property string overruns the header")
    return str(buf[pos + 1 : stop], "utf-8", "surrogateescape"), stop


def _decode_longstr(buf: Buffer, pos: int, end: int) -> tuple[bytes, int]:
    start, stop = _length_prefixed(buf, pos, end)
    return bytes(buf[start:stop]), stop


def _decode_table(buf: Buffer, pos: int, end: int) -> tuple[dict[str, Any], int]:
    start, stop = _length_prefixed(buf, pos, end)
    return decode_table_body(buf, start, stop), stop


def _decode_timestamp(buf: Buffer, pos: int, end: int) -> tuple[datetime | int, int]:
    if pos + 8 > end:
        raise AMQPSyntaxError("content properties are truncated")
    return timestamp_to_datetime(_UINT64.unpack_from(buf, pos)[0]), pos + 8


def _length_prefixed(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    if pos + 4 > end:
        raise AMQPSyntaxError("content properties are truncated")
    stop = pos + 4 + _LONG.unpack_from(buf, pos)[0]
    if stop > end:
        raise AMQPSyntaxError("content property length overruns the header")
    return pos + 4, stop


def _decode_fixed(fmt: str) -> _Decoder:
    layout = struct.Struct(fmt)
    size, unpack = layout.size, layout.unpack_from

    def decode(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
        if pos + size > end:
            raise AMQPSyntaxError("content properties are truncated")
        value: int = unpack(buf, pos)[0]
        return value, pos + size

    return decode


def _encode_fixed(fmt: str) -> _Encoder:
    pack = struct.Struct(fmt).pack

    def encode(value: Any) -> bytes:
        try:
            return pack(value)
        except struct.error as exc:
            raise ValueError(str(exc)) from None

    return encode


def _encode_longstr(value: Any) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"a longstr must be bytes, not {type(value).__name__}")
    return _LONG.pack(len(value)) + bytes(value)


def _encode_timestamp(value: Any) -> bytes:
    if isinstance(value, datetime):
        value = datetime_to_timestamp(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"a timestamp must be a datetime or int, not {type(value).__name__}")
    try:
        return _UINT64.pack(value)
    except struct.error as exc:
        raise ValueError(str(exc)) from None


_CODECS_BY_TYPE: dict[str, tuple[_Decoder, _Encoder]] = {
    "shortstr": (_decode_shortstr, encode_shortstr),
    "longstr": (_decode_longstr, _encode_longstr),
    "table": (_decode_table, encode_table),
    "timestamp": (_decode_timestamp, _encode_timestamp),
    "octet": (_decode_fixed(">B"), _encode_fixed(">B")),
    "short": (_decode_fixed(">H"), _encode_fixed(">H")),
    "long": (_decode_fixed(">I"), _encode_fixed(">I")),
    "longlong": (_decode_fixed(">Q"), _encode_fixed(">Q")),
}
_DECODERS = tuple((name, _CODECS_BY_TYPE[kind][0], flag) for name, kind, flag in BASIC_PROPERTIES)
_ENCODERS = tuple((name, _CODECS_BY_TYPE[kind][1], flag) for name, kind, flag in BASIC_PROPERTIES)
_NAMES = frozenset(name for name, _, _ in BASIC_PROPERTIES)
_UNKNOWN_FLAGS = 0xFFFF & ~_CONTINUATION & ~sum(flag for _, _, flag in BASIC_PROPERTIES)
