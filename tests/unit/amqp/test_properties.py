from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

import pytest
from amqp_strategies import property_dicts
from hypothesis import given, settings

from postoffice.amqp import (
    BASIC_PROPERTIES,
    BasicProperties,
    decode_properties,
    encode_properties,
)
from postoffice.errors import AMQPSyntaxError

NAMES = [name for name, _, _ in BASIC_PROPERTIES]


def test_flags_follow_spec_order_from_bit_15_down() -> None:
    assert BASIC_PROPERTIES == (
        ("content_type", "shortstr", 0x8000),
        ("content_encoding", "shortstr", 0x4000),
        ("headers", "table", 0x2000),
        ("delivery_mode", "octet", 0x1000),
        ("priority", "octet", 0x0800),
        ("correlation_id", "shortstr", 0x0400),
        ("reply_to", "shortstr", 0x0200),
        ("expiration", "shortstr", 0x0100),
        ("message_id", "shortstr", 0x0080),
        ("timestamp", "timestamp", 0x0040),
        ("type", "shortstr", 0x0020),
        ("user_id", "shortstr", 0x0010),
        ("app_id", "shortstr", 0x0008),
        ("cluster_id", "shortstr", 0x0004),
    )


def test_layout() -> None:
    raw = encode_properties({"content_type": "a/b", "delivery_mode": 2, "headers": {}})
    assert raw == b"\xb0\x00\x03a/b\x00\x00\x00\x00\x02"
    assert decode_properties(raw) == {"content_type": "a/b", "headers": {}, "delivery_mode": 2}


def test_empty_and_none_values() -> None:
    assert encode_properties({}) == b"\x00\x00"
    assert encode_properties({"priority": None, "app_id": None}) == b"\x00\x00"
    assert decode_properties(b"\x00\x00") == {}


def test_timestamp_accepts_datetime_or_int() -> None:
    moment = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    seconds = int(moment.timestamp())
    assert encode_properties({"timestamp": moment}) == b"\x00\x40" + struct.pack(">Q", seconds)
    assert encode_properties({"timestamp": seconds}) == encode_properties({"timestamp": moment})
    assert decode_properties(encode_properties({"timestamp": moment})) == {"timestamp": moment}
    milliseconds = seconds * 1000
    assert decode_properties(b"\x00\x40" + struct.pack(">Q", milliseconds)) == {
        "timestamp": milliseconds
    }


def test_continuation_flag_words() -> None:
    raw = b"\x80\x01\x00\x01\x00\x00\x02ab"
    assert decode_properties(raw) == {"content_type": "ab"}
    with pytest.raises(AMQPSyntaxError, match="class basic does not have"):
        decode_properties(b"\x80\x01\x80\x00\x02ab")
    with pytest.raises(AMQPSyntaxError, match="flags are truncated"):
        decode_properties(b"\x80\x01\x00")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "flags are truncated"),
        (b"\x80", "flags are truncated"),
        (b"\x00\x02", "unknown basic property flags 0x0002"),
        (b"\x00\x00\x00", "1 unexpected bytes"),
        (b"\x80\x00", "truncated"),
        (b"\x80\x00\x05ab", "overruns"),
        (b"\x20\x00\x00\x00", "truncated"),
        (b"\x20\x00\x00\x00\x00\x05", "overruns"),
        (b"\x20\x00\x00\x00\x00\x02\x01a", "truncated"),
        (b"\x20\x00\x00\x00\x00\x03\x01aZ", "unknown field type"),
        (b"\x10\x00", "truncated"),
        (b"\x00\x40\x00\x00\x00", "truncated"),
    ],
)
def test_malformed_properties_are_syntax_errors(raw: bytes, match: str) -> None:
    with pytest.raises(AMQPSyntaxError, match=match):
        decode_properties(raw)


