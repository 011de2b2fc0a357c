"""pika's SelectConnection: callbacks all the way, the ioloop driven by the test.

Each test is a small script of callbacks.  ``run`` starts the ioloop and stops it when
the script calls ``finish`` (or fails the test when the bound passes); the asserts
run after the loop, on what the callbacks recorded.
"""

from __future__ import annotations

from collections.abc import Callable

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

WAIT = 10.0


class Script:
    """One SelectConnection and a record of what happened on it."""

    def __init__(self, url: str, start: Callable[[Script], None]) -> None:
        self.events: list[object] = []
        self.finished = False
        self.errors: list[BaseException] = []
        self._start = start
        self.connection = pika.SelectConnection(
            pika.URLParameters(url),
            on_open_callback=self._opened,
            on_open_error_callback=self._open_failed,
            on_close_callback=self._closed,
        )

    def _opened(self, connection) -> None:
        self.guard(self._start, self)

    def _open_failed(self, connection, error) -> None:
        self.errors.append(error)
        connection.ioloop.stop()

    def _closed(self, connection, reason) -> None:
        self.events.append(("connection closed", reason))
        connection.ioloop.stop()

    def guard(self, function: Callable, *args: object) -> None:
        """Runs a step; an exception in it ends the script (pika would swallow it)."""
        try:
            function(*args)
        except BaseException as exc:
            self.errors.append(exc)
            self.finish()

    def step(self, function: Callable) -> Callable:
        """Wraps a callback with :meth:`guard`."""
        return lambda *args: self.guard(function, *args)

    def finish(self) -> None:
        self.finished = True
        if self.connection.is_open:
            self.connection.close()
        else:
            self.connection.ioloop.stop()

    def run(self, timeout: float = WAIT) -> None:
        def timed_out() -> None:
            self.errors.append(TimeoutError(f"script did not finish; events: {self.events!r}"))
            self.finish()

        ioloop = self.connection.ioloop
        timer = ioloop.call_later(timeout, timed_out)
        try:
            ioloop.start()
        finally:
            ioloop.remove_timeout(timer)
            ioloop.close()  # its wake-up socket pair would leak otherwise
        if self.errors:
            raise self.errors[0]
        assert self.finished, f"the connection ended early: {self.events!r}"


def test_publish_with_confirms_then_consume_and_ack(url, names):
    queue = names()
    count = 20
    acked: list[int] = []
    received: list[bytes] = []

    def start(script: Script) -> None:
        script.connection.channel(on_open_callback=script.step(opened))

    def opened(channel) -> None:
        channel.queue_declare(queue, callback=script.step(lambda _: declared(channel)))

    def declared(channel) -> None:
        channel.confirm_delivery(script.step(lambda frame: confirmed(channel, frame)))
        for i in range(count):
            channel.basic_publish("", queue, b"%d" % i)

    def confirmed(channel, frame) -> None:
        method = frame.method
        assert isinstance(method, pika.spec.Basic.Ack), method
        last = acked[-1] if acked else 0
        acked.extend(
            range(last + 1, method.delivery_tag + 1) if method.multiple else [method.delivery_tag]
        )
        if len(acked) == count:
            channel.basic_consume(queue, script.step(delivered))

    def delivered(channel, method, properties, body) -> None:
        received.append(body)
        channel.basic_ack(method.delivery_tag)
        if len(received) == count:
            channel.queue_declare(queue, passive=True, callback=script.step(checked))

    def checked(frame) -> None:
        script.events.append(("left", frame.method.message_count))
        script.finish()

    script = Script(url, start)
    script.run()
    assert acked == list(range(1, count + 1))
    assert received == [b"%d" % i for i in range(count)]
    assert ("left", 0) in script.events


