"""Consumer (ack) timeouts: an unacknowledged delivery closes its channel in time."""

from __future__ import annotations

from typing import Any

import pytest
from core_support import FakeProperties, RecordingSink, consume, make_broker, open_channel, publish

from postoffice.core import Broker
from postoffice.core.clock import ManualClock

START = 1_700_000_000.0
STEP = 0.025


def timed_out(ms: int, channel: int = 1) -> tuple[str, int, str]:
    return (
        "failed",
        406,
        f"delivery acknowledgement on channel {channel} timed out. Timeout value used: {ms} ms. "
        "This timeout value can be configured, see consumers doc guide to learn more",
    )


class Setup:
    def __init__(self, consumer_timeout: int) -> None:
        self.clock = ManualClock(START)
        self.broker: Broker = make_broker(clock=self.clock, consumer_timeout=consumer_timeout)
        self.channel, self.sink = open_channel(self.broker)

    def run_until_failed(self, limit: float, sink: RecordingSink | None = None) -> float | None:
        """Moves the clock in small steps, running timers, until the channel fails; the
        time since START then (and the channel is closed, as the server would), or None."""
        sink = sink if sink is not None else self.sink
        while self.clock.monotonic() - START < limit:
            self.clock.advance(STEP)
            self.broker.timers.run_due()
            if "failed" in sink.kinds():
                for channel in list(self.channel.connection.channels.values()):
                    if channel.sink is sink:
                        self.channel.connection.close_channel(channel.number)
                return float(self.clock.monotonic() - START)
        return None

    def failures(self, sink: RecordingSink | None = None) -> list[tuple[Any, ...]]:
        sink = sink if sink is not None else self.sink
        return [event for event in sink.events if event[0] == "failed"]


def within(elapsed: float | None, timeout: float) -> bool:
    """Caught after the timeout, and soon: checks run every twentieth of the timeout (at
    least 0.1 s apart); one interval for the mark, one for the check (a float sum of
    steps may land just short of a deadline), each run up to a step of this test's
    clock late."""
    interval = max(0.1, timeout / 20)
    return elapsed is not None and timeout < elapsed <= timeout + 2 * (interval + STEP) + STEP


def test_the_broker_default_times_out_an_unacked_delivery() -> None:
    setup = Setup(consumer_timeout=2000)
    setup.channel.declare_queue("q")
    consume(setup.channel, "q", "c")
    publish(setup.channel, "", "q", b"m0")
    elapsed = setup.run_until_failed(10)
    assert within(elapsed, 2.0), elapsed
    assert setup.failures() == [timed_out(2000)]
    assert setup.channel.closed


def test_the_failure_text_names_the_channel_number() -> None:
    setup = Setup(consumer_timeout=1000)
    setup.channel.declare_queue("q")
    other, sink = open_channel(setup.broker, 7, setup.channel.connection)
    consume(other, "q", "c")
    publish(setup.channel, "", "q", b"m0")
    assert within(setup.run_until_failed(5, sink), 1.0)
    assert setup.failures(sink) == [timed_out(1000, channel=7)]
    assert setup.failures() == []


def test_an_ack_in_time_keeps_the_channel_open() -> None:
    setup = Setup(consumer_timeout=2000)
    setup.channel.declare_queue("q")
    consume(setup.channel, "q", "c")
    publish(setup.channel, "", "q", b"m0")
    setup.clock.advance(1.9)
    setup.broker.timers.run_due()
    setup.channel.ack(1, False)
    assert setup.run_until_failed(60) is None


def test_a_younger_delivery_is_timed_from_when_it_left() -> None:
    setup = Setup(consumer_timeout=2000)
    setup.channel.declare_queue("q")
    consume(setup.channel, "q", "c")
    publish(setup.channel, "", "q", b"m0")
    assert setup.run_until_failed(1.5) is None
    setup.channel.ack(1, False)
    publish(setup.channel, "", "q", b"m1")
    elapsed = setup.run_until_failed(10)
    assert elapsed is not None
    assert within(elapsed - 1.5, 2.0), elapsed


def test_basic_get_deliveries_time_out_too() -> None:
    setup = Setup(consumer_timeout=1000)
    setup.channel.declare_queue("q")
    publish(setup.channel, "", "q", b"m0")
    assert setup.channel.get("q", no_ack=False) is not None
    assert within(setup.run_until_failed(5), 1.0)
    assert setup.failures() == [timed_out(1000)]


