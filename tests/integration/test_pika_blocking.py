"""pika's BlockingConnection against the broker: what a user of pika does, end to end."""

from __future__ import annotations

import datetime
import decimal
import os
import time

import pika
import pytest
from pika import spec
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker, UnroutableError
from rawamqp import RawClient

WAIT = 10.0  # seconds: the bound on every wait for something that should happen


def pump(connection: pika.BlockingConnection, done, what: str, timeout: float = WAIT) -> None:
    """Runs pika's I/O until ``done()`` is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        connection.process_data_events(time_limit=0.05)


class Inbox:
    """A consumer callback that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[spec.Basic.Deliver, spec.BasicProperties, bytes]] = []

    def __call__(self, channel, method, properties, body) -> None:
        self.messages.append((method, properties, body))

    @property
    def bodies(self) -> list[bytes]:
        return [body for _, _, body in self.messages]

    def __len__(self) -> int:
        return len(self.messages)


def ready_count(channel: BlockingChannel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def get_all(channel: BlockingChannel, queue: str) -> list[tuple[spec.Basic.GetOk, bytes]]:
    """Every ready message of a queue, acknowledged."""
    got = []
    while True:
        method, _, body = channel.basic_get(queue)
        if method is None:
            return got
        channel.basic_ack(method.delivery_tag)
        got.append((method, body))


# -- the basics ---------------------------------------------------------------------


def test_declare_bind_publish_consume_ack(connection, channel, names):
    exchange, queue = names("x"), names("q")
    channel.exchange_declare(exchange, "direct")
    channel.queue_declare(queue)
    channel.queue_bind(queue, exchange, "orders")
    channel.confirm_delivery()
    for i in range(3):
        channel.basic_publish(exchange, "orders", b"order %d" % i)
    channel.basic_publish(exchange, "elsewhere", b"not routed")

    inbox = Inbox()
    channel.basic_consume(queue, inbox)
    pump(connection, lambda: len(inbox) == 3, "three deliveries")
    assert inbox.bodies == [b"order 0", b"order 1", b"order 2"]
    deliver = inbox.messages[0][0]
    assert (deliver.exchange, deliver.routing_key, deliver.redelivered) == (
        exchange,
        "orders",
        False,
    )
    for method, _, _ in inbox.messages:
        channel.basic_ack(method.delivery_tag)
    channel.close()

    # Acked means gone: a new channel finds nothing, not even after the old one closed.
    again = connection.channel()
    assert again.basic_get(queue) == (None, None, None)
    assert ready_count(again, queue) == 0


def test_basic_get_reports_what_is_left(channel, names):
    queue = names()
    channel.queue_declare(queue)
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"first")
    channel.basic_publish("", queue, b"second")

    method, _, body = channel.basic_get(queue)
    assert body == b"first"
    assert (method.exchange, method.routing_key, method.message_count) == ("", queue, 1)
    assert method.redelivered is False
    channel.basic_ack(method.delivery_tag)
    method, _, body = channel.basic_get(queue, auto_ack=True)
    assert (body, method.message_count) == (b"second", 0)
    assert channel.basic_get(queue) == (None, None, None)


def test_publisher_confirms_ack_every_publish(connection, names):
    channel = connection.channel()
    queue = names()
    channel.queue_declare(queue)
    channel.confirm_delivery()
    for i in range(200):
        channel.basic_publish("", queue, b"%d" % i)  # raises NackError on a nack
    assert ready_count(channel, queue) == 200


def test_mandatory_unroutable_is_returned(connection, names):
    exchange = names("x")
    channel = connection.channel()
    channel.exchange_declare(exchange, "direct")
    returned: list[tuple[spec.Basic.Return, spec.BasicProperties, bytes]] = []
    channel.add_on_return_callback(
        lambda ch, method, props, body: returned.append((method, props, body))
    )
    channel.basic_publish(
        exchange,
        "nowhere",
        b"lost?",
        pika.BasicProperties(message_id="m-1"),
        mandatory=True,
    )
    pump(connection, lambda: returned, "basic.return")
    method, properties, body = returned[0]
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert (method.exchange, method.routing_key) == (exchange, "nowhere")
    assert (properties.message_id, body) == ("m-1", b"lost?")

    # With confirms, pika raises UnroutableError for it: return first, then the ack.
    confirmed = connection.channel()
    confirmed.confirm_delivery()
    with pytest.raises(UnroutableError) as caught:
        confirmed.basic_publish(exchange, "nowhere", b"returned", mandatory=True)
    assert [m.body for m in caught.value.messages] == [b"returned"]
    # A routable mandatory publish is not returned.
    queue = names()
    confirmed.queue_declare(queue)
    confirmed.basic_publish("", queue, b"routed", mandatory=True)
    assert ready_count(confirmed, queue) == 1


