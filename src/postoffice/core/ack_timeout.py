"""Consumer (ack) timeouts: a delivery not acknowledged in time closes its channel.

As RabbitMQ: the channel is closed with 406 PRECONDITION_FAILED ("delivery
acknowledgement on channel N timed out...") and its unacked messages go back to
their queues.  The timeout is the consumer's ``x-consumer-timeout`` argument, else
its queue's ``x-consumer-timeout`` argument, else the broker's ``consumer_timeout``
setting (30 minutes by default, 0 for none); all in milliseconds.

Free per delivery: nothing records when a message was delivered.  Instead a periodic
check writes, per channel, a mark (time, next delivery tag); delivery tags grow
with time, so a delivery with tag t left before the first mark whose next tag is
above t.  A delivery is timed out once that mark is older than its timeout: it is
caught at most one check interval late (a twentieth of the shortest timeout in use,
between 0.1 and 30 seconds).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from typing import TYPE_CHECKING, Any

from ..errors import PreconditionFailed
from .arguments import int_argument

if TYPE_CHECKING:
    from .broker import Broker
    from .channel import Channel, Consumer
    from .queue import Queue
    from .timers import Timer

__all__ = ["AckTimeouts", "timeout_argument"]

_MIN_INTERVAL = 0.1
_MAX_INTERVAL = 30.0


def timeout_argument(arguments: dict[str, Any]) -> int | None:
    """An ``x-consumer-timeout`` argument in ms, or None when absent or not a positive int."""
    value = arguments.get("x-consumer-timeout")
    timeout = int_argument(value)
    return timeout if timeout is not None and timeout > 0 else None


class AckTimeouts:
    """The broker's periodic check of unacknowledged deliveries."""

    def __init__(self, broker: Broker, default_ms: int) -> None:
        self.broker = broker
        self.default_ms = default_ms  # 0: no broker-wide timeout
        self._next: Timer | None = None

    def watch(self, timeout_ms: int | None = None) -> None:
        """Makes sure checks run often enough for ``timeout_ms`` (default: the broker's)."""
        when = self.broker.clock.monotonic() + _interval(timeout_ms or self.default_ms or None)
        if self._next is None or when < self._next.when:
            if self._next is not None:
                self._next.cancel()
            self._next = self.broker.timers.call_at(when, self._check)

    def _check(self) -> None:
        self._next = None
        now = self.broker.clock.monotonic()
        shortest = self.default_ms or None
        for connection in list(self.broker.connections):
            for channel in list(connection.channels.values()):
                if channel.closed:
                    continue
                if channel.unacked:
                    used = check_channel(channel, now, self.default_ms)
                else:
                    # Nothing out now, but a consumer's own timeout needs checks to go
                    # on for the deliveries still to come.
                    used = shortest_timeout(channel, self.default_ms)
                if used is not None and (shortest is None or used < shortest):
                    shortest = used
        if shortest is not None:
            self.watch(shortest)


def _interval(timeout_ms: int | None) -> float:
    if timeout_ms is None:
        return _MAX_INTERVAL
    return min(_MAX_INTERVAL, max(_MIN_INTERVAL, timeout_ms / 1000 / 20))


def effective_timeout(
    consumer: Consumer | None, queue: Queue | None, default_ms: int
) -> int | None:
    """The ack timeout (ms) of a delivery to ``consumer`` from ``queue``; None for none."""
    if consumer is not None and consumer.timeout is not None:
        return consumer.timeout
    if queue is not None:
        from_queue = timeout_argument(queue.arguments)
        if from_queue is not None:
            return from_queue
    return default_ms or None


def shortest_timeout(channel: Channel, default_ms: int) -> int | None:
    """The shortest ack timeout (ms) of the channel's consumers and the default; None for none."""
    floor = default_ms or None
    for active in channel.consumers.values():
        timeout = effective_timeout(active, active.queue, default_ms)
        if timeout is not None and (floor is None or timeout < floor):
            floor = timeout
    return floor


def check_channel(channel: Channel, now: float, default_ms: int) -> int | None:
    """Marks the channel, and fails it if one of its deliveries is overdue.

    Returns the shortest timeout (ms) that applies on the channel, or None.
    """
    floor = shortest_timeout(channel, default_ms)
    marks = channel.ack_marks
    if marks is None:
        marks = channel.ack_marks = deque()
    next_tag = channel.next_delivery_tag
    if not marks or marks[-1][1] != next_tag:
        marks.append((now, next_tag))
    oldest = next(iter(channel.unacked))
    while len(marks) > 1 and marks[0][1] <= oldest:
        marks.popleft()  # no unacked delivery is that old any more
    tags = [tag for _, tag in marks]
    for tag, (_entry, queue, consumer) in channel.unacked.items():
        index = bisect_right(tags, tag)
        if index == len(tags):
            break  # delivered after the last mark: too recent for any timeout
        left_before = marks[index][0]
        timeout = effective_timeout(consumer, queue, default_ms)
        if timeout is not None and left_before <= now - timeout / 1000:
            channel.sink.fail(
                PreconditionFailed(
                    f"delivery acknowledgement on channel {channel.number} timed out. "
                    f"Timeout value used: {timeout} ms. This timeout value can be "
                    "configured, see consumers doc guide to learn more"
                )
            )
            return floor
        if floor is None or left_before > now - floor / 1000:
            break  # the deliveries after this one are younger still
    return floor