def test_no_ack_deliveries_never_time_out() -> None:
    setup = Setup(consumer_timeout=1000)
    setup.channel.declare_queue("q")
    consume(setup.channel, "q", "c", no_ack=True)
    publish(setup.channel, "", "q", b"m0")
    assert setup.run_until_failed(5) is None


def test_a_zero_broker_timeout_means_none() -> None:
    setup = Setup(consumer_timeout=0)
    setup.channel.declare_queue("q")
    consume(setup.channel, "q", "c")
    publish(setup.channel, "", "q", b"m0")
    setup.clock.advance(3600)
    setup.broker.timers.run_due()
    assert setup.run_until_failed(3610) is None
    assert len(setup.broker.timers) == 0


def test_a_queue_argument_beats_the_broker_default() -> None:
    setup = Setup(consumer_timeout=60_000)
    setup.channel.declare_queue("q", arguments={"x-consumer-timeout": 1000})
    consume(setup.channel, "q", "c")
    publish(setup.channel, "", "q", b"m0")
    assert within(setup.run_until_failed(5), 1.0)
    assert setup.failures() == [timed_out(1000)]


@pytest.mark.parametrize(("queue_ms", "consumer_ms"), [(5000, 1000), (1000, 3000)])
def test_a_consumer_argument_beats_the_queue_argument(queue_ms: int, consumer_ms: int) -> None:
    setup = Setup(consumer_timeout=60_000)
    setup.channel.declare_queue("q", arguments={"x-consumer-timeout": queue_ms})
    consume(setup.channel, "q", "c", arguments={"x-consumer-timeout": consumer_ms})
    publish(setup.channel, "", "q", b"m0")
    assert within(setup.run_until_failed(10), consumer_ms / 1000)
    assert setup.failures() == [timed_out(consumer_ms)]


@pytest.mark.parametrize("value", [0, -5, True, "1000", 1.5])
def test_an_invalid_consumer_argument_is_ignored(value: Any) -> None:
    setup = Setup(consumer_timeout=1000)
    setup.channel.declare_queue("q")
    consume(setup.channel, "q", "c", arguments={"x-consumer-timeout": value})
    publish(setup.channel, "", "q", b"m0")
    assert within(setup.run_until_failed(5), 1.0)
    assert setup.failures() == [timed_out(1000)]


def test_each_consumer_on_a_channel_has_its_own_timeout() -> None:
    setup = Setup(consumer_timeout=0)
    setup.channel.declare_queue("slow")
    setup.channel.declare_queue("fast")
    consume(setup.channel, "slow", "s", arguments={"x-consumer-timeout": 5000})
    consume(setup.channel, "fast", "f", arguments={"x-consumer-timeout": 1000})
    publish(setup.channel, "", "slow", b"s0")
    assert setup.run_until_failed(3) is None  # s0 has 5 s
    publish(setup.channel, "", "fast", b"f0")
    elapsed = setup.run_until_failed(10)
    assert elapsed is not None
    assert within(elapsed - 3, 1.0), elapsed
    assert setup.failures() == [timed_out(1000)]


def test_a_consumer_timeout_covers_deliveries_long_after_the_consume() -> None:
    # No broker default: only the consumer's argument asks for checks, and the first
    # delivery comes after several check intervals with nothing unacked.
    setup = Setup(consumer_timeout=0)
    setup.channel.declare_queue("q")
    consume(setup.channel, "q", "c", arguments={"x-consumer-timeout": 1000})
    assert setup.run_until_failed(2) is None
    publish(setup.channel, "", "q", b"m0")
    elapsed = setup.run_until_failed(10)
    assert elapsed is not None
    assert within(elapsed - 2, 1.0), elapsed
    assert setup.failures() == [timed_out(1000)]


def test_a_timed_out_channel_gives_its_deliveries_back() -> None:
    setup = Setup(consumer_timeout=1000)
    setup.channel.declare_queue("q")
    setup.channel.qos(0, 2, False)
    consume(setup.channel, "q", "c")
    for n in range(3):
        publish(setup.channel, "", "q", b"m%d" % n, properties=FakeProperties())
    assert setup.run_until_failed(5) is not None
    other, sink = open_channel(setup.broker, 2, setup.channel.connection)
    consume(other, "q", "c2", no_ack=True)
    assert [(d.body, d.redelivered) for d in sink.deliveries] == [
        (b"m0", True),
        (b"m1", True),
        (b"m2", False),
    ]
