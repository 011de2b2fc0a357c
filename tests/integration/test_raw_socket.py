"""Bad input over a bare socket: the broker answers as the spec says and others carry on.

Every case opens a pika connection first, with a message waiting in a queue; after
the broker has thrown the bad client out, that connection still works and the
message is still there.
"""

from __future__ import annotations

import struct

import pytest
from pika import frame, spec
from rawamqp import PROTOCOL_HEADER, Closed, RawClient, raw_frame

from postoffice.testing import running_broker


@pytest.fixture
def witness(connect, names):
    """A pika channel opened before the trouble, and a check that it is unharmed."""
    channel = connect().channel()
    queue = names("witness")
    channel.queue_declare(queue)
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"before")

    def unharmed() -> None:
        assert channel.is_open
        channel.basic_publish("", queue, b"after")
        got = [channel.basic_get(queue, auto_ack=True)[2] for _ in range(2)]
        assert got == [b"before", b"after"]

    return unharmed


@pytest.mark.parametrize(
    "header",
    [
        b"AMQP\x00\x00\x09\x00",  # right name, wrong revision
        b"AMQP\x01\x01\x00\x0a",  # AMQP 0-10
        b"AMQP\x00\x01\x00\x00",  # AMQP 1.0
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x01\x00\x00\x00\x00\x00\x05",  # a frame where the header should be
    ],
    ids=["0-9-0", "0-10", "1.0", "http", "frame"],
)
def test_wrong_protocol_header_is_answered_with_ours(broker, witness, header):
    with RawClient(broker.host, broker.port) as raw:
        raw.send(header)
        assert raw.read_raw_until_closed(timeout=5) == PROTOCOL_HEADER
    witness()


def test_header_sent_one_byte_at_a_time_is_accepted(broker, witness):
    with RawClient(broker.host, broker.port) as raw:
        for byte in PROTOCOL_HEADER:
            raw.send(bytes([byte]))
        start = raw.expect(spec.Connection.Start)
        assert (start.version_major, start.version_minor) == (0, 9)
        assert b"PLAIN" in start.mechanisms.split()
    witness()


def _queue_declare_payload(name: bytes, arguments: bytes) -> bytes:
    return struct.pack(">HHH", 50, 10, 0) + bytes([len(name)]) + name + b"\x00" + arguments


def _table(entries: bytes) -> bytes:
    return struct.pack(">I", len(entries)) + entries


_DECLARE = frame.Method(1, spec.Queue.Declare(queue="fine")).marshal()

GARBAGE = {
    # A method frame whose end octet is not 0xCE.
    "bad-frame-end": (_DECLARE[:-1] + b"\x00", 501),
    # A frame type the spec does not have.
    "unknown-frame-type": (raw_frame(9, 1, b"\x00\x00"), 501),
    # A frame larger than the negotiated frame_max.
    "oversized-frame": (raw_frame(1, 1, b"\x00" * (131072 + 100)), 501),
    # queue.declare whose queue name claims more bytes than the frame holds.
    "truncated-method": (raw_frame(1, 1, struct.pack(">HHH", 50, 10, 0) + b"\x20ab"), 501),
    # queue.declare whose arguments table holds a field of unknown type 'Z'.
    "bad-field-type": (
        raw_frame(1, 1, _queue_declare_payload(b"q", _table(b"\x01kZ\x00\x00"))),
        502,
    ),
    # A content body where a method is expected.
    "body-without-publish": (raw_frame(3, 1, b"stray body"), 505),
    # A content header where a method is expected.
    "header-without-publish": (
        frame.Header(1, 5, spec.BasicProperties()).marshal(),
        505,
    ),
    # A method where the content header of a publish is expected.
    "method-instead-of-header": (
        frame.Method(1, spec.Basic.Publish(routing_key="q")).marshal() + _DECLARE,
        505,
    ),
    # A heartbeat on a channel other than 0 (RabbitMQ: unexpected_frame, open or not).
    "heartbeat-on-an-open-channel": (raw_frame(8, 1, b""), 505),
    "heartbeat-on-an-unopened-channel": (raw_frame(8, 9, b""), 505),
    # A method on a channel that was never opened.
    "unopened-channel": (frame.Method(7, spec.Queue.Declare(queue="q")).marshal(), 504),
}


