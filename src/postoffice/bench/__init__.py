"""``postoffice bench``: measure an AMQP 0-9-1 broker, alone or side by side with another.

The modules, one concern each:

* :mod:`~postoffice.bench.options` -- the command line;
* :mod:`~postoffice.bench.scenarios` -- what each scenario declares, publishes, consumes;
* :mod:`~postoffice.bench.runner` -- runs a scenario's plan and checks every count;
* :mod:`~postoffice.bench.loadgen` -- publisher and consumer processes on raw sockets;
* :mod:`~postoffice.bench.wire` -- pre-encoded publishes, deliveries counted in place;
* :mod:`~postoffice.bench.client` -- the blocking connection for handshakes and declares;
* :mod:`~postoffice.bench.measure` -- percentiles, rates, a process's CPU and memory;
* :mod:`~postoffice.bench.report` -- progress line, tables, JSON;
* :mod:`~postoffice.bench.sink` -- the null broker behind ``selftest``.

It uses the standard library and postoffice's own codec only.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

from .client import BenchError, BrokerAddress, Connection
from .measure import find_listener_pid
from .options import Options, UsageError, build_parser, from_namespace
from .report import (
    BrokerInfo,
    Result,
    comparison_table,
    machine_description,
    problems,
    results_table,
    to_json,
)
from .runner import Progress, Target, run_scenario
from .scenarios import unique_prefix

__all__ = ["main", "run"]


def main(argv: Sequence[str], prog: str = "postoffice bench") -> int:
    """Run the command; the exit code: 0 when every check passed, 1 if one failed or the
    broker could not be reached, 2 for a usage error, 130 when interrupted."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(list(argv))
        options = from_namespace(args)
    except SystemExit as exc:  # --help and argparse's usage errors
        return exc.code if isinstance(exc.code, int) else 2
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        targets = []
        if set(options.scenarios) != {"selftest"}:  # the null broker needs no broker
            targets.append(_target("A", options.url, options.pid))
            if options.against:
                targets.append(_target("B", options.against, options.against_pid))
    except BenchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    progress = Progress(options.progress if options.progress is not None else sys.stderr.isatty())
    results, interrupted = run(options, targets, progress)
    _print(options, targets, results)
    if interrupted:
        return 130
    return 0 if results and all(result.ok for result in results) else 1


def run(
    options: Options, targets: Sequence[Target], progress: Progress
) -> tuple[list[Result], bool]:
    """Every scenario, each broker in turn per round; (results, whether interrupted)."""
    results: list[Result] = []
    prefix = unique_prefix()
    try:
        for name in options.scenarios:
            for round_ in range(1, options.rounds + 1):
                for target in _SELF if name == "selftest" else targets:
                    try:
                        got = run_scenario(name, options, target, round_, prefix, progress)
                    except BenchError as exc:
                        got = [Result(name, target.info.label, round_, errors=[str(exc)])]
                    for result in got:
                        progress.clear()
                        print(_one_line(result), file=sys.stderr, flush=True)
                    results += got
    except KeyboardInterrupt:
        progress.clear()
        print("interrupted", file=sys.stderr)
        return results, True
    return results, False


# selftest runs on a null broker of its own, whatever the URLs say.
_SELF = [Target(BrokerInfo("self", ""), BrokerAddress())]


def _target(label: str, url: str, pid: int | None) -> Target:
    """A broker to measure: reachable, named by itself, and its pid found if not given."""
    address = BrokerAddress.parse(url)
    with Connection(address, f"bench-probe-{label}", timeout=10) as connection:
        connection.open()
        product = connection.describe_broker()
    if pid is None and address.is_local:
        pid = find_listener_pid(address.port)
    return Target(BrokerInfo(label, str(address), product, pid), address)


def _one_line(result: Result) -> str:
    parts = [f"{result.scenario} on {result.broker} (round {result.round}):"]
    if result.rate is not None:
        parts.append(f"{result.rate:,.0f} {result.unit}")
    if result.broker_cpu_us is not None:
        parts.append(f"{result.broker_cpu_us:.2f} us broker CPU/msg")
    if "p99" in result.latency_us:
        parts.append(f"p99 {result.latency_us['p99'] / 1000:.3f} ms")
    if "mb_per_1000" in result.memory:
        parts.append(f"{result.memory['mb_per_1000']:.1f} MB/1000 conn")
    parts.append("ok" if result.ok else "FAILED: " + "; ".join(result.errors))
    return " ".join(parts)


_LEGEND = (
    "rate: deliveries/s with consumers, confirms/s publishing only, calls/s for rpc",
    "CPU us/msg: the broker's CPU time (user + system, all threads) per message, delivery,",
    "call or connection counted; broker cores: its CPU seconds per second",
)


def _queue_rules(options: Options) -> list[str]:
    """What makes these queues and messages differ from plain ones, to tell runs apart."""
    lines = []
    if options.queue_arguments:
        arguments = ", ".join(f"{key}={value!r}" for key, value in options.queue_arguments)
        lines.append(f"queue arguments: {arguments}")
    if options.priorities:
        lines.append(f"priorities: 0..{options.priorities - 1}, cycling from message to message")
    return lines


def _print(options: Options, targets: Sequence[Target], results: Sequence[Result]) -> None:
    brokers = [target.info for target in targets]
    if any(result.broker == "self" for result in results):
        brokers.append(BrokerInfo("self", "", "the bench null broker, in a process of its own"))
    if options.json:
        print(to_json(results, brokers, dataclasses.asdict(options)))
        return
    machine = machine_description()
    lines = [f"machine: {machine['cpus']} cores, {machine['platform']}, {machine['python']}"]
    lines += [broker.describe() for broker in brokers]
    lines += _queue_rules(options)
    if results:
        lines += ["", results_table(results), "", *_LEGEND]
    if len(targets) > 1 and results:
        lines += ["", "medians over rounds; A/B above 1 means A has more of it", ""]
        lines.append(comparison_table(results))
    trouble = problems(results)
    if trouble:
        lines += ["", *trouble]
    print("\n".join(lines))