def test_transactions_commit_and_rollback(connect, names):
    observer = connect().channel()
    queue = names()
    observer.queue_declare(queue)
    channel = connect().channel()
    channel.tx_select()

    channel.basic_publish("", queue, b"rolled back")
    assert ready_count(observer, queue) == 0
    channel.tx_rollback()
    assert ready_count(observer, queue) == 0

    channel.basic_publish("", queue, b"one")
    channel.basic_publish("", queue, b"two")
    assert ready_count(observer, queue) == 0
    channel.tx_commit()
    assert ready_count(observer, queue) == 2

    # Acks are transactional too: a rolled-back ack leaves the message unacked.
    method, _, body = channel.basic_get(queue)
    assert body == b"one"
    channel.basic_ack(method.delivery_tag)
    channel.tx_rollback()
    channel.basic_ack(method.delivery_tag)  # still known: a second ack is allowed
    channel.tx_commit()
    method, _, body = channel.basic_get(queue)
    assert body == b"two"
    channel.basic_ack(method.delivery_tag)
    channel.tx_rollback()
    channel.close()  # the uncommitted ack is forgotten, the message requeued
    assert [(m.redelivered, b) for m, b in get_all(observer, queue)] == [(True, b"two")]


def test_qos_prefetch_count_bounds_unacked_deliveries(connection, channel, names):
    queue = names()
    channel.queue_declare(queue)
    channel.confirm_delivery()
    for i in range(10):
        channel.basic_publish("", queue, b"%d" % i)
    channel.basic_qos(prefetch_count=3)
    inbox = Inbox()
    channel.basic_consume(queue, inbox)
    pump(connection, lambda: len(inbox) >= 3, "the first prefetch window")
    # A round trip: anything else the broker was going to push arrives before its answer.
    assert ready_count(channel, queue) == 7
    connection.process_data_events(time_limit=0)
    assert inbox.bodies == [b"0", b"1", b"2"]

    channel.basic_ack(inbox.messages[0][0].delivery_tag)
    pump(connection, lambda: len(inbox) >= 4, "one more delivery after one ack")
    assert ready_count(channel, queue) == 6
    connection.process_data_events(time_limit=0)
    assert len(inbox) == 4

    channel.basic_ack(inbox.messages[3][0].delivery_tag, multiple=True)
    pump(connection, lambda: len(inbox) >= 7, "three more after a multiple ack")
    assert ready_count(channel, queue) == 3
    connection.process_data_events(time_limit=0)
    assert inbox.bodies == [b"%d" % i for i in range(7)]


def test_global_qos_is_shared_by_the_channels_consumers(connection, channel, names):
    queues = [names(), names()]
    channel.confirm_delivery()
    for queue in queues:
        channel.queue_declare(queue)
        for i in range(5):
            channel.basic_publish("", queue, b"%d" % i)
    channel.basic_qos(prefetch_count=3, global_qos=True)
    inbox = Inbox()
    for queue in queues:
        channel.basic_consume(queue, inbox)
    pump(connection, lambda: len(inbox) >= 3, "the channel's prefetch window")
    ready = sum(ready_count(channel, queue) for queue in queues)
    connection.process_data_events(time_limit=0)
    assert (len(inbox), ready) == (3, 7)
    channel.basic_ack(0, multiple=True)
    pump(connection, lambda: len(inbox) >= 6, "the next window")
    ready = sum(ready_count(channel, queue) for queue in queues)
    connection.process_data_events(time_limit=0)
    assert (len(inbox), ready) == (6, 4)


