"""The ``postoffice bench`` command line: its parser and the options it yields."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

from .client import BrokerAddress
from .wire import MESSAGE_ID, TIMED_SIZE

__all__ = [
    "SCENARIOS",
    "Options",
    "QueueArgument",
    "UsageError",
    "add_arguments",
    "build_parser",
    "parse",
]

# name -> what it measures; the order is the order of a run without names.
SCENARIOS: dict[str, str] = {
    "transient": "1 publisher -> 1 queue -> 1 consumer, manual acks every N, prefetch",
    "autoack": "as transient, but the consumer does not ack (no-ack)",
    "persistent": "durable queue, delivery_mode 2, publisher confirms, manual acks",
    "confirms": "publish only, with publisher confirms: confirmed messages per second",
    "fanout": "1 publisher -> fanout exchange -> N queues, each consumed: deliveries per second",
    "topic": "topic exchange, N queues with many wildcard bindings; each message routes to one",
    "many-queues": "N queues, round-robin publishing, consumers spread over the queues",
    "rpc": "request-reply over direct reply-to, one call in flight: calls/s and round trip",
    "latency": "fixed publish rate (--rate, default 1000/s): p50/p90/p99/p99.9 end to end",
    "connections": "N idle connections with a channel each: broker memory (RSS) per connection",
    "backlog": "fill a queue with no consumer (with confirms), then drain it",
    "selftest": "the load generator against an in-process null broker: its own ceiling",
}
DEFAULT_SCENARIOS = ("transient", "persistent", "fanout", "latency")

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

# Scenarios with no queue of their own to declare nor messages to publish: they cannot
# honour --queue-arg or --priorities (selftest's null broker ignores both).
_WITHOUT_QUEUES = {
    "connections": "opens idle connections only",
    "selftest": "runs on the bench's null broker, which ignores queue arguments and priorities",
}
_MAX_PRIORITIES = 255  # the priority property is an octet

QueueArgument = int | bool | str

_EPILOG = "scenarios:\n" + "\n".join(f"  {name:<12} {text}" for name, text in SCENARIOS.items())


class UsageError(Exception):
    """Options that cannot work together; the message names them."""


@dataclass(frozen=True)
class Options:
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    url: str = DEFAULT_URL
    against: str | None = None
    rounds: int = 1
    pid: int | None = None
    against_pid: int | None = None
    size: int = 100
    duration: float = 10.0
    count: int = 0
    publishers: int | None = None
    consumers: int | None = None
    prefetch: int = 1000
    ack_every: int = 100
    confirm_window: int = 1000
    rate: float | None = None
    queues: int | None = None
    bindings: int = 100
    connections: int = 1000
    warmup: float = 1.0
    stall_timeout: float = 30.0
    queue_arguments: tuple[tuple[str, QueueArgument], ...] = ()
    priorities: int = 0  # publishers cycle the priority property over 0..N-1; 0: not set
    json: bool = False
    progress: bool | None = None  # None: when stderr is a terminal

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress.parse(self.url)

    @property
    def against_address(self) -> BrokerAddress | None:
        return BrokerAddress.parse(self.against) if self.against else None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds")
    return value


def _queue_argument(text: str) -> tuple[str, QueueArgument]:
    """``KEY=VALUE``: an integer value is an int, true or false a bool, anything else a string."""
    key, equals, raw = text.partition("=")
    if not key or not equals:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    value: QueueArgument = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        try:
            value = int(raw)
        except ValueError:
            pass
    return key, value


def _priorities(text: str) -> int:
    value = _positive_int(text)
    if value > _MAX_PRIORITIES:
        raise argparse.ArgumentTypeError(f"{text} is above {_MAX_PRIORITIES}")
    return value


def _url(text: str) -> str:
    try:
        BrokerAddress.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench options, on ``parser`` (the ``bench`` subcommand's, or a parser of its own)."""
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"scenarios to run, in order (default: {' '.join(DEFAULT_SCENARIOS)}); 'all' runs "
        "every one but selftest",
    )
    target = parser.add_argument_group("brokers")
    target.add_argument(
        "--url", type=_url, default=DEFAULT_URL, help="broker A (default: %(default)s)"
    )
    target.add_argument(
        "--against",
        type=_url,
        metavar="URL",
        help="broker B: run each scenario on A and B in turn and print the ratios",
    )
    target.add_argument(
        "--rounds",
        type=_positive_int,
        help="runs per scenario and broker, alternating A, B, A, B... "
        "(default: 2 with --against, else 1); the table shows medians",
    )
    target.add_argument(
        "--pid",
        type=_positive_int,
        help="broker A's process id, for its CPU and memory "
        "(default: the process listening on the URL's port, if it is on this machine)",
    )
    target.add_argument(
        "--against-pid", type=_positive_int, metavar="PID", help="broker B's process id"
    )
    load = parser.add_argument_group("load")
    load.add_argument("--size", type=_count, default=100, help="body bytes (default: %(default)s)")
    load.add_argument(
        "--duration",
        type=_seconds,
        default=10.0,
        help="seconds of publishing per run (default: %(default)s)",
    )
    load.add_argument(
        "--count", type=_count, default=0, help="messages to publish per run, instead of --duration"
    )
    load.add_argument("--publishers", type=_count, help="publisher processes (default: 1)")
    load.add_argument(
        "--consumers",
        type=_count,
        help="consumer processes (default: 1; fanout, topic, many-queues: one per core, "
        "each with its share of the queues)",
    )
    load.add_argument(
        "--prefetch",
        type=_count,
        default=1000,
        help="basic.qos prefetch count (default: %(default)s)",
    )
    load.add_argument(
        "--ack-every",
        type=_positive_int,
        default=100,
        metavar="N",
        help="consumers ack (multiple) once N deliveries are unacked, and when idle "
        "(default: %(default)s)",
    )
    load.add_argument(
        "--confirm-window",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="unconfirmed messages a publisher may have in flight (default: %(default)s)",
    )
    load.add_argument(
        "--rate",
        type=float,
        help="total publish rate in msg/s (default: as fast as possible; latency: 1000)",
    )
    load.add_argument(
        "--queues", type=_positive_int, help="queues (default: fanout, topic 10; many-queues 100)"
    )
    load.add_argument(
        "--bindings",
        type=_positive_int,
        default=100,
        help="topic: bindings per queue (default: %(default)s)",
    )
    load.add_argument(
        "--connections",
        type=_positive_int,
        default=1000,
        help="connections: how many to open (default: %(default)s)",
    )
    load.add_argument(
        "--queue-arg",
        type=_queue_argument,
        action="append",
        default=[],
        dest="queue_arguments",
        metavar="KEY=VALUE",
        help="an argument for every queue the scenarios declare, e.g. x-max-priority=10 or "
        "x-message-ttl=60000 (an integer value is sent as an integer, true/false as a "
        "boolean, anything else as a string); repeat for several",
    )
    load.add_argument(
        "--priorities",
        type=_priorities,
        metavar="N",
        help="publishers set the priority property, cycling over 0..N-1 from one message "
        "to the next (default: no priority property)",
    )
    load.add_argument(
        "--warmup",
        type=_seconds,
        default=1.0,
        help="latency, rpc: seconds of samples to leave out at the start (default: %(default)s)",
    )
    load.add_argument(
        "--stall-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="give up when nothing moves for this long (default: %(default)s)",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    output.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress line on stderr while running (default: when stderr is a terminal)",
    )


