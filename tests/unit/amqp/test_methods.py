from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from amqp_strategies import methods_of
from hypothesis import given, settings
from hypothesis import strategies as st

import postoffice.amqp as amqp
from postoffice import errors
from postoffice.amqp import (
    METHODS,
    BasicAck,
    BasicConsume,
    BasicDeliver,
    BasicGetOk,
    BasicNack,
    BasicPublish,
    BasicQos,
    BasicReject,
    BasicReturn,
    ConnectionStart,
    ConnectionStartOk,
    ExchangeUnbindOk,
    Method,
    QueueDeclare,
    TxSelect,
    decode_method,
    encode_method,
    encode_method_frame,
)
from postoffice.amqp.methods import _MethodCodec
from postoffice.errors import AMQPNotImplemented, AMQPSyntaxError, FrameError

ALL_METHODS = sorted(METHODS.values(), key=lambda cls: cls.INDEX)


# -- the generated classes --------------------------------------------------------------


def test_every_spec_method_is_generated() -> None:
    names = {cls.NAME for cls in METHODS.values()}
    assert len(names) == len(METHODS) == 66
    for name in [
        "connection.blocked",
        "connection.unblocked",
        "connection.update-secret",
        "connection.update-secret-ok",
        "exchange.bind",
        "exchange.unbind",
        "basic.nack",
        "confirm.select",
        "confirm.select-ok",
        "access.request",
    ]:
        assert name in names


@pytest.mark.parametrize("cls", ALL_METHODS, ids=lambda cls: cls.NAME)
def test_class_variables(cls: type[Method]) -> None:
    assert cls.INDEX == (cls.CLASS_ID << 16) | cls.METHOD_ID
    assert METHODS[cls.INDEX] is cls
    class_name, method_name = cls.NAME.split(".")
    assert cls.__name__ == "".join(p.capitalize() for p in f"{class_name}-{method_name}".split("-"))
    assert dataclasses.is_dataclass(cls)
    assert [f.name for f in dataclasses.fields(cls)] == [name for name, _ in cls.FIELDS]
    content_methods = {BasicPublish, BasicReturn, BasicDeliver, BasicGetOk}
    assert cls.HAS_CONTENT is (cls in content_methods)
    assert getattr(amqp, cls.__name__) is cls
    assert cls.__name__ in amqp.__all__