def test_reject_with_requeue_keeps_place_in_line(channel, names):
    queue = names()
    channel.queue_declare(queue)
    channel.confirm_delivery()
    for body in (b"a", b"b", b"c"):
        channel.basic_publish("", queue, body)
    first, _, body = channel.basic_get(queue)
    assert body == b"a"
    second, _, body = channel.basic_get(queue)
    assert body == b"b"
    channel.basic_reject(second.delivery_tag, requeue=True)
    channel.basic_nack(first.delivery_tag, requeue=True)
    got = get_all(channel, queue)
    assert [(m.redelivered, b) for m, b in got] == [(True, b"a"), (True, b"b"), (False, b"c")]


def test_nack_multiple_and_reject_without_requeue(connection, channel, names):
    queue = names()
    channel.queue_declare(queue)
    channel.confirm_delivery()
    for i in range(4):
        channel.basic_publish("", queue, b"%d" % i)
    inbox = Inbox()
    tag = channel.basic_consume(queue, inbox)
    pump(connection, lambda: len(inbox) == 4, "four deliveries")
    tags = [m.delivery_tag for m, _, _ in inbox.messages]
    channel.basic_reject(tags[0], requeue=False)  # dropped (no dead-letter exchange)
    channel.basic_nack(tags[2], multiple=True, requeue=True)  # 1 and 2 come back
    pump(connection, lambda: len(inbox) == 6, "two redeliveries")
    again = inbox.messages[4:]
    assert [(m.redelivered, b) for m, _, b in again] == [(True, b"1"), (True, b"2")]
    channel.basic_ack(0, multiple=True)
    channel.basic_cancel(tag)
    assert ready_count(channel, queue) == 0


def test_recover_redelivers_unacked(connection, channel, names):
    queue = names()
    channel.queue_declare(queue)
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"x")
    channel.basic_publish("", queue, b"y")
    inbox = Inbox()
    channel.basic_consume(queue, inbox)
    pump(connection, lambda: len(inbox) == 2, "two deliveries")
    channel.basic_recover(requeue=True)
    pump(connection, lambda: len(inbox) == 4, "two redeliveries after basic.recover")
    assert [(m.redelivered, b) for m, _, b in inbox.messages[2:]] == [(True, b"x"), (True, b"y")]
    channel.basic_ack(inbox.messages[3][0].delivery_tag, multiple=True)
    assert ready_count(channel, queue) == 0


def test_exclusive_queue_belongs_to_its_connection(connect, names):
    owner = connect()
    queue = owner.channel().queue_declare("", exclusive=True).method.queue
    assert queue.startswith("amq.gen-")
    other = connect().channel()
    with pytest.raises(ChannelClosedByBroker) as caught:
        other.queue_declare(queue, passive=True)
    assert caught.value.reply_code == 405
    owner.close()
    checker = connect().channel()
    with pytest.raises(ChannelClosedByBroker) as caught:
        checker.queue_declare(queue, passive=True)
    assert caught.value.reply_code == 404  # gone with its connection


def test_auto_delete_queue_goes_with_its_last_consumer(connection, channel, names):
    queue = names()
    channel.queue_declare(queue, auto_delete=True)
    first = channel.basic_consume(queue, Inbox())
    second = channel.basic_consume(queue, Inbox())
    channel.basic_cancel(first)
    assert channel.queue_declare(queue, passive=True).method.consumer_count == 1
    channel.basic_cancel(second)
    with pytest.raises(ChannelClosedByBroker) as caught:
        channel.queue_declare(queue, passive=True)
    assert caught.value.reply_code == 404


def test_acks_after_cancel_still_count(connection, channel, names):
    queue = names()
    channel.queue_declare(queue)
    channel.confirm_delivery()
    for body in (b"kept", b"returned"):
        channel.basic_publish("", queue, body)
    inbox = Inbox()
    tag = channel.basic_consume(queue, inbox)
    pump(connection, lambda: len(inbox) == 2, "two deliveries")
    channel.basic_cancel(tag)
    channel.basic_ack(inbox.messages[0][0].delivery_tag)
    channel.basic_nack(inbox.messages[1][0].delivery_tag, requeue=True)
    method, _, body = channel.basic_get(queue, auto_ack=True)
    assert (body, method.redelivered, method.message_count) == (b"returned", True, 0)


# -- exchanges ------------------------------------------------------------------------


