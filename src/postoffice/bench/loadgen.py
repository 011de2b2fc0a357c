"""The load generator's worker processes: publishers, consumers, and the two ends of a call.

Each worker runs in its own process (so publishers and consumers never share a
GIL), opens its own connection, tells the runner it is ready, waits for the common
start signal and then works on the raw socket with pre-encoded frames
(:mod:`postoffice.bench.wire`).  Progress goes to a shared array the runner reads
while the scenario runs; the final report goes back through a queue.  A worker never
raises: an error ends up in its report, with the counts reached until then.
"""

from __future__ import annotations

import array
import multiprocessing
import select
import struct
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from postoffice import amqp
from postoffice.amqp.frames import (
    BASIC_ACK,
    BASIC_NACK,
    FRAME_METHOD,
    decode_ack,
    decode_nack,
    encode_ack,
    encode_content,
    method_index,
)

from .client import BenchError, BrokerAddress, BrokerClosed, Connection
from .measure import own_cpu_seconds
from .wire import (
    MESSAGE_ID,
    SEND_TIMES,
    TIMED_SIZE,
    ConfirmTracker,
    DeliveryStream,
    Message,
    PublishBatch,
)

__all__ = [
    "ConsumerReport",
    "ConsumerSpec",
    "Controls",
    "PublisherReport",
    "PublisherSpec",
    "consumer_main",
    "mp_context",
    "publisher_main",
    "responder_main",
]

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

_BUFFER_SIZE = 8 << 20
_RECV_MAX = 1 << 20
_CHECK_EVERY_NS = 20_000_000  # how often a busy loop looks at the stop signal
_PROGRESS_SLOTS = 2  # per worker: a count, and a second figure (confirms, or last delivery time)
_now = time.monotonic_ns


