"""Queue features through a real client (pika): what a RabbitMQ user's code observes.

Priorities, TTL, dead letters with x-death, bounds, delivery limits, quorum rules,
single active consumer, consumer timeouts, delayed messages; and the durable ones
across a restart of a broker on the same data directory.  Waits are bounded polls,
never timing assertions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from conftest import Names

from postoffice.store.disk import DiskStore
from postoffice.testing import running_broker

BP = pika.BasicProperties
Connect = Callable[..., pika.BlockingConnection]


def drain(channel: Any, queue: str) -> list[tuple[bytes, Any]]:
    """Every message in the queue, by basic.get with auto-ack: (body, properties)."""
    got = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append((body, properties))


def wait_for_count(channel: Any, queue: str, count: int, timeout: float = 10.0) -> int:
    """Polls the queue's message count until it is ``count`` (bounded); returns the last."""
    deadline = time.monotonic() + timeout
    while True:
        found = channel.queue_declare(queue, passive=True).method.message_count
        if found == count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def dead_letter_setup(channel: Any, names: Names, **arguments: Any) -> tuple[str, str]:
    """A work queue with ``arguments`` whose dead letters go to a fanout into ``dead``."""
    dlx, work, dead = names("dlx"), names("work"), names("dead")
    channel.exchange_declare(dlx, "fanout")
    channel.queue_declare(dead)
    channel.queue_bind(dead, dlx)
    channel.queue_declare(work, arguments={"x-dead-letter-exchange": dlx, **arguments})
    return work, dead


# -- priorities ------------------------------------------------------------------------


def test_priorities_order_deliveries(connect: Connect, names: Names) -> None:
    channel = connect().channel()
    queue = names()
    channel.queue_declare(queue, arguments={"x-max-priority": 5})
    for body, priority in [(b"a0", 0), (b"b9", 9), (b"c3", 3), (b"d-", None), (b"e5", 5)]:
        channel.basic_publish("", queue, body, BP(priority=priority))
    # 9 counts as the maximum (5), FIFO within it; no priority counts as 0.
    assert [body for body, _ in drain(channel, queue)] == [b"b9", b"e5", b"c3", b"a0", b"d-"]


# -- expiry and dead letters ---------------------------------------------------------------


def test_rejected_message_is_dead_lettered_with_x_death(connect: Connect, names: Names) -> None:
    channel = connect().channel()
    work, dead = dead_letter_setup(channel, names)
    channel.basic_publish("", work, b"m", BP(headers={"n": 1}, expiration="60000"))
    method, _, _ = channel.basic_get(work)
    channel.basic_reject(method.delivery_tag, requeue=False)
    assert wait_for_count(channel, dead, 1) == 1
    [(body, properties)] = drain(channel, dead)
    assert body == b"m"
    assert properties.expiration is None
    headers = properties.headers
    [death] = headers["x-death"]
    assert list(death) == [
        "count",
        "reason",
        "queue",
        "time",
        "exchange",
        "routing-keys",
        "original-expiration",
    ]
    assert (death["count"], death["reason"], death["queue"], death["exchange"]) == (
        1,
        "rejected",
        work,
        "",
    )
    assert death["routing-keys"] == [work]
    assert death["original-expiration"] == "60000"
    assert (
        headers["x-first-death-reason"],
        headers["x-first-death-queue"],
        headers["x-first-death-exchange"],
    ) == ("rejected", work, "")
    assert headers["n"] == 1


def test_per_message_ttl_expires_behind_a_longer_one(connect: Connect, names: Names) -> None:
    """Better than RabbitMQ: a short TTL behind a long one still expires on time."""
    channel = connect().channel()
    work, dead = dead_letter_setup(channel, names)
    channel.basic_publish("", work, b"long", BP(expiration="600000"))
    channel.basic_publish("", work, b"short", BP(expiration="50"))
    assert wait_for_count(channel, dead, 1) == 1
    [(body, properties)] = drain(channel, dead)
    assert body == b"short"
    assert properties.headers["x-death"][0]["reason"] == "expired"
    assert [body for body, _ in drain(channel, work)] == [b"long"]


def test_queue_ttl_message_is_never_delivered_after_expiry(connect: Connect, names: Names) -> None:
    channel = connect().channel()
    queue = names()
    channel.queue_declare(queue, arguments={"x-message-ttl": 30})
    channel.basic_publish("", queue, b"old")
    assert wait_for_count(channel, queue, 0) == 0
    assert channel.basic_get(queue, auto_ack=True)[0] is None


def test_invalid_expiration_closes_the_channel(connect: Connect, names: Names) -> None:
    connection = connect()
    channel = connection.channel()
    queue = names()
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"m", BP(expiration="abc"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        channel.queue_declare(queue, passive=True)
    assert closed.value.args == (406, "PRECONDITION_FAILED - invalid expiration 'abc': no_integer")
    assert connection.channel().queue_declare(queue, passive=True).method.message_count == 0


def test_ttl_zero_goes_only_to_a_ready_consumer(connect: Connect, names: Names) -> None:
    channel = connect().channel()
    work, dead = dead_letter_setup(channel, names, **{"x-message-ttl": 0})
    channel.basic_publish("", work, b"nobody")
    assert wait_for_count(channel, dead, 1) == 1
    got: list[bytes] = []
    channel.basic_consume(work, lambda ch, m, p, body: got.append(body), auto_ack=True)
    channel.basic_publish("", work, b"taken")
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=0.05)
    assert got == [b"taken"]


