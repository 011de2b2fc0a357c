from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from amqp_strategies import field_values, tables
from hypothesis import given, settings

from postoffice.amqp import decode_array, decode_table, encode_array, encode_table, encode_value
from postoffice.amqp._table import MAX_DEPTH
from postoffice.errors import AMQPSyntaxError


def entry(key: bytes, tag: bytes, payload: bytes) -> bytes:
    return bytes((len(key),)) + key + tag + payload


def table(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack(">I", len(body)) + body


def decode_one(tag: bytes, payload: bytes) -> Any:
    decoded, _ = decode_table(table(entry(b"k", tag, payload)), 0)
    return decoded["k"]


@pytest.mark.parametrize(
    ("tag", "payload", "expected"),
    [
        (b"t", b"\x00", False),
        (b"t", b"\x02", True),
        (b"b", b"\xff", -1),
        (b"B", b"\xff", 255),
        (b"s", b"\xff\xfe", -2),
        (b"u", b"\xff\xfe", 65534),
        (b"I", b"\xff\xff\xff\xfd", -3),
        (b"i", b"\xff\xff\xff\xfd", 2**32 - 3),
        (b"l", b"\xff" * 8, -1),
        (b"L", b"\xff" * 8, -1),
        (b"f", struct.pack(">f", 1.5), 1.5),
        (b"d", struct.pack(">d", -2.25), -2.25),
        (b"D", b"\x02\x00\x00\x04\xd2", Decimal("12.34")),
        (b"D", b"\x00\xff\xff\xff\xff", Decimal(-1)),
        (b"S", b"\x00\x00\x00\x03caf", "caf"),
        (b"S", b"\x00\x00\x00\x02\xc3\xa9", "\u00e9"),
        (b"S", b"\x00\x00\x00\x02\xff\xfe", b"\xff\xfe"),
        (b"x", b"\x00\x00\x00\x02ab", b"ab"),
        (b"T", b"\x00\x00\x00\x00\x00\x00\x00\x3c", datetime(1970, 1, 1, 0, 1, tzinfo=UTC)),
        (b"V", b"", None),
        (b"A", b"\x00\x00\x00\x04b\x01t\x01", [1, True]),
        (b"A", b"\x00\x00\x00\x00", []),
        (b"F", b"\x00\x00\x00\x03\x01aV", {"a": None}),
    ],
)
def test_decodes_every_field_type(tag: bytes, payload: bytes, expected: Any) -> None:
    value = decode_one(tag, payload)
    assert value == expected
    assert type(value) is type(expected)


def test_decoded_timestamp_is_utc_aware() -> None:
    value = decode_one(b"T", struct.pack(">Q", 1_700_000_000))
    assert value == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert value.tzinfo is UTC


def test_timestamp_past_year_9999_stays_an_int() -> None:
    milliseconds = 1_700_000_000_000
    assert decode_one(b"T", struct.pack(">Q", milliseconds)) == milliseconds


def test_decode_table_returns_the_offset_after_it() -> None:
    encoded = table(entry(b"a", b"b", b"\x01"), entry(b"b", b"S", b"\x00\x00\x00\x01x"))
    buf = b"junk" + encoded + b"rest"
    assert decode_table(buf, 4) == ({"a": 1, "b": "x"}, 4 + len(encoded))
    assert decode_table(memoryview(buf), 4) == ({"a": 1, "b": "x"}, 4 + len(encoded))


def test_decode_array() -> None:
    assert decode_array(b"\x00\x00\x00\x03b\x05V", 0) == ([5, None], 7)


def test_later_duplicate_key_wins() -> None:
    encoded = table(entry(b"a", b"b", b"\x01"), entry(b"a", b"b", b"\x02"))
    assert decode_table(encoded, 0) == ({"a": 2}, len(encoded))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, b"t\x01"),
        (False, b"t\x00"),
        (0, b"b\x00"),
        (-128, b"b\x80"),
        (127, b"b\x7f"),
        (128, b"s\x00\x80"),
        (-129, b"s\xff\x7f"),
        (32767, b"s\x7f\xff"),
        (32768, b"I\x00\x00\x80\x00"),
        (2**31 - 1, b"I\x7f\xff\xff\xff"),
        (-(2**31), b"I\x80\x00\x00\x00"),
        (2**31, b"l\x00\x00\x00\x00\x80\x00\x00\x00"),
        (-(2**63), b"l\x80" + b"\x00" * 7),
        (1.5, b"d" + struct.pack(">d", 1.5)),
        (Decimal("12.34"), b"D\x02\x00\x00\x04\xd2"),
        (Decimal("-0.5"), b"D\x01\xff\xff\xff\xfb"),
        (Decimal("1E+3"), b"D\x00\x00\x00\x03\xe8"),
        ("\u00e9", b"S\x00\x00\x00\x02\xc3\xa9"),
        (b"ab", b"x\x00\x00\x00\x02ab"),
        (bytearray(b"ab"), b"x\x00\x00\x00\x02ab"),
        (memoryview(b"ab"), b"x\x00\x00\x00\x02ab"),
        ([1, None], b"A\x00\x00\x00\x03b\x01V"),
        ((1, None), b"A\x00\x00\x00\x03b\x01V"),
        ({"a": None}, b"F\x00\x00\x00\x03\x01aV"),
        (datetime(1970, 1, 1, 0, 1, tzinfo=UTC), b"T" + struct.pack(">Q", 60)),
        (datetime(1970, 1, 1, 0, 1), b"T" + struct.pack(">Q", 60)),
        (
            datetime(1970, 1, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
            b"T" + struct.pack(">Q", 60),
        ),
        (None, b"V"),
    ],
)
def test_encoding_picks_the_canonical_type(value: Any, expected: bytes) -> None:
    assert encode_value(value) == expected