def test_methods_are_frozen_and_slotted() -> None:
    ack = BasicAck(delivery_tag=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ack.delivery_tag = 2  # type: ignore[misc]
    assert not hasattr(ack, "__dict__")


def test_spec_details() -> None:
    assert BasicQos.FIELDS == (
        ("prefetch_size", "long"),
        ("prefetch_count", "short"),
        ("global_", "bit"),
    )
    assert QueueDeclare.FIELDS[-2:] == (("nowait", "bit"), ("arguments", "table"))
    assert QueueDeclare.NAME == "queue.declare" and QueueDeclare.SYNCHRONOUS
    assert not BasicAck.SYNCHRONOUS
    assert ExchangeUnbindOk.METHOD_ID == 51  # RabbitMQ's id, not 41
    assert TxSelect.FIELDS == ()


def test_defaults_come_from_the_spec() -> None:
    start = ConnectionStart()
    assert (start.version_major, start.version_minor) == (0, 9)
    assert start.mechanisms == b"PLAIN" and start.locales == b"en_US"
    assert start.server_properties == {}
    assert ConnectionStartOk().response == b""
    assert BasicReject(delivery_tag=1).requeue is True
    assert BasicNack().requeue is True
    assert QueueDeclare().arguments == {}
    assert QueueDeclare().arguments is not QueueDeclare().arguments
    assert BasicConsume().consumer_tag == ""


def test_constants() -> None:
    assert (amqp.FRAME_METHOD, amqp.FRAME_HEADER, amqp.FRAME_BODY, amqp.FRAME_HEARTBEAT) == (
        1,
        2,
        3,
        8,
    )
    assert (amqp.FRAME_MIN_SIZE, amqp.FRAME_END, amqp.REPLY_SUCCESS) == (4096, 206, 200)
    assert (amqp.NO_ROUTE, amqp.NOT_FOUND, amqp.NOT_IMPLEMENTED) == (312, 404, 540)
    assert amqp.PROTOCOL_HEADER == b"AMQP\x00\x00\x09\x01"


def test_errors_module_agrees_with_the_spec() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        if cls in (errors.AMQPError, errors.SoftError, errors.HardError):
            continue
        assert getattr(amqp, cls.name) == cls.reply_code, name
        scope = amqp.HARD_ERRORS if cls.closes_connection else amqp.SOFT_ERRORS
        assert cls.reply_code in scope, name


# -- wire layout ------------------------------------------------------------------------


def test_basic_ack_layout() -> None:
    payload = encode_method(BasicAck(delivery_tag=5, multiple=True))
    assert payload == b"\x00\x3c\x00\x50" + struct.pack(">Q", 5) + b"\x01"


def test_bits_pack_lsb_first_into_one_octet() -> None:
    declare = QueueDeclare(queue="q", durable=True, auto_delete=True, nowait=True)
    payload = encode_method(declare)
    # ticket, queue, then passive durable exclusive auto-delete nowait as bits 0..4.
    assert payload == b"\x00\x32\x00\x0a\x00\x00\x01q\x1a\x00\x00\x00\x00"
    consume = BasicConsume(queue="q", consumer_tag="c", no_ack=True, exclusive=True)
    assert encode_method(consume)[-5:] == b"\x06\x00\x00\x00\x00"
    assert decode_method(payload) == declare


def test_method_frame() -> None:
    frame = encode_method_frame(7, TxSelect())
    assert frame == b"\x01\x00\x07\x00\x00\x00\x04\x00\x5a\x00\x0a\xce"


@dataclass(frozen=True, slots=True)
class _NineBits(Method):
    CLASS_ID: ClassVar[int] = 999
    METHOD_ID: ClassVar[int] = 1
    INDEX: ClassVar[int] = (999 << 16) | 1
    NAME: ClassVar[str] = "test.nine-bits"
    SYNCHRONOUS: ClassVar[bool] = False
    HAS_CONTENT: ClassVar[bool] = False
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        *((f"b{i}", "bit") for i in range(9)),
        ("n", "octet"),
        ("last", "bit"),
    )
    b0: bool = False
    b1: bool = False
    b2: bool = False
    b3: bool = False
    b4: bool = False
    b5: bool = False
    b6: bool = False
    b7: bool = False
    b8: bool = False
    n: int = 0
    last: bool = False


def test_a_ninth_bit_starts_a_new_octet_and_other_fields_end_a_run() -> None:
    codec = _MethodCodec(_NineBits)
    value = _NineBits(b0=True, b7=True, b8=True, n=3, last=True)
    payload = codec.encode(value)
    assert payload == b"\x03\xe7\x00\x01" + b"\x81\x01\x03\x01"
    assert codec.decode(payload) == value


# -- decoding errors --------------------------------------------------------------------


def payload_of(method: Method) -> bytes:
    return encode_method(method)


@pytest.mark.parametrize("payload", [b"", b"\x00", b"\x00\x3c\x00"])
def test_payload_without_ids_is_a_frame_error(payload: bytes) -> None:
    with pytest.raises(FrameError):
        decode_method(payload)


@pytest.mark.parametrize("ids", [(60, 999), (999, 10), (0, 0), (30, 12)])
def test_unknown_method_is_not_implemented(ids: tuple[int, int]) -> None:
    with pytest.raises(AMQPNotImplemented) as raised:
        decode_method(struct.pack(">HH", *ids))
    assert raised.value.reply_code == 540
    assert (raised.value.class_id, raised.value.method_id) == ids


@pytest.mark.parametrize("cls", [cls for cls in ALL_METHODS if cls.FIELDS], ids=lambda c: c.NAME)
def test_every_truncation_is_a_frame_error(cls: type[Method]) -> None:
    payload = payload_of(cls())
    for size in range(4, len(payload)):
        with pytest.raises(FrameError) as raised:
            decode_method(payload[:size])
        assert raised.value.reply_code == 501
        assert (raised.value.class_id, raised.value.method_id) == (cls.CLASS_ID, cls.METHOD_ID)
        assert raised.value.text.startswith(cls.NAME + ": ")


@pytest.mark.parametrize("cls", ALL_METHODS, ids=lambda cls: cls.NAME)
def test_trailing_bytes_are_a_frame_error(cls: type[Method]) -> None:
    with pytest.raises(FrameError, match="unexpected bytes"):
        decode_method(payload_of(cls()) + b"\x00")