def test_x_expires_deletes_an_unused_queue(connect: Connect, names: Names) -> None:
    connection = connect()
    channel = connection.channel()
    queue = names()
    channel.queue_declare(queue, arguments={"x-expires": 50})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            connection.channel().queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as closed:
            assert closed.args[0] == 404
            return
        time.sleep(0.05)
    pytest.fail("the queue was not deleted")


def test_ttl_cycle_without_rejection_is_dropped(connect: Connect, names: Names) -> None:
    channel = connect().channel()
    queue = names()
    # Dead letters go back into the same queue through the default exchange.
    channel.queue_declare(
        queue,
        arguments={
            "x-message-ttl": 20,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
        },
    )
    channel.basic_publish("", queue, b"loop")
    assert wait_for_count(channel, queue, 0) == 0


# -- bounds --------------------------------------------------------------------------------


def test_drop_head_dead_letters_the_oldest(connect: Connect, names: Names) -> None:
    channel = connect().channel()
    work, dead = dead_letter_setup(channel, names, **{"x-max-length": 2})
    for body in (b"1", b"2", b"3"):
        channel.basic_publish("", work, body)
    assert [body for body, _ in drain(channel, work)] == [b"2", b"3"]
    [(body, properties)] = drain(channel, dead)
    assert body == b"1" and properties.headers["x-death"][0]["reason"] == "maxlen"


def test_reject_publish_nacks_a_confirming_publisher(connect: Connect, names: Names) -> None:
    channel = connect().channel()
    queue = names()
    channel.queue_declare(
        queue, arguments={"x-max-length-bytes": 10, "x-overflow": "reject-publish"}
    )
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"0123456789")
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", queue, b"x")
    assert [body for body, _ in drain(channel, queue)] == [b"0123456789"]


# -- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_delivery_limit_and_delivery_count(connect: Connect, names: Names, queue_type: str) -> None:
    channel = connect().channel()
    work, dead = names("work"), names("dead")
    channel.queue_declare(dead, durable=True)
    channel.queue_declare(
        work,
        durable=True,
        arguments={
            "x-queue-type": queue_type,
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead,
        },
    )
    channel.basic_publish("", work, b"m")
    counts = []
    for _ in range(3):
        method, properties, _ = channel.basic_get(work)
        counts.append((properties.headers or {}).get("x-delivery-count"))
        channel.basic_nack(method.delivery_tag, requeue=True)
    assert counts[1:] == [1, 2]
    assert wait_for_count(channel, dead, 1) == 1
    [(_, properties)] = drain(channel, dead)
    assert properties.headers["x-death"][0]["reason"] == "delivery_limit"


def test_quorum_queue_rules(connect: Connect, names: Names) -> None:
    connection = connect()
    queue = names()
    cases = [
        ({"durable": False}, "invalid property 'non-durable' for queue '{q}' in vhost '/'"),
        (
            {"durable": True, "auto_delete": True},
            "invalid property 'auto-delete' for queue '{q}' in vhost '/'",
        ),
        (
            {"durable": True, "exclusive": True},
            "invalid property 'exclusive-owner' for queue '{q}' in vhost '/'",
        ),
    ]
    for options, text in cases:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            connection.channel().queue_declare(
                queue, arguments={"x-queue-type": "quorum"}, **options
            )
        assert closed.value.args == (406, "PRECONDITION_FAILED - " + text.format(q=queue))


# -- consumers ------------------------------------------------------------------------------


def test_single_active_consumer_hands_over_in_order(connect: Connect, names: Names) -> None:
    first, second = connect().channel(), connect().channel()
    queue = names()
    first.queue_declare(queue, arguments={"x-single-active-consumer": True})
    got: dict[str, list[bytes]] = {"first": [], "second": []}
    first.basic_qos(prefetch_count=10)
    first.basic_consume(queue, lambda ch, m, p, body: got["first"].append(body))
    second.basic_consume(queue, lambda ch, m, p, body: got["second"].append(body), auto_ack=True)
    for n in range(4):
        first.basic_publish("", queue, b"%d" % n)
    deadline = time.monotonic() + 5
    while len(got["first"]) < 4 and time.monotonic() < deadline:
        first.connection.process_data_events(time_limit=0.05)
    second.connection.process_data_events(time_limit=0.1)
    assert got == {"first": [b"0", b"1", b"2", b"3"], "second": []}
    first.close()  # unacked: requeued, in order, to the next consumer
    deadline = time.monotonic() + 5
    while len(got["second"]) < 4 and time.monotonic() < deadline:
        second.connection.process_data_events(time_limit=0.05)
    assert got["second"] == [b"0", b"1", b"2", b"3"]


