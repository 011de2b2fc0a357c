"""Carries out a scenario's plan on one broker and turns the workers' reports into results.

A flow runs in phases: declare the topology, start the consumers and wait until each
has subscribed, start the publishers and wait until each is connected, take the
broker's CPU time and give the start signal; then wait for the publishers to finish,
for the consumers to receive every message they should, take the broker's CPU time
again, stop the consumers, check the counts, and delete the topology (also when
something failed).  Rates are measured from the start signal to the last delivery
(or confirm, or reply), so connection set-up is never part of a figure.
"""

from __future__ import annotations

import array
import queue
import resource
import select
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from . import sink
from .client import BenchError, BrokerAddress, Connection
from .loadgen import (
    ConsumerReport,
    Controls,
    PublisherReport,
    consumer_main,
    mp_context,
    publisher_main,
    requester_main,
    responder_main,
)
from .measure import broker_cpu_seconds, fd_headroom, rate, rss_kib, summarize_latencies
from .options import Options
from .report import BrokerInfo, Result, format_progress
from .scenarios import ConnectionsPlan, FlowPlan, Plan, Topology, build
from .wire import expected_id_sum

__all__ = ["Progress", "Target", "null_broker", "run_scenario", "verify_flow"]

_now = time.monotonic_ns
_BUSY = 0.9  # a worker using this share of a core may be holding the benchmark back


@dataclass(frozen=True)
class Target:
    """A broker to run scenarios on."""

    info: BrokerInfo
    address: BrokerAddress