def mp_context() -> Any:
    """Worker processes start from a fork server: a clean process with this module loaded.

    Forking the caller directly would copy whatever threads it runs (a test's
    in-process broker, say) in an unknown state.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class Controls:
    """What the runner shares with its workers: start and stop signals, progress, reports."""

    go: Any
    stop: Any
    progress: Any  # a shared array of int64, _PROGRESS_SLOTS per worker
    reports: Any

    @classmethod
    def create(cls, context: Any, workers: int) -> Controls:
        return cls(
            go=context.Event(),
            stop=context.Event(),
            progress=context.RawArray("q", max(1, workers) * _PROGRESS_SLOTS),
            reports=context.Queue(),
        )

    def read(self, slot: int) -> tuple[int, int]:
        base = slot * _PROGRESS_SLOTS
        return self.progress[base], self.progress[base + 1]


@dataclass(frozen=True)
class PublisherSpec:
    """One publisher: where to publish, what, and for how long.

    It stops after ``count`` messages, or else after ``duration`` seconds.  ``rate``
    (messages per second, 0 for as fast as it can) paces it.  ``timed`` publishes one
    message at a time stamped with its due and sent times, for latency; with
    ``reply_to`` it is the calling end of request-reply and waits for each reply.
    With ``priorities`` N, message ``seq`` carries the priority property ``seq % N``.
    """

    index: int
    slot: int
    address: BrokerAddress
    routes: tuple[tuple[str, str], ...]
    size: int = 100
    persistent: bool = False
    confirms: bool = False
    window: int = 1000
    count: int = 0
    duration: float = 10.0
    rate: float = 0.0
    timed: bool = False
    warmup: float = 0.0  # seconds at the start whose latencies are not kept
    stall_timeout: float = 30.0
    priorities: int = 0


@dataclass(frozen=True)
class ConsumerSpec:
    """One consumer connection, subscribed to ``queues``, each on a channel of its own."""

    index: int
    slot: int
    address: BrokerAddress
    queues: tuple[str, ...]
    publishers: int
    prefetch: int = 1000
    ack_every: int = 100
    autoack: bool = False
    timed: bool = False
    warmup: float = 0.0  # messages due in the first seconds are not sampled
    priorities: int = 0  # the publishers' (see PublisherSpec): order is checked per priority


@dataclass
class PublisherReport:
    index: int
    published: int = 0
    confirmed: int = 0
    nacked: int = 0
    duplicate_confirms: int = 0
    blocked: int = 0
    first_ns: int | None = None  # the first write
    sent_ns: int | None = None  # the last write
    settled_ns: int | None = None  # the last confirm (or reply)
    closed_cleanly: bool = False
    cpu_seconds: float = 0.0
    latencies: bytes = b""  # request-reply round trips, array("q") of ns
    error: str = ""


@dataclass
class ConsumerReport:
    index: int
    consumed: int = 0
    redelivered: int = 0
    duplicates: int = 0
    foreign: int = 0
    tag_gaps: int = 0
    id_sum: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    cpu_seconds: float = 0.0
    latencies: bytes = b""  # array("q") of ns, sent to received
    latencies_from_due: bytes = b""  # array("q") of ns, due to received
    error: str = ""
    per_queue: dict[str, int] = field(default_factory=dict)


def describe(exc: BaseException) -> str:
    if isinstance(exc, BenchError | OSError | ValueError):
        return f"{type(exc).__name__}: {exc}"
    return "".join(traceback.format_exception(exc)).strip()


# -- publishers ----------------------------------------------------------------------------


def publisher_main(spec: PublisherSpec, controls: Controls) -> None:
    """The body of a publisher process."""
    report = PublisherReport(spec.index)
    connection = Connection(spec.address, f"bench-publisher-{spec.index}")
    try:
        connection.open()
        connection.channel_open(1)
        if spec.confirms:
            connection.confirm_select(1)
        batch = PublishBatch(
            1,
            spec.routes,
            spec.index,
            spec.size,
            {"delivery_mode": 2 if spec.persistent else 1},
            connection.frame_max,
            # A quarter of the confirm window per write keeps confirms flowing back.
            batch=max(1, spec.window // 4) if spec.confirms else 0,
            priorities=spec.priorities,
        )
        controls.reports.put(("ready", "publisher", spec.index, None))
        controls.go.wait()
        cpu = own_cpu_seconds()
        publisher = _Publisher(spec, controls, connection, report)
        if spec.timed:
            publisher.paced_singles(batch)
        else:
            publisher.batches(batch)
        report.cpu_seconds = own_cpu_seconds() - cpu
        report.blocked = connection.blocked
        report.closed_cleanly = connection.close(timeout=max(30.0, spec.stall_timeout))
        controls.reports.put(("done", "publisher", spec.index, report))
    except BaseException as exc:
        report.error = describe(exc)
        connection.close(timeout=1.0)
        controls.reports.put(("error", "publisher", spec.index, report))


class _Publisher:
    """The loops of one publisher; counts go to its report and its progress slots."""

    def __init__(
        self,
        spec: PublisherSpec,
        controls: Controls,
        connection: Connection,
        report: PublisherReport,
    ) -> None:
        self.spec = spec
        self.controls = controls
        self.connection = connection
        self.report = report
        self.tracker = ConfirmTracker()
        self.last_confirm_ns: int | None = None
        self.slot = spec.slot * _PROGRESS_SLOTS
        assert connection.sock is not None
        self.sock = connection.sock
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN)

    def batches(self, batch: PublishBatch) -> None:
        spec, report, tracker = self.spec, self.report, self.tracker
        progress, slot = self.controls.progress, self.slot
        sendall = self.sock.sendall
        full = batch.count
        window = spec.window if spec.confirms else 0
        start = _now()
        deadline = start + int(spec.duration * 1e9) if not spec.count else None
        report.first_ns = start
        sent = 0
        while True:
            n = full
            if spec.count:
                if sent >= spec.count:
                    break
                n = min(n, spec.count - sent)
            now = _now()
            if deadline is not None and now >= deadline:
                break
            if spec.rate:
                due = int((now - start) * spec.rate / 1e9) + 1 - sent
                if due <= 0:
                    time.sleep(min(0.005, (sent - (now - start) * spec.rate / 1e9) / spec.rate))
                    self.poll_incoming()
                    continue
                n = min(n, due)
            if window:
                self.wait_for_window(sent + n - window)
            sendall(batch.encode(sent, n))
            sent += n
            report.published = sent
            progress[slot] = sent
            self.poll_incoming()
        report.sent_ns = _now()
        if window:
            self.wait_for_window(sent)
            report.settled_ns = self.last_confirm_ns or report.sent_ns
        report.confirmed = tracker.acked
        report.nacked = tracker.nacked
        report.duplicate_confirms = tracker.duplicates

    def paced_singles(self, batch: PublishBatch) -> None:
        """One message at a time at ``rate``, each stamped with its due and sent times."""
        spec, report = self.spec, self.report
        progress, slot = self.controls.progress, self.slot
        sendall = self.sock.sendall
        interval = 1e9 / (spec.rate or 1000.0)
        start = _now() + 1_000_000
        end = start + int(spec.duration * 1e9)
        report.first_ns = start
        sent = 0
        while not spec.count or sent < spec.count:
            due = start + int(sent * interval)
            if due >= end and not spec.count:
                break
            now = _now()
            if due > now:
                time.sleep((due - now) / 1e9)  # never spin: the broker needs the CPU
            if spec.confirms:
                self.wait_for_window(sent + 1 - spec.window)
            sendall(batch.timed(sent, due, _now()))
            sent += 1
            report.published = sent
            progress[slot] = sent
            self.poll_incoming()
        report.sent_ns = _now()
        if spec.confirms:
            self.wait_for_window(sent)
        report.confirmed = self.tracker.acked
        report.nacked = self.tracker.nacked

    def wait_for_window(self, settled_at_least: int) -> None:
        """Read confirms until at least ``settled_at_least`` messages are settled."""
        tracker = self.tracker
        waited_since = _now()
        while tracker.settled < settled_at_least:
            before = tracker.settled
            self.read_incoming(0.5)
            if tracker.settled != before:
                waited_since = _now()
            elif _now() - waited_since > self.spec.stall_timeout * 1e9:
                raise BenchError(
                    f"publisher {self.spec.index}: no confirm for {self.spec.stall_timeout:g}s "
                    f"with {self.report.published - tracker.settled} unconfirmed"
                )

    def poll_incoming(self) -> None:
        if self.poller.poll(0):
            self.read_incoming(0.0)

    def read_incoming(self, timeout: float) -> None:
        connection, tracker = self.connection, self.tracker
        if not connection.fill(timeout):
            return
        settled = False
        while (frame := connection.next_frame()) is not None:
            frame_type, channel, payload = frame
            if frame_type != FRAME_METHOD:
                continue
            index = method_index(payload)
            if index == BASIC_ACK:
                tag, multiple = decode_ack(payload)
                tracker.settle(tag, multiple)
                settled = True
            elif index == BASIC_NACK:
                tag, multiple, _requeue = decode_nack(payload)
                tracker.settle(tag, multiple, nack=True)
                settled = True
            else:
                connection.check_method(channel, payload)
        if settled:
            self.last_confirm_ns = _now()
            self.controls.progress[self.slot + 1] = tracker.settled


# -- consumers -----------------------------------------------------------------------------


def consumer_main(spec: ConsumerSpec, controls: Controls) -> None:
    """The body of a consumer process: subscribe, then count until told to stop."""

    def subscribe(connection: Connection) -> None:
        for channel, queue in enumerate(spec.queues, start=1):
            connection.channel_open(channel)
            if not spec.autoack and spec.prefetch:
                connection.qos(channel, spec.prefetch)
            connection.consume(channel, queue, f"bench-{spec.index}-{channel}", spec.autoack)

    def count(connection: Connection, stream: DeliveryStream, report: ConsumerReport) -> None:
        _Consumer(spec, controls, connection, stream, report).run()

    _consumer_process(spec, controls, "consumer", spec.timed, subscribe, count)


def _consumer_process(
    spec: ConsumerSpec,
    controls: Controls,
    role: str,
    collect: bool,
    subscribe: Callable[[Connection], None],
    work: Callable[[Connection, DeliveryStream, ConsumerReport], None],
) -> None:
    """What every consuming process does around its own loop: connect, subscribe,
    say it is ready, wait for the start, run, and report (also on failure)."""
    report = ConsumerReport(spec.index)
    connection = Connection(spec.address, f"bench-{role}-{spec.index}")
    stream = DeliveryStream(spec.publishers, collect=collect, priorities=spec.priorities)
    try:
        connection.open()
        subscribe(connection)
        controls.reports.put(("ready", "consumer", spec.index, None))
        controls.go.wait()
        cpu = own_cpu_seconds()
        work(connection, stream, report)
        report.cpu_seconds = own_cpu_seconds() - cpu
        connection.close(timeout=5.0)
        _fill_consumer_report(report, stream, spec)
        controls.reports.put(("done", "consumer", spec.index, report))
    except BaseException as exc:
        report.error = describe(exc)
        connection.close(timeout=1.0)
        _fill_consumer_report(report, stream, spec)
        controls.reports.put(("error", "consumer", spec.index, report))


def _fill_consumer_report(
    report: ConsumerReport, stream: DeliveryStream, spec: ConsumerSpec
) -> None:
    report.consumed = stream.count
    report.redelivered = stream.redelivered
    report.duplicates = stream.duplicates
    report.foreign = stream.foreign
    report.id_sum = stream.id_sum
    report.tag_gaps = sum(state.tag_gaps for state in stream.channels.values())
    report.per_queue = {
        queue: stream.channels[channel].count if channel in stream.channels else 0
        for channel, queue in enumerate(spec.queues, start=1)
    }


class _Receiver:
    """A receive buffer that a :class:`DeliveryStream` reads in place."""

    def __init__(self, connection: Connection, stream: DeliveryStream) -> None:
        assert connection.sock is not None
        self.connection = connection
        self.sock = connection.sock
        self.stream = stream
        self.buffer = bytearray(_BUFFER_SIZE)
        self.view = memoryview(self.buffer)
        leftover = connection.take_buffer()
        self.buffer[: len(leftover)] = leftover
        self.pos = 0
        self.end = len(leftover)

    def receive(self) -> int:
        """Receive and parse what has come; 0 when nothing came within the socket timeout."""
        if self.pos == self.end:
            self.pos = self.end = 0
        elif _BUFFER_SIZE - self.end < _RECV_MAX:
            rest = self.end - self.pos
            self.buffer[:rest] = self.view[self.pos : self.end]
            self.pos, self.end = 0, rest
        try:
            got = self.sock.recv_into(self.view[self.end :], _RECV_MAX)
        except TimeoutError:
            got = 0
        else:
            if not got:
                raise BrokerClosed(f"{self.connection.name}: the broker closed the TCP connection")
        self.end += got
        if self.end > self.pos:
            self.pos = self.stream.feed(self.buffer, self.pos, self.end)
        if self.stream.methods:
            self._methods()
        return got

    def _methods(self) -> None:
        methods = self.stream.methods[:]
        self.stream.methods.clear()
        for channel, payload in methods:
            method = self.connection.check_method(channel, payload)
            if isinstance(method, amqp.BasicCancel):
                raise BrokerClosed(
                    f"{self.connection.name}: the broker cancelled consumer {method.consumer_tag}"
                )


class _Consumer:
    def __init__(
        self,
        spec: ConsumerSpec,
        controls: Controls,
        connection: Connection,
        stream: DeliveryStream,
        report: ConsumerReport,
    ) -> None:
        self.spec = spec
        self.controls = controls
        self.connection = connection
        self.stream = stream
        self.report = report
        self.latencies = array.array("q")
        self.latencies_from_due = array.array("q")
        self.sample_from = _now() + int(spec.warmup * 1e9)

    def run(self) -> None:
        spec, stream, report = self.spec, self.stream, self.report
        progress, slot = self.controls.progress, spec.slot * _PROGRESS_SLOTS
        receiver = _Receiver(self.connection, stream)
        receiver.sock.settimeout(0.02)
        stop = self.controls.stop
        next_check = _now() + _CHECK_EVERY_NS
        while True:
            before = stream.count
            got = receiver.receive()
            now = _now()
            if stream.count != before:
                if report.first_ns is None:
                    report.first_ns = now
                report.last_ns = now
                progress[slot] = stream.count
                progress[slot + 1] = now
                if stream.messages:
                    self._sample(now)
            if not spec.autoack:
                self._ack(idle=not got)
            if now >= next_check:
                next_check = now + _CHECK_EVERY_NS
                if stop.is_set():
                    break
        if not spec.autoack:
            self._ack(idle=True)
        report.latencies = self.latencies.tobytes()
        report.latencies_from_due = self.latencies_from_due.tobytes()

    def _ack(self, idle: bool) -> None:
        every = 1 if idle else self.spec.ack_every
        acks = []
        for channel, state in self.stream.channels.items():
            if state.last_tag - state.acked >= every:
                acks.append(encode_ack(channel, state.last_tag, True))
                state.acked = state.last_tag
        if acks:
            self.connection.send(b"".join(acks))

    def _sample(self, now: int) -> None:
        unpack = SEND_TIMES.unpack_from
        for message in self.stream.messages:
            if len(message.body) >= TIMED_SIZE:
                due, sent = unpack(message.body, MESSAGE_ID.size)
                if due < self.sample_from:
                    continue
                self.latencies.append(now - sent)
                self.latencies_from_due.append(now - due)
        self.stream.messages.clear()


# -- request-reply ---------------------------------------------------------------------------


def requester_main(spec: PublisherSpec, controls: Controls) -> None:
    """The calling end of request-reply: one request in flight, over direct reply-to."""
    report = PublisherReport(spec.index)
    connection = Connection(spec.address, f"bench-requester-{spec.index}")
    try:
        connection.open()
        connection.channel_open(1)
        connection.consume(1, DIRECT_REPLY_TO, f"bench-replies-{spec.index}", True)
        exchange, routing_key = spec.routes[0]
        properties = [
            amqp.encode_properties({"reply_to": DIRECT_REPLY_TO, "priority": priority})
            for priority in range(spec.priorities)
        ] or [amqp.encode_properties({"reply_to": DIRECT_REPLY_TO})]
        head = amqp.encode_method_frame(
            1, amqp.BasicPublish(exchange=exchange, routing_key=routing_key)
        )
        controls.reports.put(("ready", "publisher", spec.index, None))
        controls.go.wait()
        cpu = own_cpu_seconds()
        _call_loop(spec, controls, connection, report, head, properties)
        report.cpu_seconds = own_cpu_seconds() - cpu
        report.closed_cleanly = connection.close()
        controls.reports.put(("done", "publisher", spec.index, report))
    except BaseException as exc:
        report.error = describe(exc)
        connection.close(timeout=1.0)
        controls.reports.put(("error", "publisher", spec.index, report))


def _call_loop(
    spec: PublisherSpec,
    controls: Controls,
    connection: Connection,
    report: PublisherReport,
    head: bytes,
    properties: list[bytes],
) -> None:
    stream = DeliveryStream(spec.index + 1, collect=True)
    receiver = _Receiver(connection, stream)
    receiver.sock.settimeout(0.5)
    padding = bytes(max(0, spec.size - TIMED_SIZE))
    frame_max = connection.frame_max
    latencies = array.array("q")
    progress, slot = controls.progress, spec.slot * _PROGRESS_SLOTS
    start = report.first_ns = _now()
    end = start + int(spec.duration * 1e9)
    sample_from = start + int(spec.warmup * 1e9)
    calls = 0
    while (spec.count and calls < spec.count) or (not spec.count and _now() < end):
        sent = _now()
        body = struct.pack(">IQQQ", spec.index, calls, sent, sent) + padding
        header = properties[calls % len(properties)]
        connection.send(head + b"".join(encode_content(1, header, body, frame_max)))
        calls += 1
        report.published = calls
        waited_since = _now()
        while not stream.messages:
            if not receiver.receive() and _now() - waited_since > spec.stall_timeout * 1e9:
                raise BenchError(f"no reply in {spec.stall_timeout:g}s to call {calls}")
        if sent >= sample_from:
            latencies.append(_now() - sent)
        stream.messages.clear()
        report.confirmed = calls
        progress[slot] = calls
        progress[slot + 1] = calls
    report.sent_ns = report.settled_ns = _now()
    report.latencies = latencies.tobytes()


def responder_main(spec: ConsumerSpec, controls: Controls) -> None:
    """The answering end of request-reply: echoes each request to its reply_to."""

    def subscribe(connection: Connection) -> None:
        connection.channel_open(1)
        connection.qos(1, spec.prefetch)
        connection.consume(1, spec.queues[0], f"bench-responder-{spec.index}", False)

    def answer(connection: Connection, stream: DeliveryStream, report: ConsumerReport) -> None:
        _answer_loop(spec, controls, connection, stream, report)

    _consumer_process(spec, controls, "responder", True, subscribe, answer)


def _answer_loop(
    spec: ConsumerSpec,
    controls: Controls,
    connection: Connection,
    stream: DeliveryStream,
    report: ConsumerReport,
) -> None:
    receiver = _Receiver(connection, stream)
    receiver.sock.settimeout(0.02)
    reply_heads: dict[bytes, bytes] = {}
    reply_to_of: Callable[[bytes], bytes] = _reply_head(reply_heads)
    frame_max = connection.frame_max
    progress, slot = controls.progress, spec.slot * _PROGRESS_SLOTS
    next_check = _now() + _CHECK_EVERY_NS
    while True:
        receiver.receive()
        if stream.messages:
            out: list[bytes] = []
            for message in stream.messages:
                out.append(reply_to_of(message.properties))
                out.extend(encode_content(1, b"\x00\x00", message.body, frame_max))
            last: Message = stream.messages[-1]
            out.append(encode_ack(1, last.delivery_tag, True))
            stream.messages.clear()
            connection.send(b"".join(out))
            now = _now()
            report.first_ns = report.first_ns or now
            report.last_ns = now
            progress[slot] = stream.count
            progress[slot + 1] = now
        now = _now()
        if now >= next_check:
            next_check = now + _CHECK_EVERY_NS
            if controls.stop.is_set():
                break


def _reply_head(cache: dict[bytes, bytes]) -> Callable[[bytes], bytes]:
    """The basic.publish frame answering a request with these properties (cached)."""

    def head(properties: bytes) -> bytes:
        frame = cache.get(properties)
        if frame is None:
            reply_to = amqp.decode_properties(properties).get("reply_to")
            if not reply_to:
                raise BenchError("a request without reply_to")
            frame = amqp.encode_method_frame(1, amqp.BasicPublish(routing_key=reply_to))
            cache[properties] = frame
        return frame

    return head