def _bound_queues(channel: BlockingChannel, names, exchange: str, bindings) -> list[str]:
    queues = []
    for routing_key, arguments in bindings:
        queue = names("q")
        channel.queue_declare(queue)
        channel.queue_bind(queue, exchange, routing_key, arguments)
        queues.append(queue)
    return queues


def _routed(channel: BlockingChannel, queues: list[str]) -> list[list[bytes]]:
    return [[body for _, body in get_all(channel, queue)] for queue in queues]


def test_direct_exchange(channel, names):
    exchange = names("x")
    channel.exchange_declare(exchange, "direct")
    queues = _bound_queues(channel, names, exchange, [("a", None), ("b", None), ("a", None)])
    channel.confirm_delivery()
    channel.basic_publish(exchange, "a", b"to a")
    channel.basic_publish(exchange, "b", b"to b")
    channel.basic_publish(exchange, "c", b"to c")
    assert _routed(channel, queues) == [[b"to a"], [b"to b"], [b"to a"]]


def test_fanout_exchange_ignores_routing_key(channel, names):
    exchange = names("x")
    channel.exchange_declare(exchange, "fanout")
    queues = _bound_queues(channel, names, exchange, [("", None), ("whatever", None)])
    channel.confirm_delivery()
    channel.basic_publish(exchange, "any.key", b"everyone")
    assert _routed(channel, queues) == [[b"everyone"], [b"everyone"]]


def test_topic_exchange(channel, names):
    exchange = names("x")
    channel.exchange_declare(exchange, "topic")
    patterns = ["stock.*.nyse", "stock.#", "#", "*.eur", "stock.usd.nyse", "#.nyse.#"]
    queues = _bound_queues(channel, names, exchange, [(p, None) for p in patterns])
    channel.confirm_delivery()
    for key in ["stock.usd.nyse", "stock.eur", "stock", "fx.eur", "a.b.nyse.c", ""]:
        channel.basic_publish(exchange, key, key.encode() or b"<empty>")
    assert _routed(channel, queues) == [
        [b"stock.usd.nyse"],
        [b"stock.usd.nyse", b"stock.eur", b"stock"],
        [b"stock.usd.nyse", b"stock.eur", b"stock", b"fx.eur", b"a.b.nyse.c", b"<empty>"],
        [b"stock.eur", b"fx.eur"],
        [b"stock.usd.nyse"],
        [b"stock.usd.nyse", b"a.b.nyse.c"],
    ]


def test_headers_exchange(channel, names):
    exchange = names("x")
    channel.exchange_declare(exchange, "headers")
    queues = _bound_queues(
        channel,
        names,
        exchange,
        [
            ("", {"x-match": "all", "format": "pdf", "type": "report"}),
            ("", {"x-match": "any", "format": "zip", "type": "log"}),
            ("", {"x-match": "all"}),
        ],
    )
    channel.confirm_delivery()
    for i, headers in enumerate(
        [
            {"format": "pdf", "type": "report", "extra": 1},
            {"format": "pdf", "type": "log"},
            {"format": "zip"},
            None,
        ]
    ):
        channel.basic_publish(exchange, "", b"%d" % i, pika.BasicProperties(headers=headers))
    assert _routed(channel, queues) == [[b"0"], [b"1", b"2"], [b"0", b"1", b"2", b"3"]]


def test_exchange_to_exchange_bindings(channel, names):
    upstream, downstream, unbound = names("up"), names("down"), names("unbound")
    channel.exchange_declare(upstream, "topic")
    channel.exchange_declare(downstream, "fanout")
    channel.exchange_declare(unbound, "fanout")
    channel.exchange_bind(downstream, upstream, "logs.#")
    channel.exchange_bind(unbound, upstream, "logs.#")
    channel.exchange_unbind(unbound, upstream, "logs.#")
    queue, direct_queue, unbound_queue = names("q"), names("q"), names("q")
    for q in (queue, direct_queue, unbound_queue):
        channel.queue_declare(q)
    channel.queue_bind(queue, downstream)
    channel.queue_bind(direct_queue, upstream, "logs.error")
    channel.queue_bind(unbound_queue, unbound)
    channel.confirm_delivery()
    channel.basic_publish(upstream, "logs.error", b"e")
    channel.basic_publish(upstream, "logs.info", b"i")
    channel.basic_publish(upstream, "metrics", b"m")
    # One copy per queue even when two routes lead to it.
    channel.exchange_bind(downstream, upstream, "#.error")
    channel.basic_publish(upstream, "logs.error", b"e2")
    assert _routed(channel, [queue, direct_queue, unbound_queue]) == [
        [b"e", b"i", b"e2"],
        [b"e", b"e2"],
        [],
    ]


