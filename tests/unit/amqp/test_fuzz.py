"""Any bytes given to a decoder give a value or an AMQPError, never another exception."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from amqp_strategies import methods_of, property_dicts, tables
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.amqp import (
    METHODS,
    decode_method,
    decode_properties,
    decode_table,
    encode_method,
    encode_properties,
    encode_table,
)
from postoffice.errors import AMQPError

ALL_METHODS = sorted(METHODS.values(), key=lambda cls: cls.INDEX)


def survives(decode: Callable[[bytes], Any], data: bytes) -> None:
    try:
        decode(data)
    except AMQPError:
        pass


def decode_table_at_0(data: bytes) -> Any:
    return decode_table(data, 0)


DECODERS = {
    "method": decode_method,
    "table": decode_table_at_0,
    "properties": decode_properties,
}


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes], keep: int = 0) -> bytes:
    """A valid encoding with a few bytes flipped, cut, inserted or deleted after ``keep``."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(min(keep, len(data)), len(data)))
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        if action == "flip" and position < len(data):
            data[position] ^= draw(st.integers(1, 255))
        elif action == "truncate":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        elif action == "overwrite" and position < len(data):
            data[position] = draw(st.sampled_from(b"\x00\x01\x7f\x80\xff"))
    return bytes(data)


method_payloads = st.sampled_from(ALL_METHODS).flatmap(methods_of).map(encode_method)
known_id_garbage = st.builds(
    lambda cls, tail: encode_method(cls())[:4] + tail,
    st.sampled_from(ALL_METHODS),
    st.binary(max_size=64),
)
table_encodings = tables.map(encode_table)
property_encodings = property_dicts.map(encode_properties)


@settings(max_examples=300)
@given(st.sampled_from(sorted(DECODERS)), st.binary(max_size=200))
def test_random_bytes(decoder: str, data: bytes) -> None:
    survives(DECODERS[decoder], data)


@settings(max_examples=300)
@given(known_id_garbage)
def test_random_arguments_for_known_methods(data: bytes) -> None:
    survives(decode_method, data)


@settings(max_examples=400)
@given(mutated(method_payloads, keep=4))
def test_mutated_methods(data: bytes) -> None:
    survives(decode_method, data)


@settings(max_examples=200)
@given(mutated(table_encodings))
def test_mutated_tables(data: bytes) -> None:
    survives(decode_table_at_0, data)


@settings(max_examples=200)
@given(mutated(property_encodings))
def test_mutated_properties(data: bytes) -> None:
    survives(decode_properties, data)
