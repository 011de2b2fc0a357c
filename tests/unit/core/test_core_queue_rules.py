"""Queue rules as RabbitMQ has them: priorities, TTLs, x-expires, bounds, dead letters,
delivery limits, single active consumer, quorum declaration rules; on a manual clock."""

from __future__ import annotations

import pickle
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from core_support import (
    FakeProperties,
    RecordingSink,
    consume,
    make_broker,
    open_channel,
    publish,
)

from postoffice.core import Broker, Channel, Queue
from postoffice.core.clock import ManualClock
from postoffice.core.ruled import RuledQueue
from postoffice.errors import AMQPError, PreconditionFailed
from postoffice.store import MemoryStore

START = 1_700_000_000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def broker(clock: ManualClock) -> Broker:
    return make_broker(clock=clock)


@pytest.fixture
def pair(broker: Broker) -> tuple[Channel, RecordingSink]:
    return open_channel(broker)


@pytest.fixture
def channel(pair: tuple[Channel, RecordingSink]) -> Channel:
    return pair[0]


@pytest.fixture
def sink(pair: tuple[Channel, RecordingSink]) -> RecordingSink:
    return pair[1]


def raises(error: type[AMQPError], text: str) -> Any:
    return pytest.raises(error, match=f"^{re.escape(text)}$")


def declare(channel: Channel, name: str = "q", /, **arguments: Any) -> Queue:
    queue = channel.declare_queue(name, arguments=arguments)
    assert queue is not None
    return queue


def dead_letter_queue(channel: Channel, exchange: str = "dlx", queue: str = "dlq") -> None:
    """A fanout exchange and a queue behind it, to catch dead letters."""
    channel.vhost.declare_exchange(exchange, "fanout")
    declare(channel, queue)
    channel.vhost.bind_queue(queue, exchange, "", None, channel.connection)


def tick(broker: Broker, clock: ManualClock, seconds: float) -> None:
    clock.advance(seconds)
    broker.timers.run_due()


def drain(channel: Channel, queue: str) -> list[bytes]:
    """Every message left in the queue, by basic.get with no_ack."""
    bodies = []
    while (got := channel.get(queue, no_ack=True)) is not None:
        bodies.append(got[2].body)
    return bodies


def drain_messages(channel: Channel, queue: str) -> list[Any]:
    messages = []
    while (got := channel.get(queue, no_ack=True)) is not None:
        messages.append(got[2])
    return messages


def fill(channel: Channel, queue: str, count: int, **properties: Any) -> None:
    for n in range(count):
        publish(channel, "", queue, b"m%d" % n, properties=FakeProperties(**properties))


def send(channel: Channel, queue: str, body: bytes, **properties: Any) -> None:
    publish(channel, "", queue, body, properties=FakeProperties(**properties))


def deaths(message: Any) -> list[tuple[str, str, int]]:
    return [(d["queue"], d["reason"], d["count"]) for d in message.properties.headers["x-death"]]


# -- priorities -------------------------------------------------------------------------


def test_higher_priorities_first_and_publish_order_within_a_priority(channel: Channel) -> None:
    declare(channel, **{"x-max-priority": 5})
    for body, priority in [
        (b"a0", None),
        (b"b3", 3),
        (b"c5", 5),
        (b"d3", 3),
        (b"e0", 0),
        (b"f9", 9),  # above the maximum: counts as 5
        (b"g1", 1),
    ]:
        send(channel, "q", body, priority=priority)
    assert channel.queue("q").message_count == 7
    assert drain(channel, "q") == [b"c5", b"f9", b"b3", b"d3", b"g1", b"a0", b"e0"]


def test_priorities_ignored_without_max_priority(channel: Channel) -> None:
    declare(channel, **{"x-message-ttl": 60_000})
    send(channel, "q", b"low", priority=0)
    send(channel, "q", b"high", priority=9)
    assert drain(channel, "q") == [b"low", b"high"]


def test_consumer_gets_priority_order_after_a_backlog(
    channel: Channel, sink: RecordingSink
) -> None:
    declare(channel, **{"x-max-priority": 2})
    send(channel, "q", b"p0", priority=0)
    send(channel, "q", b"p2", priority=2)
    send(channel, "q", b"p1", priority=1)
    consume(channel, "q", "c", no_ack=True)
    assert sink.bodies() == [b"p2", b"p1", b"p0"]