@pytest.mark.parametrize(
    "missing",
    ["binding", "queue", "exchange", "destination-exchange", "source-exchange"],
)
def test_unbinding_what_does_not_exist_succeeds(channel, names, missing):
    """RabbitMQ's unbind is idempotent: a missing binding, queue or exchange is not an error.

    (rabbit_db_binding:delete filters out not_found and reports only absent queues.)
    aio-pika's RPC.close relies on it: it unbinds an auto-delete queue it just emptied
    of consumers, so the queue is already gone.
    """
    queue, exchange, other = names("q"), names("x"), names("x2")
    channel.queue_declare(queue)
    channel.exchange_declare(exchange, "direct")
    channel.exchange_declare(other, "direct")
    if missing == "binding":
        channel.queue_unbind(queue, exchange, "never-bound")
        channel.exchange_unbind(other, exchange, "never-bound")
    elif missing == "queue":
        channel.queue_unbind(names("gone"), exchange, "k")
    elif missing == "exchange":
        channel.queue_unbind(queue, names("gone"), "k")
    elif missing == "destination-exchange":
        channel.exchange_unbind(names("gone"), exchange, "k")
    else:
        channel.exchange_unbind(other, names("gone"), "k")
    assert channel.is_open
    assert channel.queue_declare(queue, passive=True).method.queue == queue


def test_alternate_exchange_takes_the_unroutable(connection, names):
    channel = connection.channel()
    main, alternate = names("main"), names("ae")
    channel.exchange_declare(alternate, "fanout")
    channel.exchange_declare(main, "direct", arguments={"alternate-exchange": alternate})
    routed, unrouted = names("routed"), names("unrouted")
    channel.queue_declare(routed)
    channel.queue_declare(unrouted)
    channel.queue_bind(routed, main, "known")
    channel.queue_bind(unrouted, alternate)
    channel.confirm_delivery()
    channel.basic_publish(main, "known", b"k")
    # mandatory is satisfied by the alternate exchange: no basic.return (pika would raise).
    channel.basic_publish(main, "unknown", b"u", mandatory=True)
    assert _routed(channel, [routed, unrouted]) == [[b"k"], [b"u"]]


def test_direct_reply_to_rpc_round_trip(connect, names):
    server_connection = connect()
    server = server_connection.channel()
    service = names("rpc")
    server.queue_declare(service)

    def answer(ch, method, properties, body) -> None:
        ch.basic_publish(
            "",
            properties.reply_to,
            body.upper(),
            pika.BasicProperties(correlation_id=properties.correlation_id),
        )
        ch.basic_ack(method.delivery_tag)

    server.basic_consume(service, answer)

    client_connection = connect()
    client = client_connection.channel()
    replies = Inbox()
    client.basic_consume("amq.rabbitmq.reply-to", replies, auto_ack=True)
    for i in range(3):
        client.basic_publish(
            "",
            service,
            b"ping %d" % i,
            pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=str(i)),
        )

    def replied() -> bool:
        server_connection.process_data_events(time_limit=0)
        return len(replies) == 3

    pump(client_connection, replied, "three RPC replies")
    assert [(p.correlation_id, b) for _, p, b in replies.messages] == [
        ("0", b"PING 0"),
        ("1", b"PING 1"),
        ("2", b"PING 2"),
    ]
    deliver = replies.messages[0][0]
    assert deliver.routing_key.startswith("amq.rabbitmq.reply-to.")


