"""Consumers, prefetch, acks, requeue, flow, basic.get, confirms, transactions, reply-to."""

from __future__ import annotations

import re
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

from postoffice.core import DIRECT_REPLY_TO, Broker, Channel, Queue
from postoffice.errors import (
    AccessRefused,
    AMQPError,
    AMQPNotImplemented,
    NotAllowed,
    PreconditionFailed,
)


@pytest.fixture
def broker() -> Broker:
    return make_broker()


@pytest.fixture
def pair(broker: Broker) -> tuple[Channel, RecordingSink]:
    return open_channel(broker)


def raises(error: type[AMQPError], text: str) -> Any:
    return pytest.raises(error, match=f"^{re.escape(text)}$")


def fill(channel: Channel, queue: str, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        publish(channel, "", queue, b"m%d" % i)


def declare(channel: Channel, name: str = "q", **options: Any) -> Queue:
    queue = channel.declare_queue(name, **options)
    assert queue is not None
    return queue


def waiting(queue: Queue) -> list[bytes]:
    return [entry.message.body for entry in queue.messages]


def get_all(channel: Channel, queue: str) -> list[tuple[int, bytes, bool]]:
    got = []
    while (result := channel.get(queue, no_ack=False)) is not None:
        tag, entry, _, _ = result
        got.append((tag, entry.message.body, entry.redelivered))
    return got


# -- consumers -----------------------------------------------------------------------


def test_round_robin_over_consumers(broker: Broker) -> None:
    ch1, sink1 = open_channel(broker)
    ch2, sink2 = open_channel(broker, 2, ch1.connection)
    declare(ch1)
    consume(ch1, "q", "a", no_ack=True)
    consume(ch2, "q", "b", no_ack=True)
    consume(ch1, "q", "c", no_ack=True)
    fill(ch1, "q", 6)
    assert [(d.consumer_tag, d.body) for d in sink1.deliveries] == [
        ("a", b"m0"),
        ("c", b"m2"),
        ("a", b"m3"),
        ("c", b"m5"),
    ]
    assert sink2.bodies("b") == [b"m1", b"m4"]


def test_round_robin_continues_after_a_cancel(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    declare(channel)
    for tag in "abc":
        consume(channel, "q", tag, no_ack=True)
    fill(channel, "q", 2)  # a, b
    channel.cancel("a")
    fill(channel, "q", 4, start=2)
    assert [d.consumer_tag for d in sink.deliveries] == ["a", "b", "c", "b", "c", "b"]


def test_messages_waiting_before_consume_are_delivered_in_order(
    pair: tuple[Channel, RecordingSink],
) -> None:
    channel, sink = pair
    declare(channel)
    fill(channel, "q", 3)
    channel.consume("q", "c")
    assert sink.deliveries == []  # not before consume-ok
    fill(channel, "q", 1, start=3)  # joins the line; does not jump it
    assert sink.deliveries == []
    channel.start("c")
    assert sink.bodies() == [b"m0", b"m1", b"m2", b"m3"]
    assert [d.delivery_tag for d in sink.deliveries] == [1, 2, 3, 4]
    assert not any(d.redelivered for d in sink.deliveries)


def test_consumer_tag_rules(broker: Broker) -> None:
    channel, _ = open_channel(broker)
    other, _ = open_channel(broker)
    declare(channel)
    declare(channel, "q2")
    consume(channel, "q", "c")
    with raises(NotAllowed, "attempt to reuse consumer tag 'c'"):
        channel.consume("q2", "c")
    generated = channel.consume("q", "")
    assert re.fullmatch(r"amq\.ctag-[A-Za-z0-9_-]+", generated)
    channel.cancel("no-such-tag")  # not an error
    consume(other, "q2", "x", exclusive=True)
    with raises(AccessRefused, "queue 'q2' in vhost '/' in exclusive use"):
        channel.consume("q2", "y")
    with raises(AccessRefused, "queue 'q' in vhost '/' in exclusive use"):
        other.consume("q", "z", exclusive=True)


def test_qos_prefetch_size_not_implemented(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    with raises(AMQPNotImplemented, "prefetch_size!=0 (10)"):
        channel.qos(10, 0, False)


def test_immediate_not_implemented(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    declare(channel)
    with raises(AMQPNotImplemented, "immediate=true"):
        channel.publish("", "q", False, True, FakeProperties(), b"")


# -- prefetch ------------------------------------------------------------------------


def test_per_consumer_prefetch(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    q = declare(channel)
    channel.qos(0, 2, False)
    consume(channel, "q", "c")
    fill(channel, "q", 5)
    assert sink.bodies() == [b"m0", b"m1"]
    assert q.message_count == 3
    channel.ack(1, False)
    assert sink.bodies() == [b"m0", b"m1", b"m2"]
    channel.ack(3, True)
    assert sink.bodies() == [b"m0", b"m1", b"m2", b"m3", b"m4"]


def test_per_consumer_prefetch_applies_to_later_consumers_only(
    pair: tuple[Channel, RecordingSink],
) -> None:
    channel, sink = pair
    declare(channel)
    declare(channel, "q2")
    channel.qos(0, 1, False)
    consume(channel, "q", "one")
    channel.qos(0, 3, False)
    consume(channel, "q2", "three")
    fill(channel, "q", 4)
    fill(channel, "q2", 4)
    assert len(sink.bodies("one")) == 1
    assert len(sink.bodies("three")) == 3


def test_global_prefetch_is_shared_by_the_channel(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    declare(channel)
    declare(channel, "q2")
    channel.qos(0, 3, True)
    consume(channel, "q", "a")
    consume(channel, "q2", "b")
    fill(channel, "q", 3)
    fill(channel, "q2", 5)
    assert len(sink.deliveries) == 3
    assert sink.bodies("a") == [b"m0", b"m1", b"m2"]
    channel.ack(1, False)  # frees room that only q2's consumer has a use for
    assert len(sink.deliveries) == 4
    assert sink.bodies("b") == [b"m0"]
    channel.ack(4, True)
    assert sink.bodies("b") == [b"m0", b"m1", b"m2", b"m3"]


def test_per_consumer_and_global_prefetch_together(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    declare(channel)
    channel.qos(0, 2, False)
    channel.qos(0, 3, True)
    consume(channel, "q", "a")
    consume(channel, "q", "b")
    fill(channel, "q", 10)
    # a, b, a: then a is at its own limit and the channel at its global one.
    assert [(d.consumer_tag, d.body) for d in sink.deliveries] == [
        ("a", b"m0"),
        ("b", b"m1"),
        ("a", b"m2"),
    ]
    channel.ack(2, False)  # b's message: the channel has room, only b may take it
    assert [(d.consumer_tag, d.body) for d in sink.deliveries[3:]] == [("b", b"m3")]
    channel.ack(1, False)  # a's message
    assert [(d.consumer_tag, d.body) for d in sink.deliveries[4:]] == [("a", b"m4")]
    assert len(sink.deliveries) == 5


def test_raising_global_prefetch_dispatches_at_once(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    declare(channel)
    channel.qos(0, 1, True)
    consume(channel, "q", "c")
    fill(channel, "q", 3)
    assert len(sink.deliveries) == 1
    channel.qos(0, 0, True)
    assert len(sink.deliveries) == 3


def test_no_ack_consumers_ignore_prefetch(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    declare(channel)
    declare(channel, "q2")
    channel.qos(0, 1, False)
    channel.qos(0, 1, True)
    consume(channel, "q2", "acking")
    fill(channel, "q2", 2)  # the channel's global limit is now used up
    consume(channel, "q", "c", no_ack=True)
    fill(channel, "q", 4)
    assert sink.bodies("acking") == [b"m0"]
    assert sink.bodies("c") == [b"m0", b"m1", b"m2", b"m3"]
    assert sorted(channel.unacked) == [1]


# -- acks ----------------------------------------------------------------------------


def test_ack_single_and_double_ack(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    declare(channel)
    consume(channel, "q", "c")
    fill(channel, "q", 2)
    channel.ack(1, False)
    assert sorted(channel.unacked) == [2]
    with raises(PreconditionFailed, "unknown delivery tag 1"):
        channel.ack(1, False)


def test_ack_unknown_tags(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    declare(channel)
    consume(channel, "q", "c")
    fill(channel, "q", 1)
    with raises(PreconditionFailed, "unknown delivery tag 99"):
        channel.ack(99, False)
    with raises(PreconditionFailed, "unknown delivery tag 99"):
        channel.ack(99, True)
    with raises(PreconditionFailed, "unknown delivery tag 0"):
        channel.ack(0, False)
    with raises(PreconditionFailed, "unknown delivery tag 7"):
        channel.nack(7, False, True)
    with raises(PreconditionFailed, "unknown delivery tag 7"):
        channel.reject(7, True)


def test_ack_multiple(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    q = declare(channel)
    consume(channel, "q", "c")
    fill(channel, "q", 5)
    channel.ack(2, False)
    channel.ack(3, True)
    assert sorted(channel.unacked) == [4, 5]
    with raises(PreconditionFailed, "unknown delivery tag 3"):
        channel.ack(3, True)
    channel.ack(5, True)
    assert channel.unacked == {}
    assert q.message_count == 0
    assert q.consumers[0].unacked == 0
    assert channel.unacked_count == 0


def test_ack_multiple_with_tag_zero_acks_everything(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    declare(channel)
    channel.qos(0, 3, False)
    consume(channel, "q", "c")
    fill(channel, "q", 5)
    assert len(sink.deliveries) == 3
    channel.ack(0, True)
    assert sorted(channel.unacked) == [4, 5]
    channel.ack(0, True)
    assert channel.unacked == {}
    channel.ack(0, True)  # nothing unacked: still fine


def test_nack_without_requeue_drops(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    q = declare(channel)
    consume(channel, "q", "c")
    fill(channel, "q", 3)
    channel.nack(2, True, False)
    channel.reject(3, False)
    assert channel.unacked == {}
    assert q.message_count == 0
    assert len(sink.deliveries) == 3


# -- requeue order -------------------------------------------------------------------


def test_requeued_entries_return_to_their_old_place(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    q = declare(channel)
    fill(channel, "q", 6)
    for _ in range(4):
        assert channel.get("q", no_ack=False) is not None
    assert waiting(q) == [b"m4", b"m5"]
    channel.nack(2, False, True)  # m1, in front of the waiting ones
    assert waiting(q) == [b"m1", b"m4", b"m5"]
    channel.reject(4, True)  # m3, between m1 and m4
    assert waiting(q) == [b"m1", b"m3", b"m4", b"m5"]
    channel.nack(1, False, True)  # m0, at the head
    assert waiting(q) == [b"m0", b"m1", b"m3", b"m4", b"m5"]
    assert [e.redelivered for e in q.messages] == [True, True, True, False, False]
    assert [body for _, body, _ in get_all(channel, "q")] == [b"m0", b"m1", b"m3", b"m4", b"m5"]


def test_requeue_interleaves_with_later_publishes(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    q = declare(channel)
    fill(channel, "q", 5)
    tags = {body: tag for tag, body, _ in get_all(channel, "q")}
    channel.nack(tags[b"m4"], False, True)
    fill(channel, "q", 2, start=5)
    assert waiting(q) == [b"m4", b"m5", b"m6"]
    channel.nack(tags[b"m3"], False, True)
    channel.nack(tags[b"m0"], False, True)
    channel.reject(tags[b"m2"], True)
    assert waiting(q) == [b"m0", b"m2", b"m3", b"m4", b"m5", b"m6"]
    assert [e.redelivered for e in q.messages] == [True, True, True, True, False, False]


def test_nack_multiple_requeues_in_order(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    q = declare(channel)
    fill(channel, "q", 4)
    assert len(get_all(channel, "q")) == 4
    fill(channel, "q", 1, start=4)
    channel.ack(2, False)
    channel.nack(4, True, True)
    assert waiting(q) == [b"m0", b"m2", b"m3", b"m4"]
    assert channel.unacked == {}


def test_requeued_message_goes_to_a_consumer_marked_redelivered(
    pair: tuple[Channel, RecordingSink],
) -> None:
    channel, sink = pair
    declare(channel)
    channel.qos(0, 1, False)
    consume(channel, "q", "c")
    fill(channel, "q", 2)
    channel.nack(1, False, True)
    assert [(d.body, d.redelivered, d.delivery_tag) for d in sink.deliveries] == [
        (b"m0", False, 1),
        (b"m0", True, 2),
    ]
    channel.ack(2, False)
    assert [(d.body, d.redelivered) for d in sink.deliveries[2:]] == [(b"m1", False)]


def test_channel_close_requeues_unacked_and_cancels_consumers(broker: Broker) -> None:
    channel, sink = open_channel(broker)
    other, other_sink = open_channel(broker)
    q = declare(channel)
    channel.qos(0, 3, False)
    consume(channel, "q", "c")
    fill(channel, "q", 6)
    channel.ack(2, False)  # m1; m3 takes its place
    assert sink.bodies() == [b"m0", b"m1", b"m2", b"m3"]
    got = other.get("q", no_ack=False)  # m4 goes to the other channel, unacked
    assert got is not None and got[1].message.body == b"m4"
    channel.connection.close_channel(channel.number)
    assert channel.closed
    assert channel.number not in channel.connection.channels
    assert q.consumer_count == 0
    assert ("cancelled", "c") not in sink.events  # the client closed it; no notification
    assert waiting(q) == [b"m0", b"m2", b"m3", b"m5"]
    assert [e.redelivered for e in q.messages] == [True, True, True, False]
    other.reject(got[0], True)
    assert waiting(q) == [b"m0", b"m2", b"m3", b"m4", b"m5"]
    consume(other, "q", "o", no_ack=True)
    assert [(d.body, d.redelivered) for d in other_sink.deliveries] == [
        (b"m0", True),
        (b"m2", True),
        (b"m3", True),
        (b"m4", True),
        (b"m5", False),
    ]


def test_closing_a_channel_twice_is_harmless(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    q = declare(channel)
    consume(channel, "q", "c")
    fill(channel, "q", 1)
    channel.close()
    channel.close()
    assert waiting(q) == [b"m0"]


def test_acking_after_queue_deletion(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    declare(channel)
    consume(channel, "q", "c")
    fill(channel, "q", 2)
    channel.delete_queue("q", if_unused=False, if_empty=False)
    channel.ack(1, False)
    channel.nack(2, False, True)  # nowhere to go back to
    assert channel.unacked == {}
    assert channel.unacked_count == 0


# -- recover -------------------------------------------------------------------------


def test_recover_redelivers_unacked(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    declare(channel)
    channel.qos(0, 2, False)
    consume(channel, "q", "c")
    fill(channel, "q", 3)
    channel.ack(1, False)
    assert sink.bodies() == [b"m0", b"m1", b"m2"]
    channel.recover(True)
    assert [(d.body, d.redelivered, d.delivery_tag) for d in sink.deliveries[3:]] == [
        (b"m1", True, 4),
        (b"m2", True, 5),
    ]
    with raises(PreconditionFailed, "unknown delivery tag 2"):
        channel.ack(2, False)
    channel.ack(5, True)
    assert channel.unacked == {}


def test_recover_without_requeue_is_not_implemented(pair: tuple[Channel, RecordingSink]) -> None:
    # rabbit_channel: basic.recover_async{requeue = false} -> not_implemented "requeue=false"
    channel, _ = pair
    declare(channel)
    consume(channel, "q", "c")
    fill(channel, "q", 1)
    with raises(AMQPNotImplemented, "requeue=false"):
        channel.recover(False)


# -- flow control --------------------------------------------------------------------


def test_channel_flow(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    q = declare(channel)
    consume(channel, "q", "c", no_ack=True)
    channel.flow(False)
    fill(channel, "q", 3)
    assert sink.deliveries == []
    assert q.message_count == 3
    channel.flow(True)
    assert sink.bodies() == [b"m0", b"m1", b"m2"]


def test_channel_flow_off_holds_deliveries_freed_by_acks(
    pair: tuple[Channel, RecordingSink],
) -> None:
    channel, sink = pair
    declare(channel)
    channel.qos(0, 1, False)
    consume(channel, "q", "c")
    fill(channel, "q", 2)
    channel.flow(False)
    channel.ack(1, False)
    assert sink.bodies() == [b"m0"]
    channel.flow(True)
    assert sink.bodies() == [b"m0", b"m1"]


def test_flow_off_on_one_channel_lets_others_consume(broker: Broker) -> None:
    slow, slow_sink = open_channel(broker)
    fast, fast_sink = open_channel(broker)
    declare(slow)
    consume(slow, "q", "s", no_ack=True)
    consume(fast, "q", "f", no_ack=True)
    slow.flow(False)
    fill(slow, "q", 3)
    assert slow_sink.deliveries == []
    assert fast_sink.bodies() == [b"m0", b"m1", b"m2"]


def test_connection_writable(broker: Broker) -> None:
    channel, sink = open_channel(broker)
    q = declare(channel)
    consume(channel, "q", "c", no_ack=True)
    connection = channel.connection
    connection.set_writable(False)
    fill(channel, "q", 2)
    assert sink.deliveries == []
    channel.flow(False)
    connection.set_writable(True)
    assert sink.deliveries == []  # the channel's own flow is still off
    channel.flow(True)
    assert sink.bodies() == [b"m0", b"m1"]
    connection.set_writable(False)
    fill(channel, "q", 1, start=2)
    assert q.message_count == 1
    connection.set_writable(True)
    assert sink.bodies() == [b"m0", b"m1", b"m2"]


# -- basic.get -----------------------------------------------------------------------


def test_basic_get(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    declare(channel)
    assert channel.get("q", no_ack=False) is None
    fill(channel, "q", 3)
    result = channel.get("q", no_ack=False)
    assert result is not None
    tag, entry, _, left = result
    assert (tag, entry.message.body, entry.redelivered, left) == (1, b"m0", False, 2)
    result = channel.get("q", no_ack=True)
    assert result is not None and result[0] == 2 and result[3] == 1
    assert sorted(channel.unacked) == [1]
    with raises(PreconditionFailed, "unknown delivery tag 2"):
        channel.ack(2, False)
    channel.reject(1, True)
    result = channel.get("q", no_ack=True)
    assert result is not None
    assert (result[0], result[1].message.body, result[1].redelivered, result[3]) == (
        3,
        b"m0",
        True,
        1,
    )


def test_get_and_deliveries_share_tag_numbering(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    declare(channel)
    declare(channel, "q2")
    consume(channel, "q", "c")
    publish(channel, "", "q", b"a")
    publish(channel, "", "q2", b"b")
    result = channel.get("q2", no_ack=False)
    assert result is not None and result[0] == 2
    publish(channel, "", "q", b"c")
    assert [d.delivery_tag for d in sink.deliveries] == [1, 3]
    channel.ack(3, True)
    assert channel.unacked == {}


def test_get_does_not_use_prefetch_room(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    declare(channel)
    declare(channel, "q2")
    channel.qos(0, 1, True)
    fill(channel, "q2", 2)
    assert channel.get("q2", no_ack=False) is not None
    assert channel.get("q2", no_ack=False) is not None
    consume(channel, "q", "c")
    fill(channel, "q", 1)
    assert sink.bodies() == [b"m0"]


def test_purge_drops_waiting_messages_only(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    q = declare(channel)
    fill(channel, "q", 4)
    result = channel.get("q", no_ack=False)
    assert result is not None
    assert channel.queue("q").purge() == 3
    assert q.message_count == 0
    channel.reject(result[0], True)
    assert waiting(q) == [b"m0"]


# -- mandatory and confirms ----------------------------------------------------------


def test_mandatory_unroutable_is_returned(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    declare(channel)
    channel.vhost.declare_exchange("x", "direct")
    publish(channel, "x", "nowhere", b"lost", mandatory=False)
    assert sink.events == []
    publish(channel, "x", "nowhere", b"back", mandatory=True)
    publish(channel, "", "no-such-queue", b"back2", mandatory=True)
    publish(channel, "", "q", b"kept", mandatory=True)
    assert [(e[0], e[1], e[2], e[3].body) for e in sink.events] == [
        ("returned", 312, "NO_ROUTE", b"back"),
        ("returned", 312, "NO_ROUTE", b"back2"),
    ]
    assert sink.events[0][3].routing_key == "nowhere"
    assert sink.events[0][3].exchange == "x"


def test_mandatory_message_routed_only_to_an_empty_exchange_is_returned(
    pair: tuple[Channel, RecordingSink],
) -> None:
    channel, sink = pair
    vhost = channel.vhost
    vhost.declare_exchange("x", "direct")
    vhost.declare_exchange("nowhere", "fanout")
    vhost.bind_exchange("nowhere", "x", "k", None)
    publish(channel, "x", "k", b"lost", mandatory=True)
    assert [(e[0], e[1], e[2]) for e in sink.events] == [("returned", 312, "NO_ROUTE")]


def test_confirms_number_publishes_from_select(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    declare(channel)
    publish(channel, "", "q", b"before")
    channel.select_confirm()
    channel.select_confirm()  # again: no reset
    publish(channel, "", "q", b"1")
    publish(channel, "", "nowhere", b"2")
    publish(channel, "", "nowhere", b"3", mandatory=True)
    assert [e for e in sink.events if e[0] != "deliver"][:2] == [
        ("confirm", 1, True),
        ("confirm", 2, True),
    ]
    # basic.return goes before the confirm of the same publish
    assert [e[0] for e in sink.events[2:]] == ["returned", "confirm"]
    assert sink.events[3] == ("confirm", 3, True)


# -- transactions --------------------------------------------------------------------


def test_tx_publishes_wait_for_commit(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    q = declare(channel)
    channel.select_tx()
    publish(channel, "", "q", b"a")
    publish(channel, "", "nowhere", b"r", mandatory=True)
    assert q.message_count == 0
    assert sink.events == []
    channel.commit()
    assert waiting(q) == [b"a"]
    assert [(e[0], e[3].body) for e in sink.events] == [("returned", b"r")]
    publish(channel, "", "q", b"dropped")
    channel.rollback()
    channel.commit()
    assert waiting(q) == [b"a"]


def test_tx_acks_apply_at_commit(pair: tuple[Channel, RecordingSink]) -> None:
    channel, sink = pair
    q = declare(channel)
    channel.qos(0, 1, False)
    consume(channel, "q", "c")
    fill(channel, "q", 3)
    channel.select_tx()
    channel.ack(1, False)
    assert sink.bodies() == [b"m0"]  # the prefetch slot is still taken
    with raises(PreconditionFailed, "unknown delivery tag 1"):
        channel.ack(1, False)
    channel.commit()
    assert sink.bodies() == [b"m0", b"m1"]
    channel.nack(2, False, True)
    assert waiting(q) == [b"m2"]
    channel.commit()
    assert [(d.body, d.redelivered) for d in sink.deliveries[2:]] == [(b"m1", True)]


def test_tx_rollback_restores_unacked(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    q = declare(channel)
    channel.qos(0, 5, False)
    consume(channel, "q", "c")
    fill(channel, "q", 4)
    channel.select_tx()
    channel.ack(3, True)
    channel.nack(4, False, False)
    assert channel.unacked == {}
    channel.rollback()
    assert sorted(channel.unacked) == [1, 2, 3, 4]
    channel.ack(2, True)  # the restored tags can be acked again, multiple included
    channel.commit()
    assert sorted(channel.unacked) == [3, 4]
    channel.ack(3, False)
    channel.rollback()
    channel.close()
    assert waiting(q) == [b"m2", b"m3"]


def test_tx_rollback_restores_an_ack_of_everything(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    q = declare(channel)
    consume(channel, "q", "c")
    fill(channel, "q", 3)
    channel.select_tx()
    channel.ack(0, True)
    assert channel.unacked == {}
    channel.rollback()
    assert sorted(channel.unacked) == [1, 2, 3]
    channel.ack(0, True)
    channel.commit()
    assert channel.unacked == {}
    channel.close()
    assert q.message_count == 0


def test_tx_close_requeues_acks_not_committed(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    q = declare(channel)
    consume(channel, "q", "c")
    fill(channel, "q", 2)
    channel.select_tx()
    channel.ack(2, True)
    publish(channel, "", "q", b"uncommitted")
    channel.close()
    assert waiting(q) == [b"m0", b"m1"]


def test_tx_and_confirm_exclude_each_other(broker: Broker) -> None:
    tx, _ = open_channel(broker)
    confirm, _ = open_channel(broker, 2, tx.connection)
    tx.select_tx()
    with raises(PreconditionFailed, "cannot switch from tx to confirm mode"):
        tx.select_confirm()
    confirm.select_confirm()
    with raises(PreconditionFailed, "cannot switch from confirm to tx mode"):
        confirm.select_tx()


def test_commit_and_rollback_need_select(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    with raises(PreconditionFailed, "channel is not transactional"):
        channel.commit()
    with raises(PreconditionFailed, "channel is not transactional"):
        channel.rollback()


# -- direct reply-to -----------------------------------------------------------------


def test_reply_consumer_must_be_no_ack(pair: tuple[Channel, RecordingSink]) -> None:
    channel, _ = pair
    with raises(PreconditionFailed, "reply consumer cannot acknowledge"):
        channel.consume(DIRECT_REPLY_TO, "r", no_ack=False)
    channel.consume(DIRECT_REPLY_TO, "r", no_ack=True)
    with raises(PreconditionFailed, "reply consumer already set"):
        channel.consume(DIRECT_REPLY_TO, "r2", no_ack=True)


def test_publish_with_direct_reply_to_needs_a_reply_consumer(
    pair: tuple[Channel, RecordingSink],
) -> None:
    channel, _ = pair
    declare(channel, "rpc")
    with raises(PreconditionFailed, "fast reply consumer does not exist"):
        publish(channel, "", "rpc", properties=FakeProperties(reply_to=DIRECT_REPLY_TO))


def test_direct_reply_to_round_trip(broker: Broker) -> None:
    client, client_sink = open_channel(broker)
    server, _ = open_channel(broker)
    rpc = declare(server, "rpc")
    client.consume(DIRECT_REPLY_TO, "replies", no_ack=True)
    assert client.declare_queue(DIRECT_REPLY_TO, passive=True) is None
    request = FakeProperties(headers={"h": 1}, reply_to=DIRECT_REPLY_TO)
    publish(client, "", "rpc", b"question", properties=request)
    got = server.get("rpc", no_ack=True)
    assert got is not None
    incoming = got[1].message.properties
    reply_to = incoming.reply_to
    assert reply_to is not None and reply_to.startswith(DIRECT_REPLY_TO + ".")
    assert reply_to != DIRECT_REPLY_TO
    assert incoming.headers == {"h": 1}
    assert client.declare_queue(reply_to, passive=True) is None
    publish(server, "", reply_to, b"answer", mandatory=True)
    assert [(d.consumer_tag, d.body, d.redelivered) for d in client_sink.deliveries] == [
        ("replies", b"answer", False)
    ]
    assert client.unacked == {}
    assert rpc.message_count == 0


def test_reply_to_a_gone_consumer_is_dropped_or_returned(broker: Broker) -> None:
    client, client_sink = open_channel(broker)
    server, server_sink = open_channel(broker)
    declare(server, "rpc")
    client.consume(DIRECT_REPLY_TO, "replies", no_ack=True)
    publish(client, "", "rpc", properties=FakeProperties(reply_to=DIRECT_REPLY_TO))
    got = server.get("rpc", no_ack=True)
    assert got is not None
    reply_to = got[1].message.properties.reply_to
    client.cancel("replies")
    publish(server, "", reply_to, b"dropped")
    publish(server, "", reply_to, b"returned", mandatory=True)
    assert client_sink.deliveries == []
    assert [(e[0], e[1], e[2], e[3].body) for e in server_sink.events] == [
        ("returned", 312, "NO_ROUTE", b"returned")
    ]
    publish(server, "", DIRECT_REPLY_TO + ".made-up", b"x", mandatory=True)
    assert len(server_sink.events) == 2


def test_reply_consumer_goes_with_its_connection(broker: Broker) -> None:
    client, client_sink = open_channel(broker)
    server, server_sink = open_channel(broker)
    client.consume(DIRECT_REPLY_TO, "replies", no_ack=True)
    address = client.reply_address
    assert address is not None
    client.connection.close()
    publish(server, "", address, b"late", mandatory=True)
    assert client_sink.deliveries == []
    assert [e[0] for e in server_sink.events] == ["returned"]