def test_string_overrunning_the_payload_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="overruns"):
        decode_method(b"\x00\x3c\x00\x1f\x05abc")  # basic.cancel-ok
    with pytest.raises(FrameError, match="overruns"):
        decode_method(b"\x00\x0a\x00\x15\x00\x00\x00\x09abc")  # connection.secure-ok


def test_shortstr_must_be_utf8_in_methods_without_content() -> None:
    payload = b"\x00\x32\x00\x0a\x00\x00\x02\xff\xfe\x00\x00\x00\x00\x00"
    with pytest.raises(FrameError, match="malformed UTF-8 in shortstr queue"):
        decode_method(payload)


def test_shortstr_bytes_pass_through_content_methods() -> None:
    payload = b"\x00\x3c\x00\x28\x00\x00\x01x\x02\xff\xfe\x00"
    publish = decode_method(payload)
    assert isinstance(publish, BasicPublish)
    assert publish.routing_key == "\udcff\udcfe"
    assert encode_method(publish) == payload


def test_table_overrunning_the_payload_is_a_frame_error() -> None:
    payload = payload_of(QueueDeclare())[:-4] + b"\x00\x00\x00\x09abc"
    with pytest.raises(FrameError, match="arguments length 9 overruns"):
        decode_method(payload)


def test_malformed_table_is_a_syntax_error() -> None:
    payload = payload_of(QueueDeclare())[:-4] + b"\x00\x00\x00\x03\x01aZ"
    with pytest.raises(AMQPSyntaxError, match=r"queue\.declare: unknown field type 'Z'") as raised:
        decode_method(payload)
    assert (raised.value.class_id, raised.value.method_id) == (50, 10)


def test_decodes_memoryview() -> None:
    payload = payload_of(BasicDeliver(consumer_tag="c", delivery_tag=9, exchange="e"))
    assert decode_method(memoryview(b"xx" + payload)[2:]) == decode_method(payload)


# -- encoding errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "error"),
    [
        (QueueDeclare(queue="q" * 256), ValueError),
        (QueueDeclare(queue="\u00e9" * 128), ValueError),
        (QueueDeclare(queue=b"q"), TypeError),  # type: ignore[arg-type]
        (QueueDeclare(ticket=2**16), ValueError),
        (QueueDeclare(ticket=-1), ValueError),
        (QueueDeclare(ticket="1"), ValueError),  # type: ignore[arg-type]
        (BasicAck(delivery_tag=2**64), ValueError),
        (ConnectionStartOk(response="secret"), TypeError),  # type: ignore[arg-type]
        (QueueDeclare(arguments={"x": object()}), TypeError),
    ],
)
def test_encode_rejects_bad_values(method: Method, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_method(method)


def test_encode_rejects_non_methods_and_bad_channels() -> None:
    with pytest.raises(TypeError):
        encode_method(_NineBits())
    with pytest.raises(ValueError):
        encode_method_frame(65536, TxSelect())


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_METHODS, ids=lambda cls: cls.NAME)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_round_trip(cls: type[Method], data: st.DataObject) -> None:
    method = data.draw(methods_of(cls))
    payload = encode_method(method)
    assert decode_method(payload) == method
    frame = encode_method_frame(65535, method)
    assert frame[7:-1] == payload
    assert struct.unpack(">BHI", frame[:7]) == (1, 65535, len(payload))
    assert frame[-1] == 0xCE


def values_of(method: Method) -> dict[str, Any]:
    return {name: getattr(method, name) for name, _ in method.FIELDS}


@settings(max_examples=100)
@given(
    st.sampled_from([BasicPublish, BasicReturn, BasicDeliver, BasicGetOk]),
    st.binary(max_size=255),
)
def test_content_method_shortstr_bytes_round_trip(cls: type[Method], raw: bytes) -> None:
    template = payload_of(cls())
    method = decode_method(template)
    name = next(name for name, kind in cls.FIELDS if kind == "shortstr" and name != "reply_text")
    changed = dataclasses.replace(
        method,  # type: ignore[type-var]
        **{name: raw.decode("utf-8", "surrogateescape")},
    )
    assert decode_method(encode_method(changed)) == changed
    assert (
        values_of(decode_method(encode_method(changed)))[name].encode("utf-8", "surrogateescape")
        == raw
    )