# -- content ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1024 * 1024, 5 * 1024 * 1024], ids=["1MiB", "5MiB"])
def test_large_message_spans_frames_exactly(connection, channel, names, size):
    queue = names()
    channel.queue_declare(queue)
    body = os.urandom(size)
    channel.confirm_delivery()
    channel.basic_publish("", queue, body)
    channel.basic_publish("", queue, body[::-1])
    method, _, got = channel.basic_get(queue)
    assert (len(got), got == body) == (size, True)
    channel.basic_ack(method.delivery_tag)
    inbox = Inbox()
    channel.basic_consume(queue, inbox, auto_ack=True)
    pump(connection, lambda: len(inbox) == 1, "the large delivery")
    assert inbox.bodies[0] == body[::-1]


def test_content_is_split_at_the_frame_max_the_client_chose(connect, names):
    connection = connect(frame_max=4096)
    channel = connection.channel()
    queue = names()
    channel.queue_declare(queue)
    body = bytes(range(256)) * 1200  # 300 KiB: about 75 frames of 4 KiB
    channel.confirm_delivery()
    channel.basic_publish("", queue, body)
    inbox = Inbox()
    channel.basic_consume(queue, inbox, auto_ack=True)
    pump(connection, lambda: len(inbox) == 1, "the delivery")
    assert inbox.bodies[0] == body  # pika drops a connection on a frame above its frame_max
    assert connection.is_open


def test_empty_body(channel, names):
    queue = names()
    channel.queue_declare(queue)
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"")
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert (method.message_count, body, properties.headers) == (0, b"", None)


ALL_PIKA_HEADER_TYPES = {
    "longstr": "text with ünïcode",
    "bytes": b"\x00\x01\xfe\xff",
    "true": True,
    "false": False,
    "int": 42,
    "negative": -7,
    "long": 2**40,
    "most-negative": -(2**63),
    "decimal": decimal.Decimal("3.14159"),
    "timestamp": datetime.datetime(2024, 2, 29, 12, 30, 45, tzinfo=datetime.UTC),
    "table": {"nested": {"deeper": [1, "two", None]}, "empty": {}},
    "array": [1, "a", True, [2, 3], {"k": "v"}, None],
    "empty-array": [],
    "void": None,
}


def _all_properties(headers) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers=headers,
        delivery_mode=2,
        priority=7,
        correlation_id="corr-ü-1",
        reply_to="reply.queue",
        expiration="600000",
        message_id="msg-42",
        timestamp=1_700_000_000,
        type="order.created",
        user_id="guest",
        app_id="tests",
        cluster_id="cluster-a",
    )


def _assert_same_properties(got: spec.BasicProperties, sent: spec.BasicProperties) -> None:
    names = [n for n in vars(spec.BasicProperties()) if not n.startswith("_")]
    assert len(names) == 14
    assert {n: getattr(got, n) for n in names} == {n: getattr(sent, n) for n in names}


def test_every_basic_property_round_trips(connection, channel, names):
    queue = names()
    channel.queue_declare(queue)
    sent = _all_properties(ALL_PIKA_HEADER_TYPES)
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"props", sent)
    channel.basic_publish("", queue, b"props", sent)
    _, got, _ = channel.basic_get(queue, auto_ack=True)
    _assert_same_properties(got, sent)
    inbox = Inbox()
    channel.basic_consume(queue, inbox, auto_ack=True)
    pump(connection, lambda: len(inbox) == 1, "the delivery")
    _assert_same_properties(inbox.messages[0][1], sent)


def test_headers_of_every_type_route_through_a_headers_exchange(channel, names):
    exchange, queue = names("x"), names("q")
    channel.exchange_declare(exchange, "headers")
    channel.queue_declare(queue)
    match = {k: v for k, v in ALL_PIKA_HEADER_TYPES.items() if not isinstance(v, dict | list)}
    channel.queue_bind(queue, exchange, "", {"x-match": "all", **match})
    channel.confirm_delivery()
    channel.basic_publish(exchange, "", b"all", pika.BasicProperties(headers=ALL_PIKA_HEADER_TYPES))
    changed = dict(ALL_PIKA_HEADER_TYPES, long=2**40 + 1)
    channel.basic_publish(exchange, "", b"one differs", pika.BasicProperties(headers=changed))
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert (body, method.message_count) == (b"all", 0)
    assert properties.headers == ALL_PIKA_HEADER_TYPES


# -- many at once ---------------------------------------------------------------------------