def build_parser(prog: str = "postoffice bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure an AMQP 0-9-1 broker (postoffice, RabbitMQ, ...) with raw-socket "
        "publishers and consumers: messages per second and broker CPU per message.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def from_namespace(args: argparse.Namespace) -> Options:
    """Options from parsed arguments; raises UsageError for combinations that cannot work."""
    names = list(args.scenarios) or list(DEFAULT_SCENARIOS)
    if "all" in names:
        names = [name for name in SCENARIOS if name != "selftest"]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise UsageError(
            f"unknown scenario {', '.join(unknown)} (choose from {', '.join(SCENARIOS)})"
        )
    if args.against_pid and not args.against:
        raise UsageError("--against-pid needs --against")
    if args.rate is not None and args.rate <= 0:
        raise UsageError("--rate must be above 0")
    minimum = TIMED_SIZE if {"latency", "rpc"} & set(names) else MESSAGE_ID.size
    if args.size < minimum:
        raise UsageError(
            f"--size {args.size} is too small: bodies carry a message id"
            + (" and two timestamps" if minimum == TIMED_SIZE else "")
            + f", at least {minimum} bytes"
        )
    if args.duration <= 0 and not args.count:
        raise UsageError("give --duration above 0 or a --count")
    if args.ack_every > max(args.prefetch, 1) and args.prefetch:
        raise UsageError(f"--ack-every {args.ack_every} is above --prefetch {args.prefetch}")
    queue_arguments = _check_queue_rules(names, args.queue_arguments, args.priorities)
    rounds = args.rounds or (2 if args.against else 1)
    return Options(
        scenarios=tuple(dict.fromkeys(names)),
        url=args.url,
        against=args.against,
        rounds=rounds,
        pid=args.pid,
        against_pid=args.against_pid,
        size=args.size,
        duration=args.duration,
        count=args.count,
        publishers=args.publishers,
        consumers=args.consumers,
        prefetch=args.prefetch,
        ack_every=args.ack_every,
        confirm_window=args.confirm_window,
        rate=args.rate,
        queues=args.queues,
        bindings=args.bindings,
        connections=args.connections,
        warmup=args.warmup,
        stall_timeout=args.stall_timeout,
        queue_arguments=queue_arguments,
        priorities=args.priorities or 0,
        json=args.json,
        progress=args.progress,
    )


def _check_queue_rules(
    names: Sequence[str], arguments: Sequence[tuple[str, QueueArgument]], priorities: int | None
) -> tuple[tuple[str, QueueArgument], ...]:
    """The queue arguments, once each; refuses scenarios that would ignore them."""
    given = [
        option
        for option, used in (("--queue-arg", arguments), ("--priorities", priorities))
        if used
    ]
    if not given:
        return ()
    for name in names:
        if name in _WITHOUT_QUEUES:
            raise UsageError(
                f"{' and '.join(given)} cannot apply to {name}: it {_WITHOUT_QUEUES[name]}; "
                "name the scenarios to run without it"
            )
    keys = [key for key, _value in arguments]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise UsageError(f"--queue-arg {', '.join(repeated)} given more than once")
    return tuple(arguments)


def parse(argv: Sequence[str]) -> Options:
    """Options from a command line (without the program name); argparse exits on --help."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    try:
        return from_namespace(args)
    except UsageError as exc:
        parser.error(str(exc))
        raise  # not reached: parser.error exits


def cpu_count() -> int:
    return os.cpu_count() or 1
