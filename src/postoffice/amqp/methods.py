"""The generic AMQP 0-9-1 method codec, driven by each method class's ``FIELDS``.

A method frame's payload is class-id (short), method-id (short), then the arguments
in spec order (section 4.2.4).  Consecutive ``bit`` arguments share octets, the
first bit in the least significant position, eight to an octet (section 4.2.5.2).

Errors follow RabbitMQ, whose decoder matches the whole payload against the
method's layout and answers a mismatch with ``frame_error``:

* a payload that is truncated, has trailing bytes, or whose string or table length
  overruns it raises :class:`~postoffice.errors.FrameError` (501);
* a ``shortstr`` that is not valid UTF-8 raises FrameError (501) too, except in the
  content-bearing methods (``basic.publish``, ``basic.return``, ``basic.deliver``,
  ``basic.get-ok``), where RabbitMQ skips the check: there the bytes are kept, each
  invalid byte as a surrogate escape, and re-encode unchanged;
* a table whose contents are malformed raises
  :class:`~postoffice.errors.AMQPSyntaxError` (502), from the table codec;
* an unknown class or method id raises
  :class:`~postoffice.errors.AMQPNotImplemented` (540).  RabbitMQ has no reply for
  this (its reader crashes and drops the socket); 540 is the spec's code for
  "functionality that is not implemented".

``longstr`` arguments decode to bytes.  Decoding is precompiled per method at
import time: fixed-size runs become one :class:`struct.Struct`, bits one octet.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from ..errors import AMQPError, AMQPNotImplemented, FrameError
from ._method_base import Method
from ._spec import FRAME_END, FRAME_METHOD, METHODS
from ._table import Buffer, decode_table_body, encode_shortstr, encode_table

__all__ = ["decode_method", "encode_method", "encode_method_frame"]

_IDS = struct.Struct(">HH")
_FRAME_HEADER = struct.Struct(">BHI")
_FRAME_END = bytes((FRAME_END,))
_LONG = struct.Struct(">I")
_FIXED_FORMATS = {"octet": "B", "short": "H", "long": "I", "longlong": "Q", "timestamp": "Q"}

# Reads the argument(s) at ``pos``, appends their values to ``out``, returns the next pos.
_DecodeStep = Callable[[Buffer, int, int, list[Any]], int]
# Appends the wire form of ``values[i:j]`` (bound in the closure) to ``parts``.
_EncodeStep = Callable[[tuple[Any, ...], list[bytes]], None]


def decode_method(payload: Buffer) -> Method:
    """Decode a method frame's payload into its :class:`Method` instance."""
    if len(payload) < 4:
        raise FrameError(f"method frame payload of {len(payload)} bytes has no method id")
    class_id, method_id = _IDS.unpack_from(payload, 0)
    codec = _CODECS.get((class_id << 16) | method_id)
    if codec is None:
        raise AMQPNotImplemented(
            f"unknown method class {class_id} method {method_id}", class_id, method_id
        )
    return codec.decode(payload)


def encode_method(method: Method) -> bytes:
    """The payload of ``method``'s frame: its ids, then its arguments."""
    codec = _CODECS.get(method.INDEX)
    if codec is None or not isinstance(method, codec.cls):
        raise TypeError(f"not a generated AMQP method: {method!r}")
    return codec.encode(method)


def encode_method_frame(channel: int, method: Method) -> bytes:
    """A whole method frame: type, channel, size, payload, frame-end."""
    payload = encode_method(method)
    try:
        header = _FRAME_HEADER.pack(FRAME_METHOD, channel, len(payload))
    except struct.error as exc:
        raise ValueError(f"bad channel {channel!r}: {exc}") from None
    return header + payload + _FRAME_END


class _MethodCodec:
    """Decoder and encoder for one method class, compiled from its ``FIELDS``."""

    __slots__ = ("_decode_steps", "_encode_steps", "_get_values", "_ids", "cls")

    def __init__(self, cls: type[Method]) -> None:
        self.cls = cls
        self._ids = _IDS.pack(cls.CLASS_ID, cls.METHOD_ID)
        self._decode_steps, self._encode_steps = _compile(cls)
        names = [name for name, _ in cls.FIELDS]
        if not names:
            self._get_values: Callable[[Method], tuple[Any, ...]] = lambda method: ()
        elif len(names) == 1:
            get_one = attrgetter(names[0])
            self._get_values = lambda method: (get_one(method),)
        else:
            self._get_values = attrgetter(*names)

    def decode(self, payload: Buffer) -> Method:
        cls = self.cls
        end = len(payload)
        values: list[Any] = []
        pos = 4
        try:
            for step in self._decode_steps:
                pos = step(payload, pos, end, values)
        except AMQPError as exc:
            # Name the method, as RabbitMQ's close does; the steps only know the field.
            raise type(exc)(f"{cls.NAME}: {exc.text}", cls.CLASS_ID, cls.METHOD_ID) from None
        if pos != end:
            raise FrameError(
                f"{cls.NAME}: {end - pos} unexpected bytes after the arguments",
                cls.CLASS_ID,
                cls.METHOD_ID,
            )
        return cls(*values)

    def encode(self, method: Method) -> bytes:
        values = self._get_values(method)
        parts = [self._ids]
        for step in self._encode_steps:
            step(values, parts)
        return b"".join(parts)