def test_shortstr_bytes_that_are_not_utf8_survive() -> None:
    raw = b"\x00\x08\x02\xff\xfe"
    assert decode_properties(raw) == {"app_id": "\udcff\udcfe"}
    assert encode_properties(decode_properties(raw)) == raw


@pytest.mark.parametrize(
    ("properties", "error"),
    [
        ({"color": "red"}, ValueError),
        ({"priority": 256}, ValueError),
        ({"priority": "1"}, ValueError),
        ({"content_type": "x" * 256}, ValueError),
        ({"content_type": b"x"}, TypeError),
        ({"headers": {"k": object()}}, TypeError),
        ({"timestamp": "now"}, TypeError),
        ({"timestamp": -1}, ValueError),
    ],
)
def test_encode_rejects_bad_values(properties: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_properties(properties)


@settings(max_examples=200)
@given(property_dicts)
def test_round_trip(properties: dict[str, Any]) -> None:
    raw = encode_properties(properties)
    assert decode_properties(raw) == properties
    lazy = BasicProperties(raw)
    assert lazy.raw == raw
    assert {name: getattr(lazy, name) for name in NAMES} == {
        name: properties.get(name) for name in NAMES
    }
    assert BasicProperties.from_fields(**properties) == lazy


# -- BasicProperties --------------------------------------------------------------------


def test_attributes_match_the_spec() -> None:
    descriptors = [
        name for name, value in vars(BasicProperties).items() if hasattr(value, "__get__")
    ]
    assert [name for name in descriptors if name in NAMES] == NAMES


def test_absent_properties_read_as_none() -> None:
    properties = BasicProperties()
    assert properties.raw == b"\x00\x00"
    assert all(getattr(properties, name) is None for name in NAMES)
    assert properties.as_dict() == {}


def test_decoding_is_lazy_and_raw_is_kept() -> None:
    raw = b"\x90\x00\x01x\x02"
    properties = BasicProperties(memoryview(b"--" + raw)[2:])
    assert type(properties.raw) is bytes and properties.raw == raw
    assert properties.content_type == "x"
    assert properties.delivery_mode == 2
    malformed = BasicProperties(b"\x80\x00\x09")
    assert malformed.raw == b"\x80\x00\x09"
    with pytest.raises(AMQPSyntaxError):
        _ = malformed.content_type
    assert "malformed" in repr(malformed)


def test_no_instance_dict() -> None:
    with pytest.raises(AttributeError):
        BasicProperties().__dict__  # noqa: B018


def test_from_fields_replace_and_equality() -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9)
    properties = BasicProperties.from_fields(
        content_type="text/plain", headers={"a": [1, "b"]}, timestamp=moment, type="t"
    )
    assert properties.timestamp == moment.replace(tzinfo=UTC)
    assert properties.headers == {"a": [1, "b"]}
    assert properties.type == "t"
    assert properties.priority is None
    changed = properties.replace(priority=5, content_type=None)
    assert changed.priority == 5 and changed.content_type is None
    assert changed.headers == properties.headers
    assert properties.priority is None
    assert BasicProperties(properties.raw) == properties
    assert properties != changed
    assert properties != "text/plain"
    assert repr(BasicProperties.from_fields(priority=1)) == "BasicProperties(priority=1)"
    with pytest.raises(ValueError, match="unknown basic properties: color"):
        properties.replace(color="red")


@given(property_dicts)
@settings(max_examples=300)
def test_fast_reads_agree_with_decoding(values: dict[str, Any]) -> None:
    """persistent, priority and inspect_on_publish read the raw bytes without decoding;
    they must say what decoding says."""
    raw = encode_properties(values)
    decoded = decode_properties(raw)
    assert BasicProperties(raw).priority == decoded.get("priority")
    assert BasicProperties(raw).persistent == (decoded.get("delivery_mode") == 2)
    if not BasicProperties(raw).inspect_on_publish:
        assert all(decoded.get(name) is None for name in ("reply_to", "user_id", "expiration"))