@pytest.mark.parametrize(("garbage", "code"), GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_after_the_handshake_closes_the_connection(broker, witness, garbage, code):
    with RawClient(broker.host, broker.port) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.send(garbage)
        close = raw.expect_connection_close()
        assert close.reply_code == code, close.reply_text
        raw.wait_closed(timeout=5)
    witness()


def test_nothing_after_the_close_is_processed(broker, witness, names):
    """Frames that follow the offending one in the same packet are dropped."""
    queue = names("never")
    with RawClient(broker.host, broker.port) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.send(
            raw_frame(3, 1, b"stray") + frame.Method(1, spec.Queue.Declare(queue=queue)).marshal()
        )
        assert raw.expect_connection_close().reply_code == 505
        raw.wait_closed(timeout=5)
    witness()
    with RawClient(broker.host, broker.port) as check:
        check.handshake()
        check.open_channel(1)
        check.send_method(1, spec.Queue.Declare(queue=queue, passive=True))
        _, method = check.read_method()
        assert isinstance(method, spec.Channel.Close) and method.reply_code == 404


def _field(key: bytes, value: bytes) -> bytes:
    return bytes([len(key)]) + key + value


# One field of every type in RabbitMQ's field table grammar (AMQP 0-9-1 errata).
EVERY_FIELD_TYPE = b"".join(
    [
        _field(b"bool", b"t\x01"),
        _field(b"i8", b"b\xff"),
        _field(b"u8", b"B\xff"),
        _field(b"i16", b"s" + struct.pack(">h", -2)),
        _field(b"u16", b"u" + struct.pack(">H", 65534)),
        _field(b"i32", b"I" + struct.pack(">i", -5)),
        _field(b"u32", b"i" + struct.pack(">I", 2**32 - 1)),
        _field(b"i64", b"l" + struct.pack(">q", -(2**62))),
        _field(b"f32", b"f" + struct.pack(">f", 1.5)),
        _field(b"f64", b"d" + struct.pack(">d", -2.25)),
        _field(b"decimal", b"D\x02" + struct.pack(">i", 314)),
        _field(b"longstr", b"S" + struct.pack(">I", 4) + b"\xc3\xa9t\xc3"),  # not UTF-8
        _field(b"bytes", b"x" + struct.pack(">I", 3) + b"\x00\xff\x01"),
        _field(b"array", b"A" + struct.pack(">I", 7) + b"t\x00" + b"I" + struct.pack(">i", 9)),
        _field(b"timestamp", b"T" + struct.pack(">Q", 1_700_000_000)),
        _field(b"table", b"F" + _table(_field(b"inner", b"V"))),
        _field(b"void", b"V"),
        _field(b"route", b"S" + struct.pack(">I", 3) + b"yes"),
    ]
)


def test_headers_of_every_field_type_are_routed_and_delivered_byte_for_byte(broker, connect, names):
    channel = connect().channel()
    exchange, queue = names("x"), names("q")
    channel.exchange_declare(exchange, "headers")
    channel.queue_declare(queue)
    channel.queue_bind(queue, exchange, "", {"x-match": "all", "route": "yes", "void": None})
    properties = struct.pack(">H", 0x2000) + _table(EVERY_FIELD_TYPE)  # headers only
    header = struct.pack(">HHQ", 60, 0, 4) + properties
    with RawClient(broker.host, broker.port) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.send_method(1, spec.Basic.Consume(queue=queue, no_ack=True))
        raw.expect(spec.Basic.ConsumeOk)
        raw.send(
            frame.Method(1, spec.Basic.Publish(exchange=exchange)).marshal()
            + raw_frame(2, 1, header)
            + raw_frame(3, 1, b"body")
        )
        assert isinstance(raw.read_method()[1], spec.Basic.Deliver)
        frame_type, _, delivered = raw.read_raw_frame()
        assert frame_type == 2
        assert delivered == header
        assert raw.read_raw_frame() == (3, 1, b"body")


def test_silent_client_with_heartbeats_is_disconnected(broker, witness):
    with RawClient(broker.host, broker.port) as raw:
        raw.handshake(heartbeat=1)
        # Say nothing more: the broker must give up on us after about two intervals.
        seen = raw.wait_closed(timeout=10)
        assert seen == [] or all(isinstance(f, frame.Heartbeat) for f in seen), seen
    witness()


def test_client_that_never_finishes_the_handshake_is_dropped():
    with running_broker(handshake_timeout=0.5) as short, RawClient(short.host, short.port) as raw:
        raw.send(PROTOCOL_HEADER)
        raw.expect(spec.Connection.Start)
        with pytest.raises(Closed):
            raw.read_frame(timeout=10)