def test_many_channels_on_one_connection(connection, names):
    queue = names()
    channels = [connection.channel() for _ in range(200)]
    assert len({c.channel_number for c in channels}) == 200
    channels[0].queue_declare(queue)
    inbox = Inbox()
    for channel in channels[:20]:
        channel.basic_consume(queue, inbox, auto_ack=True)
    for i, channel in enumerate(channels):
        channel.basic_publish("", queue, b"%d" % i)
    pump(connection, lambda: len(inbox) == 200, "200 messages")
    assert sorted(inbox.bodies, key=int) == [b"%d" % i for i in range(200)]
    assert len({m.consumer_tag for m, _, _ in inbox.messages}) == 20
    for channel in channels[::2]:
        channel.close()
    assert all(c.is_open for c in channels[1::2])
    assert ready_count(channels[1], queue) == 0


def test_many_connections_at_once(connect, names):
    queue = names()
    connections = [connect() for _ in range(50)]
    channels = [c.channel() for c in connections]
    channels[0].queue_declare(queue)
    for i, channel in enumerate(channels):
        channel.confirm_delivery()
        channel.basic_publish("", queue, b"%d" % i)
    assert ready_count(channels[-1], queue) == 50
    bodies = [body for _, body in get_all(channels[25], queue)]
    assert sorted(bodies, key=int) == [b"%d" % i for i in range(50)]
    assert all(c.is_open for c in connections)


def test_a_consumer_that_reads_slowly_gets_everything_in_order(connect, names):
    """Deliveries beyond what the socket takes wait in the broker, then flow again."""
    queue = names()
    consumer_connection = connect()
    consumer = consumer_connection.channel()
    consumer.queue_declare(queue)
    inbox = Inbox()
    consumer.basic_consume(queue, inbox, auto_ack=True)
    publisher = connect().channel()
    publisher.confirm_delivery()
    chunk = os.urandom(256 * 1024)
    for i in range(48):  # 12 MiB, well past the broker's write buffer and the socket's
        publisher.basic_publish("", queue, b"%02d" % i + chunk)
    pump(consumer_connection, lambda: len(inbox) == 48, "48 large deliveries")
    assert [body[:2] for body in inbox.bodies] == [b"%02d" % i for i in range(48)]
    assert all(body[2:] == chunk for body in inbox.bodies)


# -- consumers that go away -------------------------------------------------------------------


def test_unacked_messages_go_to_another_consumer_when_a_consumer_closes(connect, names):
    queue = names()
    first_connection, second_connection = connect(), connect()
    first = first_connection.channel()
    first.queue_declare(queue)
    first.confirm_delivery()
    for i in range(5):
        first.basic_publish("", queue, b"%d" % i)
    held = Inbox()
    first.basic_consume(queue, held)
    pump(first_connection, lambda: len(held) == 5, "five deliveries to the first consumer")
    first.basic_ack(held.messages[1][0].delivery_tag)  # one is done

    second = second_connection.channel()
    taken = Inbox()
    second.basic_consume(queue, taken)
    assert ready_count(second, queue) == 0
    first_connection.close()
    pump(second_connection, lambda: len(taken) == 4, "the four unacked messages")
    assert [(m.redelivered, b) for m, _, b in taken.messages] == [
        (True, b"0"),
        (True, b"2"),
        (True, b"3"),
        (True, b"4"),
    ]


def test_unacked_messages_are_requeued_when_a_client_drops_the_socket(broker, connect, names):
    queue = names()
    connection = connect()
    channel = connection.channel()
    channel.queue_declare(queue)
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"m0")
    channel.basic_publish("", queue, b"m1")

    with RawClient(broker.host, broker.port) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.send_method(1, spec.Basic.Consume(queue=queue, consumer_tag="raw"))
        raw.expect(spec.Basic.ConsumeOk)
        for expected in (b"m0", b"m1"):
            deliver = raw.expect(spec.Basic.Deliver)
            assert deliver.redelivered is False
            assert raw.read_content()[1] == expected
    # The socket is gone without connection.close; the broker must notice and requeue.
    inbox = Inbox()
    channel.basic_consume(queue, inbox)
    pump(connection, lambda: len(inbox) == 2, "the requeued messages")
    assert [(m.redelivered, b) for m, _, b in inbox.messages] == [(True, b"m0"), (True, b"m1")]