def test_prefetch_window_with_callbacks(url, names):
    queue = names()
    deliveries: list[tuple[int, bytes]] = []
    checks: list[tuple[int, int]] = []  # (deliveries so far, ready in the queue)

    def start(script: Script) -> None:
        script.connection.channel(on_open_callback=script.step(opened))

    def opened(channel) -> None:
        channel.queue_declare(queue, callback=script.step(lambda _: declared(channel)))

    def declared(channel) -> None:
        for i in range(6):
            channel.basic_publish("", queue, b"%d" % i)
        channel.basic_qos(prefetch_count=2, callback=script.step(lambda _: consume(channel)))

    def consume(channel) -> None:
        channel.basic_consume(queue, script.step(delivered))

    def delivered(channel, method, properties, body) -> None:
        deliveries.append((method.delivery_tag, body))
        if len(deliveries) in (2, 4, 6):
            # A round trip after a full window: nothing more may have come meanwhile.
            channel.queue_declare(
                queue, passive=True, callback=script.step(lambda f: window_full(channel, f))
            )

    def window_full(channel, frame) -> None:
        checks.append((len(deliveries), frame.method.message_count))
        if len(deliveries) == 6:
            script.finish()
            return
        channel.basic_ack(deliveries[-1][0], multiple=True)

    script = Script(url, start)
    script.run()
    assert checks == [(2, 4), (4, 2), (6, 0)]
    assert [body for _, body in deliveries] == [b"%d" % i for i in range(6)]


def test_return_comes_before_the_confirm_of_an_unroutable_mandatory_publish(url, names):
    exchange = names("x")

    def start(script: Script) -> None:
        script.connection.channel(on_open_callback=script.step(opened))

    def opened(channel) -> None:
        channel.add_on_return_callback(
            script.step(lambda ch, method, props, body: script.events.append(("return", body)))
        )
        channel.exchange_declare(exchange, "topic", callback=script.step(lambda _: go(channel)))

    def go(channel) -> None:
        channel.confirm_delivery(script.step(confirmed))
        channel.basic_publish(exchange, "no.route", b"bounced", mandatory=True)

    def confirmed(frame) -> None:
        script.events.append((type(frame.method).__name__, frame.method.delivery_tag))
        script.finish()

    script = Script(url, start)
    script.run()
    assert script.events[:2] == [("return", b"bounced"), ("Ack", 1)]


def test_consumer_is_told_when_its_queue_is_deleted(url, names):
    queue = names()
    cancelled: list[str] = []

    def start(script: Script) -> None:
        script.connection.channel(on_open_callback=script.step(opened))

    def opened(channel) -> None:
        channel.add_on_cancel_callback(script.step(lambda frame: on_cancel(frame)))
        channel.queue_declare(queue, callback=script.step(lambda _: declared(channel)))

    def declared(channel) -> None:
        channel.basic_consume(
            queue,
            lambda *args: None,
            consumer_tag="watcher",
            callback=script.step(lambda _: consuming()),
        )

    def consuming() -> None:
        script.connection.channel(on_open_callback=script.step(lambda ch: ch.queue_delete(queue)))

    def on_cancel(frame) -> None:
        cancelled.append(frame.method.consumer_tag)
        script.finish()

    script = Script(url, start)
    script.run()
    assert cancelled == ["watcher"]


def test_channel_error_closes_only_that_channel(url, names):
    queue = names()
    closes: list[BaseException] = []

    def start(script: Script) -> None:
        script.connection.channel(on_open_callback=script.step(first_open))

    def first_open(channel) -> None:
        channel.add_on_close_callback(script.step(lambda ch, reason: closed(reason)))
        channel.queue_declare(names("missing"), passive=True)

    def closed(reason) -> None:
        closes.append(reason)
        script.connection.channel(on_open_callback=script.step(second_open))

    def second_open(channel) -> None:
        channel.queue_declare(queue, callback=script.step(lambda f: declared(f)))

    def declared(frame) -> None:
        script.events.append(("declared", frame.method.queue))
        script.finish()

    script = Script(url, start)
    script.run()
    assert len(closes) == 1 and isinstance(closes[0], ChannelClosedByBroker)
    assert closes[0].reply_code == 404
    assert ("declared", queue) in script.events


@pytest.mark.parametrize("size", [3 * 1024 * 1024 + 17])
def test_large_message_through_the_ioloop(url, names, size):
    queue = names()
    body = bytes(range(256)) * (size // 256) + b"tail"
    got: list[bytes] = []

    def start(script: Script) -> None:
        script.connection.channel(on_open_callback=script.step(opened))

    def opened(channel) -> None:
        channel.queue_declare(queue, callback=script.step(lambda _: declared(channel)))

    def declared(channel) -> None:
        channel.basic_consume(queue, script.step(delivered), auto_ack=True)
        channel.basic_publish("", queue, body)

    def delivered(channel, method, properties, received) -> None:
        got.append(received)
        script.finish()

    script = Script(url, start)
    script.run()
    assert len(got) == 1
    assert (len(got[0]), got[0] == body) == (len(body), True)