def test_expired_high_priority_messages_are_skipped_and_order_holds(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-max-priority": 9, "x-dead-letter-exchange": "dlx"})
    send(channel, "q", b"low-keep", priority=1)
    send(channel, "q", b"high-short", priority=9, expiration="1000")
    send(channel, "q", b"high-keep", priority=9)
    send(channel, "q", b"mid-short", priority=5, expiration="2000")
    send(channel, "q", b"mid-keep", priority=5, expiration="5000")
    tick(broker, clock, 1.0)
    assert drain(channel, "dlq") == [b"high-short"]
    assert channel.queue("q").message_count == 4
    tick(broker, clock, 1.0)
    assert drain(channel, "dlq") == [b"mid-short"]
    assert drain(channel, "q") == [b"high-keep", b"mid-keep", b"low-keep"]


# -- message TTL ------------------------------------------------------------------------


def test_queue_ttl_expires_messages_on_time_as_dead_letters(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-message-ttl": 1000, "x-dead-letter-exchange": "dlx"})
    send(channel, "q", b"m0")
    tick(broker, clock, 0.5)
    send(channel, "q", b"m1")
    tick(broker, clock, 0.499)
    assert channel.queue("q").message_count == 2
    tick(broker, clock, 0.001)
    assert channel.queue("q").message_count == 1
    tick(broker, clock, 0.5)
    assert channel.queue("q").message_count == 0
    dead = drain_messages(channel, "dlq")
    assert [m.body for m in dead] == [b"m0", b"m1"]
    assert [deaths(m) for m in dead] == [[("q", "expired", 1)], [("q", "expired", 1)]]


def test_expired_messages_without_a_dead_letter_exchange_are_dropped(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    declare(channel, **{"x-message-ttl": 1000})
    fill(channel, "q", 3)
    tick(broker, clock, 1)
    assert channel.queue("q").message_count == 0
    assert drain(channel, "q") == []


def test_a_per_message_ttl_not_at_the_head_expires_on_time(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    # Deliberately better than RabbitMQ, which expires messages only at the head.
    dead_letter_queue(channel)
    declare(channel, **{"x-dead-letter-exchange": "dlx"})
    send(channel, "q", b"head")
    send(channel, "q", b"short", expiration="1000")
    send(channel, "q", b"tail")
    tick(broker, clock, 0.999)
    assert channel.queue("q").message_count == 3
    tick(broker, clock, 0.001)
    assert channel.queue("q").message_count == 2
    assert drain(channel, "dlq") == [b"short"]
    assert drain(channel, "q") == [b"head", b"tail"]


def test_the_shorter_of_queue_ttl_and_expiration_applies(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    declare(channel, **{"x-message-ttl": 2000})
    send(channel, "q", b"longer", expiration="5000")
    send(channel, "q", b"shorter", expiration="500")
    send(channel, "q", b"queue-ttl")
    tick(broker, clock, 0.5)
    assert channel.queue("q").message_count == 2
    tick(broker, clock, 1.5)
    assert channel.queue("q").message_count == 0


def test_a_plain_queue_is_promoted_by_a_per_message_ttl(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    queue = declare(channel)
    assert not isinstance(queue, RuledQueue)
    send(channel, "q", b"m0")
    send(channel, "q", b"m1", expiration="1000")
    send(channel, "q", b"m2")
    assert isinstance(channel.queue("q"), RuledQueue)
    assert channel.queue("q").message_count == 3
    tick(broker, clock, 1)
    assert drain(channel, "q") == [b"m0", b"m2"]


def test_deliveries_from_before_promotion_requeue_in_place(
    channel: Channel, sink: RecordingSink
) -> None:
    declare(channel)
    fill(channel, "q", 2)
    first = channel.get("q", no_ack=False)
    assert first is not None
    send(channel, "q", b"ttl", expiration="60000")
    channel.nack(first[0], False, True)
    assert [(entry.body, redelivered) for entry, redelivered in _waiting(channel, "q")] == [
        (b"m0", True),
        (b"m1", False),
        (b"ttl", False),
    ]


def _waiting(channel: Channel, queue: str) -> list[tuple[Any, bool]]:
    got = []
    while (result := channel.get(queue, no_ack=True)) is not None:
        _, entry, message, _ = result
        got.append((message, entry.redelivered))
    return got


def test_ttl_zero_reaches_a_consumer_that_can_take_it_now(
    channel: Channel, sink: RecordingSink
) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-message-ttl": 0, "x-dead-letter-exchange": "dlx"})
    send(channel, "q", b"nobody")
    consume(channel, "q", "c", no_ack=True)
    send(channel, "q", b"taken")
    assert sink.bodies("c") == [b"taken"]
    assert drain(channel, "dlq") == [b"nobody"]
    assert channel.queue("q").message_count == 0


def test_expiration_zero_is_dropped_when_the_consumer_is_full(
    channel: Channel, sink: RecordingSink
) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-dead-letter-exchange": "dlx"})
    channel.qos(0, 1, False)
    consume(channel, "q", "c")
    send(channel, "q", b"first", expiration="0")
    send(channel, "q", b"second", expiration="0")
    assert sink.bodies("c") == [b"first"]
    assert drain(channel, "dlq") == [b"second"]
    channel.ack(1, False)
    assert sink.bodies("c") == [b"first"]


def test_expired_messages_are_never_got_even_before_their_timer_runs(
    clock: ManualClock, channel: Channel
) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-message-ttl": 1000, "x-dead-letter-exchange": "dlx"})
    send(channel, "q", b"old")
    clock.advance(0.5)
    send(channel, "q", b"young")
    clock.advance(0.5)  # no run_due: only the read sees the deadline
    assert drain(channel, "q") == [b"young"]
    assert drain(channel, "dlq") == [b"old"]


def test_expired_messages_are_never_delivered_even_before_their_timer_runs(
    clock: ManualClock, channel: Channel, sink: RecordingSink
) -> None:
    declare(channel)
    send(channel, "q", b"old", expiration="1000")
    send(channel, "q", b"forever")
    send(channel, "q", b"old2", expiration="1000")
    clock.advance(1)
    consume(channel, "q", "c", no_ack=True)
    assert sink.bodies() == [b"forever"]


def test_a_message_requeued_after_its_deadline_is_dead_lettered_as_expired(
    clock: ManualClock, channel: Channel, sink: RecordingSink
) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-message-ttl": 1000, "x-dead-letter-exchange": "dlx"})
    consume(channel, "q", "c")
    send(channel, "q", b"m0")
    clock.advance(2)
    channel.nack(1, False, True)
    assert sink.bodies("c") == [b"m0"]
    assert channel.queue("q").message_count == 0
    (dead,) = drain_messages(channel, "dlq")
    assert deaths(dead) == [("q", "expired", 1)]


def test_a_message_requeued_in_time_keeps_its_deadline(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    declare(channel, **{"x-message-ttl": 1000})
    send(channel, "q", b"m0")
    got = channel.get("q", no_ack=False)
    assert got is not None
    tick(broker, clock, 0.5)
    channel.nack(got[0], False, True)
    assert channel.queue("q").message_count == 1
    tick(broker, clock, 0.5)
    assert channel.queue("q").message_count == 0


def test_an_invalid_expiration_is_refused_at_publish(channel: Channel) -> None:
    declare(channel)
    with raises(PreconditionFailed, "invalid expiration 'abc': no_integer"):
        send(channel, "q", b"x", expiration="abc")
    with raises(PreconditionFailed, "invalid expiration '1.5': {leftover_string,\".5\"}"):
        send(channel, "q", b"x", expiration="1.5")
    with raises(PreconditionFailed, "invalid expiration '-1': {value_negative,-1}"):
        send(channel, "q", b"x", expiration="-1")
    assert channel.queue("q").message_count == 0


# -- x-expires --------------------------------------------------------------------------


def test_an_unused_queue_is_deleted_after_x_expires(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    declare(channel, **{"x-expires": 1000})
    send(channel, "q", b"publishing does not count as use")
    tick(broker, clock, 0.999)
    assert "q" in channel.vhost.queues
    tick(broker, clock, 0.001)
    assert "q" not in channel.vhost.queues


def test_a_consumer_keeps_the_queue_and_expiry_counts_from_its_cancel(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    declare(channel, **{"x-expires": 1000})
    consume(channel, "q", "c")
    tick(broker, clock, 5)
    assert "q" in channel.vhost.queues
    channel.cancel("c")
    tick(broker, clock, 0.999)
    assert "q" in channel.vhost.queues
    tick(broker, clock, 0.001)
    assert "q" not in channel.vhost.queues


def test_a_redeclare_or_a_get_renews_the_lease(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    declare(channel, **{"x-expires": 1000})
    tick(broker, clock, 0.8)
    declare(channel, **{"x-expires": 1000})
    tick(broker, clock, 0.8)
    assert "q" in channel.vhost.queues
    assert channel.get("q", no_ack=True) is None
    tick(broker, clock, 0.999)
    assert "q" in channel.vhost.queues
    tick(broker, clock, 0.001)
    assert "q" not in channel.vhost.queues


def test_an_expired_queue_cancels_nobody_and_drops_its_messages(
    broker: Broker, clock: ManualClock, channel: Channel, sink: RecordingSink
) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-expires": 1000, "x-dead-letter-exchange": "dlx"})
    fill(channel, "q", 2)
    tick(broker, clock, 1)
    assert "q" not in channel.vhost.queues
    assert drain(channel, "dlq") == []  # deleting a queue does not dead-letter
    assert sink.events == []


# -- bounds -----------------------------------------------------------------------------


def test_drop_head_dead_letters_the_oldest_with_reason_maxlen(channel: Channel) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-max-length": 2, "x-dead-letter-exchange": "dlx"})
    fill(channel, "q", 5)
    assert channel.queue("q").message_count == 2
    dead = drain_messages(channel, "dlq")
    assert [m.body for m in dead] == [b"m0", b"m1", b"m2"]
    assert {tuple(deaths(m)) for m in dead} == {(("q", "maxlen", 1),)}
    assert drain(channel, "q") == [b"m3", b"m4"]


def test_max_length_bytes_counts_bodies(channel: Channel) -> None:
    declare(channel, **{"x-max-length-bytes": 10})
    send(channel, "q", b"aaaa")
    send(channel, "q", b"bbbb")
    send(channel, "q", b"cc")  # exactly 10 bytes: all stay
    assert channel.queue("q").message_count == 3
    send(channel, "q", b"d")  # 11 bytes: the head goes
    assert drain(channel, "q") == [b"bbbb", b"cc", b"d"]


def test_max_length_zero_still_feeds_a_ready_consumer(
    channel: Channel, sink: RecordingSink
) -> None:
    declare(channel, **{"x-max-length": 0})
    send(channel, "q", b"dropped")
    consume(channel, "q", "c", no_ack=True)
    send(channel, "q", b"delivered")
    assert sink.bodies() == [b"delivered"]


def test_drop_head_with_priorities_drops_the_next_to_be_delivered(channel: Channel) -> None:
    declare(channel, **{"x-max-length": 2, "x-max-priority": 5})
    send(channel, "q", b"low")
    send(channel, "q", b"high", priority=5)
    send(channel, "q", b"mid", priority=3)
    assert drain(channel, "q") == [b"mid", b"low"]


def test_reject_publish_drops_new_messages_silently_without_confirms(
    channel: Channel, sink: RecordingSink
) -> None:
    dead_letter_queue(channel)
    declare(
        channel,
        **{"x-max-length": 2, "x-overflow": "reject-publish", "x-dead-letter-exchange": "dlx"},
    )
    fill(channel, "q", 4)
    assert sink.events == []
    assert drain(channel, "dlq") == []  # reject-publish does not dead-letter
    assert drain(channel, "q") == [b"m0", b"m1"]


def test_reject_publish_nacks_with_confirms_and_accepts_again_when_room(
    channel: Channel, sink: RecordingSink
) -> None:
    declare(channel, **{"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.select_confirm()
    send(channel, "q", b"m0")
    send(channel, "q", b"m1")
    assert drain(channel, "q") == [b"m0"]
    send(channel, "q", b"m2")
    assert sink.events == [("confirm", 1, True), ("confirm", 2, False), ("confirm", 3, True)]
    assert drain(channel, "q") == [b"m2"]


def test_reject_publish_by_bytes_nacks_a_persistent_message_to_a_durable_queue(
    broker: Broker, channel: Channel, sink: RecordingSink
) -> None:
    channel.declare_queue(
        "q", durable=True, arguments={"x-max-length-bytes": 4, "x-overflow": "reject-publish"}
    )
    channel.select_confirm()
    send(channel, "q", b"abcd", delivery_mode=2)
    send(channel, "q", b"e", delivery_mode=2)
    assert sink.events == [("confirm", 1, True), ("confirm", 2, False)]
    assert [i[0] for i in broker.store.index("/", "q")] == [1]  # the refused one was settled


def test_one_full_queue_nacks_the_publish_though_another_took_it(
    channel: Channel, sink: RecordingSink
) -> None:
    channel.vhost.declare_exchange("fan", "fanout")
    declare(channel, "full", **{"x-max-length": 0, "x-overflow": "reject-publish"})
    declare(channel, "open")
    for name in ("full", "open"):
        channel.vhost.bind_queue(name, "fan", "", None, channel.connection)
    channel.select_confirm()
    publish(channel, "fan", "", b"m")
    assert sink.events == [("confirm", 1, False)]
    assert drain(channel, "open") == [b"m"]


def test_reject_publish_dlx_dead_letters_the_refused_message_and_nacks(
    channel: Channel, sink: RecordingSink
) -> None:
    dead_letter_queue(channel)
    declare(
        channel,
        **{"x-max-length": 1, "x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": "dlx"},
    )
    channel.select_confirm()
    send(channel, "q", b"kept")
    send(channel, "q", b"refused")
    assert sink.events == [("confirm", 1, True), ("confirm", 2, False)]
    (dead,) = drain_messages(channel, "dlq")
    assert dead.body == b"refused"
    assert deaths(dead) == [("q", "maxlen", 1)]
    assert drain(channel, "q") == [b"kept"]


# -- delivery limits ----------------------------------------------------------------------


def delivery_counts(sink: RecordingSink) -> list[tuple[bytes, bool, Any]]:
    return [
        (d.body, d.redelivered, (d.message.properties.headers or {}).get("x-delivery-count"))
        for d in sink.deliveries
    ]


def test_redeliveries_count_up_and_past_the_limit_the_message_is_dead_lettered(
    channel: Channel, sink: RecordingSink
) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-delivery-limit": 2, "x-dead-letter-exchange": "dlx"})
    send(channel, "q", b"m0")
    consume(channel, "q", "c")
    for tag in (1, 2, 3):
        channel.nack(tag, False, True)
    assert delivery_counts(sink) == [(b"m0", False, None), (b"m0", True, 1), (b"m0", True, 2)]
    assert channel.queue("q").message_count == 0
    (dead,) = drain_messages(channel, "dlq")
    assert deaths(dead) == [("q", "delivery_limit", 1)]
    assert type(sink.deliveries[1].message.properties.headers["x-delivery-count"]).__name__ == (
        "Long"
    )


def test_requeued_messages_keep_their_place_and_count_each(
    channel: Channel, sink: RecordingSink
) -> None:
    declare(channel, **{"x-delivery-limit": 5})
    fill(channel, "q", 3)
    channel.qos(0, 2, False)
    consume(channel, "q", "c")
    channel.nack(2, True, True)  # m0 and m1 back, before m2
    assert [(b, c) for b, _, c in delivery_counts(sink)] == [
        (b"m0", None),
        (b"m1", None),
        (b"m0", 1),
        (b"m1", 1),
    ]
    channel.ack(4, True)
    assert [(b, c) for b, _, c in delivery_counts(sink)][4:] == [(b"m2", None)]


def test_a_channel_close_counts_as_a_return(broker: Broker, channel: Channel) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-delivery-limit": 1, "x-dead-letter-exchange": "dlx"})
    send(channel, "q", b"m0")
    connection = channel.connection
    for number in (2, 3):
        other, _ = open_channel(broker, number, connection)
        consume(other, "q", "c")
        connection.close_channel(number)
    last, sink = open_channel(broker, 4, connection)
    consume(last, "q", "c")
    assert sink.deliveries == []
    assert [m.body for m in drain_messages(channel, "dlq")] == [b"m0"]


def test_the_count_survives_in_the_header_after_a_channel_close(broker: Broker) -> None:
    first, _ = open_channel(broker)
    declare(first, **{"x-delivery-limit": 3})
    send(first, "q", b"m0")
    consume(first, "q", "c")
    first.connection.close_channel(1)
    second, sink = open_channel(broker, 2, first.connection)
    consume(second, "q", "c")
    assert delivery_counts(sink) == [(b"m0", True, 1)]


def test_delivery_limit_zero_dead_letters_on_the_first_return(channel: Channel) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-delivery-limit": 0, "x-dead-letter-exchange": "dlx"})
    send(channel, "q", b"m0")
    got = channel.get("q", no_ack=False)
    assert got is not None
    channel.reject(got[0], True)
    assert channel.queue("q").message_count == 0
    assert drain(channel, "dlq") == [b"m0"]


def test_a_get_carries_the_delivery_count_even_before_any_return(channel: Channel) -> None:
    # As RabbitMQ's quorum queues (seen on 3.10.8): basic.get always has the header,
    # a consumer's first delivery does not.
    declare(channel, **{"x-delivery-limit": 3})
    send(channel, "q", b"m0")
    got = channel.get("q", no_ack=False)
    assert got is not None
    assert got[2].properties.headers == {"x-delivery-count": 0}
    channel.nack(got[0], False, True)
    again = channel.get("q", no_ack=True)
    assert again is not None
    assert again[2].properties.headers == {"x-delivery-count": 1}


def test_quorum_queues_count_returns_without_a_limit(channel: Channel, sink: RecordingSink) -> None:
    channel.declare_queue("q", durable=True, arguments={"x-queue-type": "quorum"})
    send(channel, "q", b"m0")
    consume(channel, "q", "c")
    for tag in range(1, 6):
        channel.nack(tag, False, True)
    assert [c for _, _, c in delivery_counts(sink)] == [None, 1, 2, 3, 4, 5]


def test_reject_without_requeue_dead_letters_as_rejected(channel: Channel) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-dead-letter-exchange": "dlx"})
    fill(channel, "q", 2)
    consume(channel, "q", "c")
    channel.reject(2, False)
    channel.nack(1, False, False)
    dead = drain_messages(channel, "dlq")
    assert [m.body for m in dead] == [b"m1", b"m0"]
    assert [deaths(m) for m in dead] == [[("q", "rejected", 1)]] * 2


# -- single active consumer -----------------------------------------------------------


def sac(channel: Channel) -> None:
    declare(channel, **{"x-single-active-consumer": True})


def test_only_the_first_consumer_receives(broker: Broker) -> None:
    one, sink1 = open_channel(broker, 1)
    two, sink2 = open_channel(broker, 2, one.connection)
    sac(one)
    consume(one, "q", "a", no_ack=True)
    consume(two, "q", "b", no_ack=True)
    fill(one, "q", 4)
    assert sink1.bodies() == [b"m0", b"m1", b"m2", b"m3"]
    assert sink2.bodies() == []


def test_an_active_consumer_without_room_holds_everything_back(broker: Broker) -> None:
    one, sink1 = open_channel(broker, 1)
    two, sink2 = open_channel(broker, 2, one.connection)
    sac(one)
    one.qos(0, 1, False)
    consume(one, "q", "a")
    consume(two, "q", "b")
    fill(one, "q", 3)
    assert sink1.bodies() == [b"m0"]
    assert sink2.bodies() == []
    assert one.queue("q").message_count == 2


def test_a_cancelled_active_consumer_hands_over_once_its_deliveries_are_settled(
    broker: Broker,
) -> None:
    """Never two consumers at work at once: the next one starts when the cancelled
    one's unacked deliveries are settled; returned ones come first, in order (as
    RabbitMQ does when the channel closes; RabbitMQ 3.10 waits for the close even
    after the acks, docs/compatibility.md)."""
    one, sink1 = open_channel(broker, 1)
    two, sink2 = open_channel(broker, 2, one.connection)
    sac(one)
    fill(one, "q", 4)
    one.qos(0, 2, False)
    consume(one, "q", "a")
    consume(two, "q", "b")
    assert sink1.bodies() == [b"m0", b"m1"]
    one.cancel("a")
    assert sink2.bodies() == []
    one.nack(2, True, True)
    assert [(d.body, d.redelivered) for d in sink2.deliveries] == [
        (b"m0", True),
        (b"m1", True),
        (b"m2", False),
        (b"m3", False),
    ]


def test_on_channel_close_the_next_consumer_gets_everything_in_queue_order(
    broker: Broker,
) -> None:
    one, sink1 = open_channel(broker, 1)
    two, sink2 = open_channel(broker, 2, one.connection)
    sac(one)
    fill(one, "q", 4)
    one.qos(0, 2, False)
    consume(one, "q", "a")
    consume(two, "q", "b")
    assert sink1.bodies() == [b"m0", b"m1"]
    one.connection.close_channel(1)
    # As RabbitMQ: the closing channel's consumers go, its unacked come back, then the
    # queue runs; the new active consumer sees the queue in its order.
    assert [(d.body, d.redelivered) for d in sink2.deliveries] == [
        (b"m0", True),
        (b"m1", True),
        (b"m2", False),
        (b"m3", False),
    ]


def test_on_channel_close_without_unacked_the_next_consumer_still_takes_over(
    broker: Broker,
) -> None:
    one, _ = open_channel(broker, 1)
    two, sink2 = open_channel(broker, 2, one.connection)
    sac(one)
    one.flow(False)  # the active consumer cannot take anything
    consume(one, "q", "a")
    consume(two, "q", "b", no_ack=True)
    fill(two, "q", 2)
    assert sink2.bodies() == []
    one.connection.close_channel(1)
    assert sink2.bodies() == [b"m0", b"m1"]


def test_a_consumer_timeout_hands_over_to_the_next_consumer(
    clock: ManualClock,
) -> None:
    broker = make_broker(clock=clock, consumer_timeout=0)
    one, sink1 = open_channel(broker, 1)
    two, sink2 = open_channel(broker, 2, one.connection)
    sac(one)
    fill(one, "q", 3)
    one.qos(0, 1, False)
    consume(one, "q", "a", arguments={"x-consumer-timeout": 1000})
    consume(two, "q", "b", no_ack=True)
    for _ in range(12):
        tick(broker, clock, 0.1)
    assert sink1.kinds() == ["deliver", "failed"]
    assert sink1.events[1][1] == 406
    one.connection.close_channel(1)  # what the server does on fail
    assert sink2.bodies() == [b"m0", b"m1", b"m2"]
    assert sink2.deliveries[0].redelivered


# -- dead-letter headers through the broker ---------------------------------------------


def test_x_death_layout_of_an_expired_message(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    dead_letter_queue(channel)
    channel.vhost.declare_exchange("src", "direct")
    declare(channel, "q", **{"x-dead-letter-exchange": "dlx"})
    channel.vhost.bind_queue("q", "src", "rk", None, channel.connection)
    publish(
        channel,
        "src",
        "rk",
        b"body",
        properties=FakeProperties(
            headers={"zz": 1, "CC": ["other"], "aa": "x"}, expiration="1500", priority=3
        ),
    )
    tick(broker, clock, 1.5)
    (dead,) = drain_messages(channel, "dlq")
    assert dead.exchange == "dlx"
    assert dead.routing_key == "rk"
    assert dead.body == b"body"
    properties = dead.properties
    assert properties.expiration is None
    assert properties.priority == 3
    headers = properties.headers
    assert list(headers) == [
        "CC",
        "aa",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "zz",
    ]
    assert headers["CC"] == ["other"]
    assert headers["x-first-death-exchange"] == "src"
    assert headers["x-first-death-queue"] == "q"
    assert headers["x-first-death-reason"] == "expired"
    (death,) = headers["x-death"]
    assert list(death.items()) == [
        ("count", 1),
        ("reason", "expired"),
        ("queue", "q"),
        ("time", datetime.fromtimestamp(int(START + 1.5), UTC)),
        ("exchange", "src"),
        ("routing-keys", ["rk", "other"]),
        ("original-expiration", "1500"),
    ]


def test_a_dead_letter_routing_key_replaces_the_key_and_removes_cc(channel: Channel) -> None:
    channel.vhost.declare_exchange("dlx", "direct")
    declare(channel, "by-key")
    declare(channel, "by-cc")
    channel.vhost.bind_queue("by-key", "dlx", "dead", None, channel.connection)
    channel.vhost.bind_queue("by-cc", "dlx", "c1", None, channel.connection)
    declare(channel, "q", **{"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead"})
    send(channel, "q", b"m", headers={"CC": ["c1", "c2"]})
    got = channel.get("q", no_ack=False)
    assert got is not None
    channel.reject(got[0], False)
    (dead,) = drain_messages(channel, "by-key")
    assert drain(channel, "by-cc") == []
    assert dead.routing_key == "dead"
    assert "CC" not in dead.properties.headers
    assert dead.properties.headers["x-death"][0]["routing-keys"] == ["q", "c1", "c2"]


def test_without_a_dead_letter_routing_key_cc_routes_the_dead_letter_too(
    channel: Channel,
) -> None:
    channel.vhost.declare_exchange("dlx", "direct")
    declare(channel, "by-key")
    declare(channel, "by-cc")
    channel.vhost.bind_queue("by-key", "dlx", "q", None, channel.connection)
    channel.vhost.bind_queue("by-cc", "dlx", "c1", None, channel.connection)
    declare(channel, "q", **{"x-dead-letter-exchange": "dlx"})
    send(channel, "q", b"m", headers={"CC": ["c1"]})
    got = channel.get("q", no_ack=False)
    assert got is not None
    channel.reject(got[0], False)
    assert drain(channel, "by-key") == [b"m"]
    (via_cc,) = drain_messages(channel, "by-cc")
    assert via_cc.routing_key == "q"
    assert via_cc.properties.headers["CC"] == ["c1"]


def test_repeated_deaths_merge_counts_and_move_to_the_front(channel: Channel) -> None:
    # q1 and q2 dead-letter into each other; a consumer rejects each time, so no cycle.
    for name in ("q1", "q2"):
        channel.vhost.declare_exchange(f"to-{name}", "fanout")
    declare(channel, "q1", **{"x-dead-letter-exchange": "to-q2"})
    declare(channel, "q2", **{"x-dead-letter-exchange": "to-q1"})
    channel.vhost.bind_queue("q2", "to-q2", "", None, channel.connection)
    channel.vhost.bind_queue("q1", "to-q1", "", None, channel.connection)
    send(channel, "q1", b"m")
    for source, target in [("q1", "q2"), ("q2", "q1"), ("q1", "q2"), ("q2", "q1"), ("q1", "q2")]:
        got = channel.get(source, no_ack=False)
        assert got is not None
        channel.reject(got[0], False)
        assert channel.queue(target).message_count == 1
    (final,) = drain_messages(channel, "q2")
    assert deaths(final) == [("q1", "rejected", 3), ("q2", "rejected", 2)]
    headers = final.properties.headers
    assert headers["x-first-death-queue"] == "q1"
    assert headers["x-first-death-reason"] == "rejected"
    assert type(headers["x-death"][0]["count"]).__name__ == "Long"
    assert list(headers["x-death"][0]) == sorted(headers["x-death"][0])


def test_an_automatic_cycle_is_dropped(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    channel.vhost.declare_exchange("loop", "fanout")
    declare(channel, "q", **{"x-message-ttl": 1000, "x-dead-letter-exchange": "loop"})
    declare(channel, "watch")
    channel.vhost.bind_queue("q", "loop", "", None, channel.connection)
    channel.vhost.bind_queue("watch", "loop", "", None, channel.connection)
    send(channel, "q", b"m")
    tick(broker, clock, 1)
    # The copy back into q would close a loop with no rejection: dropped; other
    # queues behind the exchange still get theirs.
    assert channel.queue("q").message_count == 0
    assert drain(channel, "watch") == [b"m"]
    tick(broker, clock, 5)
    assert drain(channel, "watch") == []


def test_a_cycle_with_a_rejection_in_it_goes_on(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    channel.vhost.declare_exchange("to-wait", "fanout")
    channel.vhost.declare_exchange("to-work", "fanout")
    declare(channel, "work", **{"x-dead-letter-exchange": "to-wait"})
    declare(channel, "wait", **{"x-message-ttl": 1000, "x-dead-letter-exchange": "to-work"})
    channel.vhost.bind_queue("wait", "to-wait", "", None, channel.connection)
    channel.vhost.bind_queue("work", "to-work", "", None, channel.connection)
    send(channel, "work", b"m")
    for _ in range(2):
        got = channel.get("work", no_ack=False)
        assert got is not None
        channel.reject(got[0], False)
        assert channel.queue("wait").message_count == 1
        tick(broker, clock, 1)
        assert channel.queue("work").message_count == 1
    (message,) = drain_messages(channel, "work")
    assert deaths(message) == [("wait", "expired", 2), ("work", "rejected", 2)]


def test_a_missing_dead_letter_exchange_drops_the_message(channel: Channel) -> None:
    declare(channel, **{"x-dead-letter-exchange": "nowhere"})
    send(channel, "q", b"m")
    got = channel.get("q", no_ack=False)
    assert got is not None
    channel.reject(got[0], False)
    assert channel.unacked == {}
    assert channel.queue("q").message_count == 0


# -- quorum queue declarations ------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"durable": False}, "invalid property 'non-durable' for queue 'q' in vhost '/'"),
        (
            {"durable": True, "exclusive": True},
            "invalid property 'exclusive-owner' for queue 'q' in vhost '/'",
        ),
        (
            {"durable": True, "auto_delete": True},
            "invalid property 'auto-delete' for queue 'q' in vhost '/'",
        ),
    ],
)
def test_quorum_queues_must_be_durable_shared_and_kept(
    channel: Channel, options: dict[str, Any], text: str
) -> None:
    with raises(PreconditionFailed, text):
        channel.declare_queue("q", arguments={"x-queue-type": "quorum"}, **options)
    assert "q" not in channel.vhost.queues


def test_quorum_queues_refuse_classic_only_arguments(channel: Channel) -> None:
    with raises(
        PreconditionFailed,
        "invalid arg 'x-max-priority' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue",
    ):
        channel.declare_queue(
            "q", durable=True, arguments={"x-queue-type": "quorum", "x-max-priority": 5}
        )


def test_a_durable_quorum_queue_with_its_arguments_is_accepted(channel: Channel) -> None:
    queue = channel.declare_queue(
        "q",
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": 3,
            "x-max-length": 10,
            "x-single-active-consumer": True,
        },
    )
    assert isinstance(queue, RuledQueue)


def test_a_server_named_quorum_queue_is_refused(channel: Channel) -> None:
    with raises(PreconditionFailed, 'Cannot declare a server-named queue for type <<"quorum">>'):
        channel.declare_queue("", durable=True, arguments={"x-queue-type": "quorum"})


# -- restarts ---------------------------------------------------------------------------


def encode(properties: FakeProperties) -> FakeProperties:
    """The fake codec: raw holds the other fields, so a restart reads them back."""
    fields = {
        "headers": properties.headers,
        "delivery_mode": properties.delivery_mode,
        "priority": properties.priority,
        "expiration": properties.expiration,
    }
    return properties.replace(raw=pickle.dumps(fields))


def read_properties(raw: bytes) -> FakeProperties:
    return FakeProperties(**pickle.loads(raw), raw=raw)


def edit_properties(properties: Any, changes: dict[str, Any]) -> Any:
    return encode(properties.replace(**changes))


def start(store: MemoryStore, clock: ManualClock) -> tuple[Broker, Channel, RecordingSink]:
    broker = Broker(
        store=store,
        clock=clock,
        edit_properties=edit_properties,
        read_properties=read_properties,
    )
    channel, sink = open_channel(broker)
    return broker, channel, sink


def persistent(channel: Channel, queue: str, body: bytes, **fields: Any) -> None:
    properties = encode(FakeProperties(delivery_mode=2, **fields))
    publish(channel, "", queue, body, properties=properties)


def test_a_queue_ttl_counts_from_the_publish_across_a_restart(clock: ManualClock) -> None:
    store = MemoryStore()
    _, channel, _ = start(store, clock)
    channel.declare_queue("q", durable=True, arguments={"x-message-ttl": 10_000})
    persistent(channel, "q", b"m0")
    clock.advance(4)
    persistent(channel, "q", b"m1")
    clock.advance(1)
    broker, channel, _ = start(store, clock)
    tick(broker, clock, 4.999)
    assert channel.queue("q").message_count == 2
    tick(broker, clock, 0.001)
    assert channel.queue("q").message_count == 1
    assert drain(channel, "q") == [b"m1"]


def test_a_per_message_ttl_in_a_ruled_queue_counts_from_the_publish_across_a_restart(
    clock: ManualClock,
) -> None:
    store = MemoryStore()
    _, channel, _ = start(store, clock)
    channel.declare_queue("q", durable=True, arguments={"x-max-priority": 2})
    persistent(channel, "q", b"short", expiration="3000")
    persistent(channel, "q", b"kept")
    clock.advance(2)
    broker, channel, _ = start(store, clock)
    tick(broker, clock, 1)
    assert drain(channel, "q") == [b"kept"]


def test_a_per_message_ttl_in_a_plain_durable_queue_survives_a_restart(
    clock: ManualClock,
) -> None:
    store = MemoryStore()
    _, channel, _ = start(store, clock)
    channel.declare_queue("q", durable=True)
    persistent(channel, "q", b"short", expiration="3000")
    persistent(channel, "q", b"kept")
    clock.advance(2)
    broker, channel, _ = start(store, clock)
    tick(broker, clock, 1)
    assert drain(channel, "q") == [b"kept"]


def test_priorities_survive_a_restart(clock: ManualClock) -> None:
    store = MemoryStore()
    _, channel, _ = start(store, clock)
    channel.declare_queue("q", durable=True, arguments={"x-max-priority": 3})
    persistent(channel, "q", b"low", priority=1)
    persistent(channel, "q", b"high", priority=3)
    persistent(channel, "q", b"none")
    _, channel, _ = start(store, clock)
    assert drain(channel, "q") == [b"high", b"low", b"none"]


def test_the_delivery_count_survives_a_restart(clock: ManualClock) -> None:
    store = MemoryStore()
    _, channel, _ = start(store, clock)
    channel.declare_queue("q", durable=True, arguments={"x-queue-type": "quorum"})
    persistent(channel, "q", b"m0")
    got = channel.get("q", no_ack=False)
    assert got is not None
    channel.nack(got[0], False, True)
    got = channel.get("q", no_ack=False)  # second delivery, never settled: the restart returns it
    assert got is not None
    _, channel, sink = start(store, clock)
    consume(channel, "q", "c")
    assert delivery_counts(sink) == [(b"m0", True, 2)]


def test_a_dead_letter_into_a_durable_queue_is_stored_with_its_headers(
    clock: ManualClock,
) -> None:
    store = MemoryStore()
    _, channel, _ = start(store, clock)
    channel.vhost.declare_exchange("dlx", "fanout", durable=True)
    channel.declare_queue("dlq", durable=True)
    channel.vhost.bind_queue("dlq", "dlx", "", None, channel.connection)
    channel.declare_queue("q", durable=True, arguments={"x-dead-letter-exchange": "dlx"})
    persistent(channel, "q", b"m0", expiration="60000")
    got = channel.get("q", no_ack=False)
    assert got is not None
    channel.reject(got[0], False)
    _, channel, _ = start(store, clock)
    assert drain(channel, "q") == []
    (dead,) = drain_messages(channel, "dlq")
    assert dead.properties.expiration is None
    assert deaths(dead) == [("q", "rejected", 1)]
    assert dead.properties.headers["x-death"][0]["original-expiration"] == "60000"


# -- more interactions ------------------------------------------------------------------


def test_a_requeued_message_goes_back_to_its_priority_level(channel: Channel) -> None:
    declare(channel, **{"x-max-priority": 5, "x-delivery-limit": 3})
    send(channel, "q", b"low", priority=1)
    send(channel, "q", b"high", priority=5)
    send(channel, "q", b"high2", priority=5)
    got = channel.get("q", no_ack=False)
    assert got is not None
    assert got[2].body == b"high"
    channel.nack(got[0], False, True)
    messages = drain_messages(channel, "q")
    assert [m.body for m in messages] == [b"high", b"high2", b"low"]
    assert messages[0].properties.headers == {"x-delivery-count": 1}


def test_a_requeue_over_max_length_drops_the_head(channel: Channel) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-max-length": 2, "x-dead-letter-exchange": "dlx"})
    fill(channel, "q", 2)
    got = channel.get("q", no_ack=False)
    assert got is not None
    send(channel, "q", b"m2")
    channel.nack(got[0], False, True)  # m0 back at the head: three waiting, one too many
    assert drain(channel, "q") == [b"m1", b"m2"]
    (dead,) = drain_messages(channel, "dlq")
    assert dead.body == b"m0"
    assert deaths(dead) == [("q", "maxlen", 1)]


def test_a_promoted_queue_feeds_its_consumer_as_before(
    broker: Broker, clock: ManualClock, channel: Channel, sink: RecordingSink
) -> None:
    declare(channel)
    channel.qos(0, 1, False)
    consume(channel, "q", "c")
    send(channel, "q", b"m0")
    send(channel, "q", b"m1")
    send(channel, "q", b"short", expiration="1000")
    send(channel, "q", b"m3")
    tick(broker, clock, 1)
    for tag in (1, 2, 3):
        channel.ack(tag, False)
    assert sink.bodies() == [b"m0", b"m1", b"m3"]


def test_purge_counts_only_live_messages_and_stops_their_expiry(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-max-length": 2, "x-message-ttl": 1000, "x-dead-letter-exchange": "dlx"})
    fill(channel, "q", 4)
    assert [m.body for m in drain_messages(channel, "dlq")] == [b"m0", b"m1"]
    assert channel.queue("q").purge() == 2
    tick(broker, clock, 2)
    assert drain(channel, "dlq") == []
    send(channel, "q", b"after")
    assert drain(channel, "q") == [b"after"]


def test_an_expired_exclusive_queue_leaves_its_connection(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    channel.declare_queue("excl", exclusive=True, arguments={"x-expires": 1000})
    assert "excl" in channel.connection.exclusive_queues
    tick(broker, clock, 1)
    assert "excl" not in channel.vhost.queues
    assert "excl" not in channel.connection.exclusive_queues


def test_a_deleted_queue_ignores_its_pending_deadlines(
    broker: Broker, clock: ManualClock, channel: Channel
) -> None:
    dead_letter_queue(channel)
    declare(channel, **{"x-message-ttl": 1000, "x-expires": 1500, "x-dead-letter-exchange": "dlx"})
    fill(channel, "q", 2)
    assert channel.delete_queue("q", if_unused=False, if_empty=False) == 2
    declare(channel)  # a new plain queue of the same name
    send(channel, "q", b"new")
    tick(broker, clock, 5)
    assert drain(channel, "dlq") == []
    assert drain(channel, "q") == [b"new"]


def test_max_length_holds_after_a_restart(clock: ManualClock) -> None:
    store = MemoryStore()
    _, channel, _ = start(store, clock)
    channel.declare_queue("q", durable=True, arguments={"x-max-length": 2})
    for n in range(2):
        persistent(channel, "q", b"m%d" % n)
    _, channel, _ = start(store, clock)
    persistent(channel, "q", b"m2")
    assert drain(channel, "q") == [b"m1", b"m2"]