class Progress:
    """The progress line on stderr, redrawn in place at most twice a second."""

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._shown = 0
        self._last = 0

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = _now()
        if not force and now - self._last < 500_000_000:
            return
        self._last = now
        self.stream.write("\r" + text.ljust(self._shown))
        self.stream.flush()
        self._shown = len(text)

    def clear(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0


@contextmanager
def null_broker() -> Iterator[Target]:
    """A :mod:`~postoffice.bench.sink` in a process of its own, as a target."""
    context = mp_context()
    ready = context.Queue()
    process = context.Process(target=sink.serve, args=(ready,), name="bench-sink", daemon=True)
    process.start()
    try:
        port = ready.get(timeout=30)
        url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
        info = BrokerInfo("self", url, "bench null broker", process.pid)
        yield Target(info, BrokerAddress.parse(url))
    finally:
        process.terminate()
        process.join(timeout=5)


def run_scenario(
    name: str, options: Options, target: Target, round_: int, prefix: str, progress: Progress
) -> list[Result]:
    """Run scenario ``name`` once on ``target``; one result per figure it yields.

    ``selftest`` runs on a null broker of its own instead of ``target``.
    """
    if name == "selftest":
        with null_broker() as own:
            return _run(build(name, options, own.address, prefix), options, own, round_, progress)
    return _run(build(name, options, target.address, prefix), options, target, round_, progress)


def _run(
    plan: Plan, options: Options, target: Target, round_: int, progress: Progress
) -> list[Result]:
    if isinstance(plan, ConnectionsPlan):
        return [_run_connections(plan, target, round_, progress)]
    return _Flow(plan, options, target, round_, progress).run()


# -- flows -----------------------------------------------------------------------------------


@dataclass
class _Snapshot:
    ns: int
    cpu: float | None

    @classmethod
    def take(cls, pid: int | None) -> _Snapshot:
        return cls(_now(), broker_cpu_seconds(pid) if pid else None)


class _Ticker:
    """The rate of a count and the broker's cores over the last half second or so."""

    def __init__(self, start: _Snapshot) -> None:
        self.last = start
        self.count = 0
        self.rate: float | None = None
        self.cores: float | None = None

    def tick(self, now: _Snapshot, count: int) -> None:
        seconds = (now.ns - self.last.ns) / 1e9
        if seconds < 0.5:
            return
        self.rate = (count - self.count) / seconds
        if now.cpu is not None and self.last.cpu is not None:
            self.cores = (now.cpu - self.last.cpu) / seconds
        self.last, self.count = now, count


class _Workers:
    """The processes of one phase, and the reports they send back."""

    def __init__(self, context: Any, controls: Controls) -> None:
        self.context = context
        self.controls = controls
        self.processes: dict[tuple[str, int], Any] = {}
        self.reports: dict[tuple[str, int], Any] = {}
        self.errors: list[str] = []

    def start(self, role: str, target: Callable[..., None], specs: Sequence[Any]) -> None:
        for spec in specs:
            process = self.context.Process(
                target=target,
                args=(spec, self.controls),
                name=f"bench-{role}-{spec.index}",
                daemon=True,
            )
            process.start()
            self.processes[(role, spec.index)] = process

    def wait_ready(self, role: str, count: int, timeout: float) -> None:
        ready = 0
        deadline = time.monotonic() + timeout
        while ready < count:
            message = self.next(max(0.0, deadline - time.monotonic()))
            if message is None:
                if time.monotonic() >= deadline:
                    raise BenchError(f"{count - ready} {role}s did not get ready in {timeout:g}s")
                continue
            kind, who, index, _report = message
            if kind == "error":
                raise BenchError(f"{who} {index} could not start: {_report.error}")
            if kind == "ready" and who == role:
                ready += 1

    def next(self, timeout: float) -> tuple[str, str, int, Any] | None:
        """The next message from a worker; reports are also kept in :attr:`reports`."""
        try:
            message: tuple[str, str, int, Any] = self.controls.reports.get(timeout=timeout)
        except queue.Empty:
            self._check_alive()
            return None
        kind, role, index, report = message
        if kind in ("done", "error"):
            self.reports[(role, index)] = report
            if kind == "error":
                self.errors.append(f"{role} {index}: {report.error}")
        return message

    def reported(self, role: str) -> list[Any]:
        """The reports of ``role``, by index; a worker that died has none (see errors)."""
        return [
            report
            for (who, _), report in sorted(self.reports.items())
            if who == role and report is not None
        ]

    def count(self, role: str) -> int:
        return sum(1 for who, _ in self.processes if who == role)

    def _check_alive(self) -> None:
        for key, process in self.processes.items():
            if key not in self.reports and not process.is_alive():
                self.reports[key] = None
                self.errors.append(
                    f"{key[0]} {key[1]} died without a report (exit code {process.exitcode})"
                )

    def gather(self, role: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while sum(1 for who, _ in self.reports if who == role) < self.count(role):
            if time.monotonic() >= deadline:
                missing = [
                    key for key in self.processes if key[0] == role and key not in self.reports
                ]
                self.errors.append(f"no report from {', '.join(f'{r} {i}' for r, i in missing)}")
                return
            self.next(0.1)

    def end(self) -> None:
        self.controls.go.set()
        self.controls.stop.set()
        for process in self.processes.values():
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


class _Flow:
    def __init__(
        self, plan: FlowPlan, options: Options, target: Target, round_: int, progress: Progress
    ) -> None:
        self.plan = plan
        self.options = options
        self.target = target
        self.round = round_
        self.progress = progress
        self.pid = target.info.pid
        self.context = mp_context()
        self.phases: list[_Workers] = []

    def run(self) -> list[Result]:
        plan = self.plan
        if not plan.publishers:
            raise BenchError(f"{plan.name} needs at least one publisher")
        with Connection(self.target.address, "bench-control") as control:
            control.open()
            control.channel_open(1)
            try:
                _declare(control, plan.topology)
                results = self._move()
                left = _depth(control, plan.topology)
            finally:
                for phase in self.phases:
                    phase.end()
                self.progress.clear()
                cleanup_error = _delete(self.target.address, plan.topology)
        expected_left = 0 if plan.consumers else sum(r.count for r in results)
        if left is not None and left != expected_left:
            results[-1].warnings.append(
                f"{left} messages in the queues at the end, expected {expected_left}"
            )
        if cleanup_error:
            results[-1].errors.append(cleanup_error)
        return results

    def _phase(self, workers: int) -> _Workers:
        phase = _Workers(self.context, Controls.create(self.context, workers))
        self.phases.append(phase)
        return phase

    def _move(self) -> list[Result]:
        plan = self.plan
        publisher_target = requester_main if plan.calls else publisher_main
        consumer_target = responder_main if plan.calls else consumer_main
        workers = len(plan.publishers) + len(plan.consumers)
        fill = self._phase(workers)
        drain = self._phase(workers) if plan.backlog else fill
        timeout = 60.0
        if plan.consumers and not plan.backlog:
            fill.start("consumer", consumer_target, plan.consumers)
            fill.wait_ready("consumer", len(plan.consumers), timeout)
        fill.start("publisher", publisher_target, plan.publishers)
        fill.wait_ready("publisher", len(plan.publishers), timeout)
        start = _Snapshot.take(self.pid)
        fill.controls.go.set()
        published_end = self._await_publishers(fill, start)
        results = []
        publishers: list[PublisherReport] = fill.reported("publisher")
        if plan.backlog or not plan.consumers:
            results.append(self._publish_result(fill, start, published_end, publishers))
        if not plan.consumers:
            return results
        if plan.backlog:
            drain.start("consumer", consumer_target, plan.consumers)
            drain.wait_ready("consumer", len(plan.consumers), timeout)
            start = _Snapshot.take(self.pid)
            drain.controls.go.set()
        published = [report.published for report in publishers]
        expected = sum(published) * plan.copies
        end = self._await_consumers(drain, start, expected)
        drain.controls.stop.set()
        drain.gather("consumer", timeout=30.0)
        results.append(self._flow_result(fill, drain, start, end, publishers, published))
        return results

    def _counts(self, phase: _Workers) -> dict[str, int]:
        counts = {}
        publishers = [phase.controls.read(spec.slot) for spec in self.plan.publishers]
        if phase.count("publisher"):
            counts["published"] = sum(sent for sent, _ in publishers)
            if self.plan.confirms:
                counts["confirmed"] = sum(settled for _, settled in publishers)
        if phase.count("consumer"):
            consumed = [phase.controls.read(spec.slot)[0] for spec in self.plan.consumers]
            counts["consumed"] = sum(consumed)
        return counts

    def _show(self, phase: _Workers, start: _Snapshot, key: str, ticker: _Ticker) -> int:
        """Draw the progress line; returns the count that tells whether anything moves."""
        counts = self._counts(phase)
        moving = counts.get(key, 0)
        now = _Snapshot.take(self.pid) if self.progress.enabled else _Snapshot(_now(), None)
        ticker.tick(now, moving)
        text = format_progress(
            self.plan.name,
            self.target.info.label,
            (now.ns - start.ns) / 1e9,
            counts,
            ticker.rate,
            ticker.cores,
        )
        self.progress.show(text)
        return moving

    def _await_publishers(self, phase: _Workers, start: _Snapshot) -> _Snapshot:
        key = "confirmed" if self.plan.confirms else "published"
        ticker = _Ticker(start)
        moved_at, moved = time.monotonic(), -1
        stall = self.options.stall_timeout
        while sum(1 for who, _ in phase.reports if who == "publisher") < phase.count("publisher"):
            phase.next(0.1)
            count = self._show(phase, start, key, ticker)
            if count != moved:
                moved_at, moved = time.monotonic(), count
            elif time.monotonic() - moved_at > stall + 5:
                phase.errors.append(f"publishers made no progress for {stall:g}s")
                break
        return _Snapshot.take(self.pid)

    def _await_consumers(self, phase: _Workers, start: _Snapshot, expected: int) -> _Snapshot:
        ticker = _Ticker(start)
        moved_at, moved = time.monotonic(), -1
        stall = self.options.stall_timeout
        while True:
            consumed = self._show(phase, start, "consumed", ticker)
            if consumed >= expected:
                break
            if consumed != moved:
                moved_at, moved = time.monotonic(), consumed
            elif time.monotonic() - moved_at > stall:
                phase.errors.append(
                    f"consumers stalled for {stall:g}s at {consumed:,} of {expected:,} deliveries"
                )
                break
            if any(who == "consumer" for who, _ in phase.reports):
                break  # a consumer ended early: it failed
            phase.next(0.01)
        end = _Snapshot.take(self.pid)
        last_delivery = max(phase.controls.read(spec.slot)[1] for spec in self.plan.consumers)
        if last_delivery > start.ns:
            end.ns = last_delivery
        return end

    def _base(self, start: _Snapshot, end: _Snapshot, count: int, unit: str) -> Result:
        seconds = (end.ns - start.ns) / 1e9
        cpu = end.cpu - start.cpu if end.cpu is not None and start.cpu is not None else None
        return Result(
            scenario=self.plan.name,
            broker=self.target.info.label,
            round=self.round,
            rate=rate(count, start.ns, end.ns),
            unit=unit,
            count=count,
            seconds=round(seconds, 3),
            broker_cpu_us=cpu / count * 1e6 if cpu is not None and count else None,
            broker_cores=cpu / seconds if cpu is not None and seconds > 0 else None,
        )

    def _publish_result(
        self,
        phase: _Workers,
        start: _Snapshot,
        end: _Snapshot,
        publishers: list[PublisherReport],
    ) -> Result:
        """Publish-only, or the fill of a backlog: confirmed messages per second.

        Without confirms, messages published until every publisher's connection.close-ok
        (which the broker sends once it has read everything before it).
        """
        if self.plan.confirms:
            count = sum(report.confirmed for report in publishers)
            settled = [report.settled_ns for report in publishers if report.settled_ns]
            if settled:
                end = _Snapshot(max(settled), end.cpu)
        else:
            count = sum(report.published for report in publishers)
        name = f"{self.plan.name} fill" if self.plan.backlog else self.plan.name
        result = self._base(start, end, count, "msg/s")
        result.scenario = name
        errors, warnings, details = verify_flow(self.plan, publishers, None)
        result.errors += phase.errors + errors
        result.warnings += warnings
        result.details = details
        _add_load(result, publishers)
        return result

    def _flow_result(
        self,
        fill: _Workers,
        drain: _Workers,
        start: _Snapshot,
        end: _Snapshot,
        publishers: list[PublisherReport],
        published: list[int],
    ) -> Result:
        plan = self.plan
        consumers: list[ConsumerReport] = drain.reported("consumer")
        if plan.calls:
            count = sum(report.confirmed for report in publishers)
            settled = [report.settled_ns for report in publishers if report.settled_ns]
            result = self._base(
                start, _Snapshot(max(settled, default=end.ns), end.cpu), count, "calls/s"
            )
            samples = _samples(report.latencies for report in publishers)
        else:
            count = sum(report.consumed for report in consumers)
            unit = "deliveries/s" if plan.copies > 1 else "msg/s"
            result = self._base(start, end, count, unit)
            samples = _samples(report.latencies for report in consumers)
        name = f"{plan.name} drain" if plan.backlog else plan.name
        result.scenario = name
        if plan.latency or plan.calls:
            result.latency_us = summarize_latencies(samples)
        if plan.latency:
            from_due = _samples(report.latencies_from_due for report in consumers)
            result.details["latency_from_due_us"] = summarize_latencies(from_due)
        errors, warnings, details = verify_flow(plan, publishers, consumers)
        result.errors += fill.errors + (drain.errors if drain is not fill else []) + errors
        result.warnings += warnings
        workers: list[PublisherReport | ConsumerReport] = [*consumers]
        if not plan.backlog:
            workers += publishers
        result.details.update(details)
        _add_load(result, workers)
        result.details["published_per_publisher"] = published
        return result


def _samples(chunks: Any) -> array.array[int]:
    samples = array.array("q")
    for chunk in chunks:
        samples.frombytes(chunk)
    return samples


def _add_load(result: Result, reports: Sequence[PublisherReport | ConsumerReport]) -> None:
    """The load generator's own CPU, per worker and in all, with a warning for a busy worker."""
    seconds = result.seconds
    if seconds <= 0:
        return
    cores = {}
    for report in reports:
        role = "publisher" if isinstance(report, PublisherReport) else "consumer"
        share = report.cpu_seconds / seconds
        cores[f"{role} {report.index}"] = round(share, 3)
        if share > _BUSY:
            result.warnings.append(
                f"{role} {report.index} used {share:.0%} of a core: the load generator "
                "may be what limits this figure (add --publishers or --consumers)"
            )
    result.client_cores = sum(cores.values())
    result.details["worker_cores"] = cores


def verify_flow(
    plan: FlowPlan,
    publishers: Sequence[PublisherReport],
    consumers: Sequence[ConsumerReport] | None,
) -> tuple[list[str], list[str], dict[str, Any]]:
    """Did every message arrive, once?  (errors, warnings, the counts behind them).

    ``consumers`` None checks the publishing side only (a backlog's fill).
    """
    errors: list[str] = []
    warnings: list[str] = []
    published = [report.published for report in publishers]
    total = sum(published)
    details: dict[str, Any] = {"published": total}
    if plan.confirms:
        confirmed = sum(report.confirmed for report in publishers)
        nacked = sum(report.nacked for report in publishers)
        details.update(confirmed=confirmed, nacked=nacked)
        if nacked:
            errors.append(f"the broker nacked {nacked:,} of {total:,} messages")
        if confirmed + nacked < total:
            errors.append(f"{total - confirmed - nacked:,} of {total:,} messages never confirmed")
        duplicates = sum(report.duplicate_confirms for report in publishers)
        if duplicates:
            errors.append(f"{duplicates:,} messages confirmed twice")
    for report in publishers:
        if report.blocked:
            warnings.append(
                f"publisher {report.index}: the broker blocked it {report.blocked} times"
            )
        if not report.error and not report.closed_cleanly:
            warnings.append(f"publisher {report.index}: no connection.close-ok from the broker")
    if not plan.consumers or consumers is None:
        return errors, warnings, details
    expected = (
        total if plan.calls else (total * plan.copies)
    )  # a call is one request delivered to the responder
    got = consumers
    consumed = sum(report.consumed for report in got)
    redelivered = sum(report.redelivered for report in got)
    duplicates = sum(report.duplicates for report in got)
    foreign = sum(report.foreign for report in got)
    gaps = sum(report.tag_gaps for report in got)
    details.update(
        expected=expected,
        consumed=consumed,
        redelivered=redelivered,
        duplicates=duplicates,
        per_queue={queue: n for report in got for queue, n in report.per_queue.items()},
    )
    if consumed - redelivered > expected:
        errors.append(f"{consumed - redelivered - expected:,} deliveries more than expected")
    if consumed < expected:
        errors.append(f"lost {expected - consumed:,} of {expected:,} messages")
    if duplicates:
        errors.append(f"{duplicates:,} duplicate deliveries not flagged redelivered")
    if foreign:
        errors.append(f"{foreign:,} deliveries that no publisher of this run sent")
    if gaps:
        warnings.append(f"delivery tags skipped numbers {gaps} times")
    if redelivered:
        warnings.append(f"{redelivered:,} redeliveries")
    elif consumed == expected and not duplicates and not foreign:
        copies = 1 if plan.calls else plan.copies
        if sum(report.id_sum for report in got) != copies * expected_id_sum(published):
            errors.append("the message ids do not add up: some were lost and others duplicated")
    return errors, warnings, details


# -- topology ------------------------------------------------------------------------------


def _declare(control: Connection, topology: Topology) -> None:
    for queue_name in topology.queues:
        control.queue_declare(
            1, queue_name, durable=topology.durable, arguments=dict(topology.arguments)
        )
    for exchange, kind in topology.exchanges:
        control.exchange_declare(1, exchange, kind, durable=topology.durable)
    for queue_name, exchange, key in topology.bindings:
        control.queue_bind(1, queue_name, exchange, key)


def _depth(control: Connection, topology: Topology) -> int | None:
    """Messages ready in the topology's queues, or None if the broker would not say."""
    try:
        return sum(
            control.queue_declare(1, name, passive=True).message_count for name in topology.queues
        )
    except (BenchError, OSError):
        return None


def _delete(address: BrokerAddress, topology: Topology) -> str | None:
    """Deletes the topology over a fresh connection; the error, if it could not."""
    if not topology.queues and not topology.exchanges:
        return None
    try:
        with Connection(address, "bench-cleanup", timeout=15) as connection:
            connection.open()
            channel = 1
            connection.channel_open(channel)
            for queue_name in topology.queues:
                connection.queue_delete(channel, queue_name)
            for exchange, _kind in topology.exchanges:
                connection.exchange_delete(channel, exchange)
    except (BenchError, OSError) as exc:
        return f"could not delete the scenario's queues and exchanges: {exc}"
    return None


# -- idle connections -------------------------------------------------------------------------


def _run_connections(
    plan: ConnectionsPlan, target: Target, round_: int, progress: Progress
) -> Result:
    """Opens ``plan.count`` connections with a channel each; the broker's RSS before and after."""
    pid = target.info.pid
    result = Result(plan.name, target.info.label, round_, unit="conn/s")
    _raise_fd_limit(plan.count + 64)
    if pid:
        headroom = fd_headroom(pid)
        if headroom and headroom[0] + plan.count + 32 > headroom[1]:
            result.errors.append(
                f"the broker (pid {pid}) has {headroom[0]} files open and may open "
                f"{headroom[1]}: {plan.count} more connections would exhaust it "
                f"(try --connections {max(1, headroom[1] - headroom[0] - 64)})"
            )
            return result
    before = rss_kib(pid) if pid else None
    start = _Snapshot.take(pid)
    opened: list[Connection] = []
    failures: dict[str, int] = {}

    def open_one(index: int) -> None:
        connection = Connection(plan.address, f"bench-idle-{index}", timeout=30)
        try:
            connection.open()
            connection.channel_open(1)
        except (BenchError, OSError) as exc:
            connection.close(timeout=1)
            text = str(exc).replace(f"bench-idle-{index}", "bench-idle-N")
            failures[text] = failures.get(text, 0) + 1
            return
        opened.append(connection)
        progress.show(f"{plan.name:<12} {target.info.label}  opened {len(opened):,}")

    try:
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(open_one, range(plan.count)))
        end = _Snapshot.take(pid)
        time.sleep(plan.hold)
        with_connections = rss_kib(pid) if pid else None
        dead = _closed_by_broker(opened)
    finally:
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(lambda connection: connection.close(timeout=5), opened))
        progress.clear()
    time.sleep(plan.hold)
    after = rss_kib(pid) if pid else None
    result.count = len(opened)
    result.seconds = round((end.ns - start.ns) / 1e9, 3)
    result.rate = rate(len(opened), start.ns, end.ns)
    if start.cpu is not None and end.cpu is not None and opened:
        result.broker_cpu_us = (end.cpu - start.cpu) / len(opened) * 1e6
    result.errors += [f"{n} connections failed: {text}" for text, n in failures.items()]
    if dead:
        result.errors.append(f"the broker closed {dead} idle connections")
    if before is not None and with_connections is not None and opened:
        per_connection = (with_connections - before) / len(opened)
        result.memory = {
            "rss_before_kib": before,
            "rss_with_connections_kib": with_connections,
            "rss_after_close_kib": after or 0,
            "kib_per_connection": round(per_connection, 2),
            "mb_per_1000": round(per_connection * 1000 / 1024, 2),
        }
    return result


def _closed_by_broker(connections: Sequence[Connection]) -> int:
    """How many of ``connections`` have something to read: the broker closed them."""
    poller = select.poll()
    for connection in connections:
        if connection.sock is not None:
            poller.register(connection.sock, select.POLLIN)
    return len(poller.poll(0))


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