def _compile(cls: type[Method]) -> tuple[tuple[_DecodeStep, ...], tuple[_EncodeStep, ...]]:
    """Group ``cls.FIELDS`` into wire runs and build a decode and an encode step for each."""
    decoders: list[_DecodeStep] = []
    encoders: list[_EncodeStep] = []
    fields = cls.FIELDS
    index = 0
    while index < len(fields):
        amqp_type = fields[index][1]
        if amqp_type in _FIXED_FORMATS or amqp_type == "bit":
            stop = index + 1
            limit = len(fields) if amqp_type != "bit" else min(len(fields), index + 8)
            while stop < limit and _same_run(amqp_type, fields[stop][1]):
                stop += 1
        else:
            stop = index + 1
        names = [name for name, _ in fields[index:stop]]
        if amqp_type == "bit":
            decoders.append(_decode_bits(len(names)))
            encoders.append(_encode_bits(index, stop))
        elif amqp_type in _FIXED_FORMATS:
            layout = struct.Struct(">" + "".join(_FIXED_FORMATS[t] for _, t in fields[index:stop]))
            decoders.append(_decode_fixed(layout, names))
            encoders.append(_encode_fixed(layout, index, stop, names))
        elif amqp_type == "shortstr":
            decoders.append(_decode_shortstr(names[0], lenient=cls.HAS_CONTENT))
            encoders.append(_encode_shortstr(index, names[0]))
        elif amqp_type == "longstr":
            decoders.append(_decode_longstr(names[0]))
            encoders.append(_encode_longstr(index, names[0]))
        elif amqp_type == "table":
            decoders.append(_decode_table(names[0]))
            encoders.append(_encode_table(index))
        else:
            raise ValueError(f"{cls.NAME}: unknown AMQP type {amqp_type!r}")
        index = stop
    return tuple(decoders), tuple(encoders)


def _same_run(first: str, other: str) -> bool:
    if first == "bit":
        return other == "bit"
    return other in _FIXED_FORMATS


def _decode_fixed(layout: struct.Struct, names: list[str]) -> _DecodeStep:
    size, unpack = layout.size, layout.unpack_from
    what = "/".join(names)

    def decode(buf: Buffer, pos: int, end: int, out: list[Any]) -> int:
        if pos + size > end:
            raise FrameError(f"truncated at {what}")
        out.extend(unpack(buf, pos))
        return pos + size

    return decode


def _decode_bits(count: int) -> _DecodeStep:
    masks = tuple(1 << bit for bit in range(count))

    def decode(buf: Buffer, pos: int, end: int, out: list[Any]) -> int:
        if pos >= end:
            raise FrameError("truncated at a bit field")
        octet = buf[pos]
        out.extend([octet & mask != 0 for mask in masks])
        return pos + 1

    return decode


def _decode_shortstr(name: str, *, lenient: bool) -> _DecodeStep:
    errors = "surrogateescape" if lenient else "strict"

    def decode(buf: Buffer, pos: int, end: int, out: list[Any]) -> int:
        if pos >= end:
            raise FrameError(f"truncated at {name}")
        stop = pos + 1 + buf[pos]
        if stop > end:
            raise FrameError(f"{name} length {buf[pos]} overruns the payload")
        try:
            out.append(str(buf[pos + 1 : stop], "utf-8", errors))
        except UnicodeDecodeError:
            raise FrameError(f"malformed UTF-8 in shortstr {name}") from None
        return stop

    return decode


def _length_prefixed(buf: Buffer, pos: int, end: int, name: str) -> tuple[int, int]:
    if pos + 4 > end:
        raise FrameError(f"truncated at {name}")
    stop = pos + 4 + _LONG.unpack_from(buf, pos)[0]
    if stop > end:
        raise FrameError(f"{name} length {stop - pos - 4} overruns the payload")
    return pos + 4, stop


def _decode_longstr(name: str) -> _DecodeStep:
    def decode(buf: Buffer, pos: int, end: int, out: list[Any]) -> int:
        start, stop = _length_prefixed(buf, pos, end, name)
        out.append(bytes(buf[start:stop]))
        return stop

    return decode


def _decode_table(name: str) -> _DecodeStep:
    def decode(buf: Buffer, pos: int, end: int, out: list[Any]) -> int:
        start, stop = _length_prefixed(buf, pos, end, name)
        out.append(decode_table_body(buf, start, stop))
        return stop

    return decode


def _encode_fixed(layout: struct.Struct, first: int, stop: int, names: list[str]) -> _EncodeStep:
    pack = layout.pack

    def encode(values: tuple[Any, ...], parts: list[bytes]) -> None:
        try:
            parts.append(pack(*values[first:stop]))
        except struct.error as exc:
            raise ValueError(f"bad value for {'/'.join(names)}: {exc}") from None

    return encode


def _encode_bits(first: int, stop: int) -> _EncodeStep:
    def encode(values: tuple[Any, ...], parts: list[bytes]) -> None:
        octet = 0
        for bit, value in enumerate(values[first:stop]):
            if value:
                octet |= 1 << bit
        parts.append(bytes((octet,)))

    return encode


def _encode_shortstr(index: int, name: str) -> _EncodeStep:
    def encode(values: tuple[Any, ...], parts: list[bytes]) -> None:
        try:
            parts.append(encode_shortstr(values[index]))
        except TypeError as exc:
            raise TypeError(f"{name}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    return encode


def _encode_longstr(index: int, name: str) -> _EncodeStep:
    def encode(values: tuple[Any, ...], parts: list[bytes]) -> None:
        value = values[index]
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"{name}: a longstr must be bytes, not {type(value).__name__}")
        data = bytes(value)
        parts.append(_LONG.pack(len(data)))
        parts.append(data)

    return encode


def _encode_table(index: int) -> _EncodeStep:
    def encode(values: tuple[Any, ...], parts: list[bytes]) -> None:
        parts.append(encode_table(values[index]))

    return encode


_CODECS: dict[int, _MethodCodec] = {index: _MethodCodec(cls) for index, cls in METHODS.items()}