def test_encode_empty_and_none_table() -> None:
    assert encode_table(None) == b"\x00\x00\x00\x00"
    assert encode_table({}) == b"\x00\x00\x00\x00"
    assert encode_array([]) == b"\x00\x00\x00\x00"


def test_encode_table_layout() -> None:
    assert encode_table({"ab": 1}) == b"\x00\x00\x00\x05\x02abb\x01"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (2**63, ValueError),
        (-(2**63) - 1, ValueError),
        (Decimal("NaN"), ValueError),
        (Decimal("Infinity"), ValueError),
        (Decimal(2**31), ValueError),
        (Decimal("1E-256"), ValueError),
        (datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), ValueError),
        ({"k" * 256: 1}, ValueError),
        ({1: 1}, TypeError),
        (object(), TypeError),
        ({1, 2}, TypeError),
        ("\ud800", ValueError),
    ],
)
def test_encode_rejects_what_cannot_be_represented(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_value(value)


def test_encode_rejects_cycles_and_deep_nesting() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(ValueError, match="nested deeper"):
        encode_table(cyclic)
    nested: list[Any] = []
    for _ in range(MAX_DEPTH + 2):
        nested = [nested]
    with pytest.raises(ValueError, match="nested deeper"):
        encode_array(nested)


def test_nesting_up_to_the_cap_round_trips() -> None:
    nested: dict[str, Any] = {}
    for _ in range(MAX_DEPTH):
        nested = {"n": nested}
    assert decode_table(encode_table(nested), 0)[0] == nested


def nested_tables(depth: int) -> bytes:
    encoded = table()
    for _ in range(depth):
        encoded = table(entry(b"n", b"F", encoded))
    return encoded


def test_hostile_nesting_is_a_syntax_error_not_a_recursion_error() -> None:
    decode_table(nested_tables(MAX_DEPTH), 0)
    with pytest.raises(AMQPSyntaxError, match="nested deeper"):
        decode_table(nested_tables(MAX_DEPTH + 1), 0)
    with pytest.raises(AMQPSyntaxError):
        decode_table(nested_tables(5000), 0)
    arrays = b"\x00\x00\x00\x00"
    for _ in range(5000):
        arrays = struct.pack(">I", len(arrays) + 1) + b"A" + arrays
    with pytest.raises(AMQPSyntaxError):
        decode_array(arrays, 0)


@pytest.mark.parametrize(
    ("encoded", "match"),
    [
        (b"", "truncated"),
        (b"\x00\x00\x00", "truncated"),
        (b"\x00\x00\x00\x05\x01a", "length 5 exceeds"),
        (table(b"\x05ab"), "truncated"),
        (table(b"\x01a"), "truncated"),
        (table(entry(b"a", b"Z", b"")), "unknown field type 'Z'"),
        (table(entry(b"\xff", b"V", b"")), "not valid UTF-8"),
        (table(entry(b"a", b"I", b"\x00\x00")), "truncated"),
        (table(entry(b"a", b"t", b"")), "truncated"),
        (table(entry(b"a", b"D", b"\x00\x00")), "truncated"),
        (table(entry(b"a", b"T", b"\x00")), "truncated"),
        (table(entry(b"a", b"S", b"\x00\x00\x00\x09abc")), "exceeds"),
        (table(entry(b"a", b"S", b"\x00\x00")), "truncated"),
        (table(entry(b"a", b"x", b"\x00\x00\x00\x09abc")), "exceeds"),
        (table(entry(b"a", b"F", b"\x00\x00\x00\x01")), "exceeds"),
        (table(entry(b"a", b"F", b"\x00\x00\x00\x01Z")), "truncated"),
        (table(entry(b"a", b"A", b"\x00\x00\x00\x01Z")), "unknown field type 'Z'"),
        (table(entry(b"a", b"A", b"\x00\x00\x00\x02b")), "exceeds"),
    ],
)
def test_malformed_tables_are_syntax_errors(encoded: bytes, match: str) -> None:
    with pytest.raises(AMQPSyntaxError, match=match) as raised:
        decode_table(encoded, 0)
    assert raised.value.reply_code == 502


def test_value_cannot_run_past_its_enclosing_table() -> None:
    # The inner table claims 5 bytes; the int32 in it would need bytes past the end.
    inner = b"\x00\x00\x00\x05\x01aI\x00\x00"
    encoded = table(entry(b"t", b"F", inner), entry(b"z", b"V", b""))
    with pytest.raises(AMQPSyntaxError, match="truncated"):
        decode_table(encoded, 0)


@settings(max_examples=150)
@given(tables)
def test_table_round_trip(value: dict[str, Any]) -> None:
    encoded = encode_table(value)
    assert decode_table(encoded, 0) == (value, len(encoded))


@settings(max_examples=200)
@given(field_values)
def test_value_round_trip_through_an_array(value: Any) -> None:
    encoded = encode_array([value])
    assert decode_array(encoded, 0) == ([value], len(encoded))


def test_float32_and_special_floats() -> None:
    assert decode_one(b"f", struct.pack(">f", math.inf)) == math.inf
    assert math.isnan(decode_one(b"d", struct.pack(">d", math.nan)))
    assert math.isnan(decode_table(encode_table({"n": math.nan}), 0)[0]["n"])