def test_consumer_timeout_closes_the_channel_and_requeues(connect: Connect, names: Names) -> None:
    channel = connect().channel()
    queue = names()
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"slow")
    reasons: list[Any] = []
    channel._impl.add_on_close_callback(lambda _channel, reason: reasons.append(reason))
    channel.basic_consume(queue, lambda *args: None, arguments={"x-consumer-timeout": 200})
    deadline = time.monotonic() + 10
    while not reasons and time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=0.05)
    assert [(reason.reply_code, reason.reply_text) for reason in reasons] == [
        (
            406,
            "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout "
            "value used: 200 ms. This timeout value can be configured, see consumers doc guide "
            "to learn more",
        )
    ]
    other = connect().channel()
    assert [body for body, _ in drain(other, queue)] == [b"slow"]


# -- delayed messages ------------------------------------------------------------------------


def test_delayed_messages_arrive_in_due_order(connect: Connect, names: Names) -> None:
    channel = connect().channel()
    exchange, queue = names("x"), names()
    channel.exchange_declare(exchange, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    channel.queue_declare(queue)
    channel.queue_bind(queue, exchange, "k")
    channel.confirm_delivery()
    for delay in (150, 50, 100, 0):
        channel.basic_publish(exchange, "k", b"%d" % delay, BP(headers={"x-delay": delay}))
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish(exchange, "other", b"x", BP(headers={"x-delay": 50}), mandatory=True)
    assert wait_for_count(channel, queue, 4) == 4
    assert [body for body, _ in drain(channel, queue)] == [b"0", b"50", b"100", b"150"]


def test_delayed_exchange_needs_a_delayed_type(connect: Connect, names: Names) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        connect().channel().exchange_declare(names("x"), "x-delayed-message")
    assert closed.value.args == (
        406,
        "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange "
        "type",
    )


# -- across a restart ------------------------------------------------------------------------


def test_durable_features_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_broker(store=DiskStore(data)) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.exchange_declare(
            "delayed", "x-delayed-message", durable=True, arguments={"x-delayed-type": "fanout"}
        )
        channel.queue_declare("later", durable=True)
        channel.queue_bind("later", "delayed")
        channel.basic_publish("delayed", "", b"due", BP(delivery_mode=2, headers={"x-delay": 300}))
        channel.queue_declare("dead", durable=True)
        channel.queue_declare(
            "short",
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"},
        )
        channel.basic_publish("", "short", b"ttl", BP(delivery_mode=2, expiration="200"))
        channel.queue_declare("limited", durable=True, arguments={"x-delivery-limit": 5})
        channel.basic_publish("", "limited", b"retry", BP(delivery_mode=2))
        method, _, _ = channel.basic_get("limited")
        channel.basic_nack(method.delivery_tag, requeue=True)
        connection.close()
    with running_broker(store=DiskStore(data)) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        assert wait_for_count(channel, "later", 1) == 1
        assert wait_for_count(channel, "dead", 1) == 1
        assert wait_for_count(channel, "short", 0) == 0
        method, properties, body = channel.basic_get("limited", auto_ack=True)
        assert body == b"retry" and method.redelivered
        assert properties.headers["x-delivery-count"] == 1
        connection.close()


# -- values at the edges of their ranges -------------------------------------------------------


def test_huge_delays_and_cache_ttls_are_cut_to_their_limits(tmp_path: Path) -> None:
    """Past their limits (2^32-1 ms for x-delay, ten years for a de-duplication TTL)
    values are cut to the limit, stored, and confirmed: no internal error."""
    with running_broker(store=DiskStore(tmp_path / "data")) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.exchange_declare(
            "far", "x-delayed-message", durable=True, arguments={"x-delayed-type": "fanout"}
        )
        channel.exchange_declare(
            "once",
            "x-message-deduplication",
            durable=True,
            arguments={"x-cache-size": 10, "x-cache-persistence": "disk"},
        )
        channel.queue_declare("held", durable=True)
        channel.queue_bind("held", "far")
        channel.queue_bind("held", "once")
        channel.basic_publish(
            "far", "", b"later", BP(delivery_mode=2, headers={"x-delay": 2**63 - 1})
        )
        headers = {"x-deduplication-header": "k", "x-cache-ttl": 2**63 - 1}
        channel.basic_publish("once", "", b"first", BP(delivery_mode=2, headers=headers))
        with pytest.raises(pika.exceptions.UnroutableError):
            channel.basic_publish("once", "", b"again", BP(headers=headers), mandatory=True)
        assert [body for body, _ in drain(channel, "held")] == [b"first"]
        connection.close()


@pytest.mark.parametrize("argument", ["x-message-ttl", "x-expires"])
def test_queue_ttls_above_ten_years_are_refused(
    connect: Connect, names: Names, argument: str
) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        connect().channel().queue_declare(names(), arguments={argument: 315_360_000_001})
    assert closed.value.args[0] == 406
    assert closed.value.args[1].endswith(": {value_too_large,315360000001}")
