"""Helpers for the crash tests: the broker as a process, messages that prove their own
integrity, and the model of what the broker owes us after a crash (see test_kill9.py)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
from pika.exceptions import AMQPError

__all__ = [
    "CLIENT_GONE",
    "BrokerDied",
    "BrokerProcess",
    "Brokers",
    "Model",
    "close_quietly",
    "connect",
    "inspect_message",
    "inspect_message_with",
    "make_message",
    "place_in_line",
]

# What a pika client raises when the broker under it dies or is gone.
CLIENT_GONE = (AMQPError, OSError)

_READY_TIMEOUT = 60.0
_EXIT_TIMEOUT = 30.0


class BrokerDied(AssertionError):
    """The broker exited when it should have been running."""


class BrokerProcess:
    """One life of ``postoffice serve`` on a data directory, logging to its own file."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.connections: list[pika.BlockingConnection] = []  # closed by Brokers.close
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "postoffice",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(data_dir),
                "--log-level",
                os.environ.get("CRASH_LOG_LEVEL", "warning"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = _READY_TIMEOUT) -> None:
        """Returns once the broker accepts TCP connections; BrokerDied if it exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.wait()
                raise BrokerDied(
                    f"broker exited with {self.process.returncode} before accepting "
                    f"connections; log {self.log_path}:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0),
            ):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerDied(f"broker not accepting connections after {timeout:.0f} s")
            time.sleep(0.02)

    def send_kill(self) -> None:
        """SIGKILL now, from any thread; :meth:`wait` reaps it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)

    def kill(self) -> int:
        self.send_kill()
        return self.wait()

    def terminate(self, timeout: float = _EXIT_TIMEOUT) -> int:
        """SIGTERM (graceful shutdown) and its exit code; SIGKILL if it does not exit."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = _EXIT_TIMEOUT) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send_kill()
            code = self.process.wait(_EXIT_TIMEOUT)
            raise BrokerDied(f"broker did not exit within {timeout:.0f} s; killed") from None
        finally:
            self._log.close()
        return code

    @property
    def exited(self) -> bool:
        return self.process.poll() is not None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def connect(self) -> pika.BlockingConnection:
        connection = connect(self.port)
        self.connections.append(connection)
        return connection


class Brokers:
    """Every broker process a test started: :meth:`close` kills those still running, so
    that a failing test leaves no broker behind."""

    def __init__(self) -> None:
        self.started: list[BrokerProcess] = []

    def spawn(self, data_dir: Path, log_path: Path) -> BrokerProcess:
        broker = BrokerProcess(data_dir, log_path)
        self.started.append(broker)
        return broker

    def start(self, data_dir: Path, log_path: Path) -> BrokerProcess:
        """A broker that accepts connections.  The free port it was given may be taken by
        someone else before it binds it: that is retried, any other failure is BrokerDied."""
        for _ in range(3):
            broker = self.spawn(data_dir, log_path)
            try:
                broker.wait_ready()
            except BrokerDied:
                if "address already in use" not in broker.log_text().lower():
                    raise
                continue
            return broker
        raise BrokerDied(f"no free port after 3 tries; log {log_path}")

    def close(self) -> None:
        for broker in self.started:
            for connection in broker.connections:
                close_quietly(connection)
            if broker.process.returncode is None:
                broker.kill()
        self.started.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def close_quietly(connection: pika.BlockingConnection) -> None:
    """Closes a connection in whatever state the broker's death left it.

    pika 1.4 releases a connection's ioloop (and the socket pair that wakes it) only when
    it sees the connection close; one whose broker died while it was opening can end up
    closed without that, and its sockets then leak (a ResourceWarning, which pytest's
    ``-W error`` makes a failure of whichever test is running when they are collected).
    """
    with contextlib.suppress(*CLIENT_GONE):
        if connection.is_open:
            connection.close()
    with contextlib.suppress(Exception):
        connection._cleanup()  # idempotent: closes the ioloop if pika did not


def connect(port: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            host="127.0.0.1",
            port=port,
            connection_attempts=1,
            socket_timeout=10,
            blocked_connection_timeout=60,
        )
    )


def log_problems(text: str) -> list[str]:
    """What must never be in a broker's log, even after kill -9."""
    return [
        line
        for line in text.splitlines()
        if "Traceback" in line or re.search(r"\bCRITICAL\b", line)
    ]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(r"\bERROR\b", line)]


# -- messages ---------------------------------------------------------------------------

_EPOCH = 1_700_000_000


def make_message(msg_id: str) -> tuple[pika.BasicProperties, bytes]:
    """The one message with this id: body and properties are derived from the id, so a
    receiver can check every byte.  Sizes straddle the store's small-body path (512 B) and
    the frame size (128 KiB); the body starts with the id, and a header has its SHA-256."""
    rng = random.Random(msg_id)
    kind = rng.random()
    if kind < 0.70:
        size = rng.randrange(0, 513)
    elif kind < 0.96:
        size = rng.randrange(513, 16 * 1024)
    else:
        size = rng.randrange(100 * 1024, 300 * 1024)
    body = msg_id.encode() + b"|" + rng.randbytes(size)
    headers = {
        "sha256": hashlib.sha256(body).hexdigest(),
        "id": msg_id,
        "n": rng.randrange(-(2**40), 2**40),
        "small": rng.randrange(-1000, 1000),
        "flag": rng.random() < 0.5,
        "nested": {"text": "gr\u00fc\u00dfe", "list": [1, "two", True]},
    }
    properties = pika.BasicProperties(
        content_type="application/octet-stream",
        content_encoding="identity",
        headers=headers,
        delivery_mode=2,
        priority=rng.randrange(10),
        correlation_id=msg_id,
        reply_to="crash.replies",
        message_id=msg_id,
        timestamp=_EPOCH + rng.randrange(10**6),
        type="crash-test",
        user_id="guest",
        app_id="postoffice-crash",
    )
    return properties, body


_COMPARED = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)


def inspect_message(properties: pika.BasicProperties, body: bytes) -> tuple[str, list[str]]:
    """The id a received message claims, and what is wrong with it (empty: intact)."""
    raw_id, bar, _ = body.partition(b"|")
    msg_id = raw_id.decode(errors="replace") if bar else "?"
    problems: list[str] = []
    headers = properties.headers or {}
    if headers.get("sha256") != hashlib.sha256(body).hexdigest():
        problems.append(f"checksum header does not match the body ({len(body)} bytes)")
    if not bar:
        problems.append(f"body without an id: {body[:40]!r}")
        return msg_id, problems
    expected_properties, expected_body = make_message(msg_id)
    if body != expected_body:
        problems.append(f"body differs ({len(body)} bytes, expected {len(expected_body)})")
    for name in _COMPARED:
        got, want = getattr(properties, name), getattr(expected_properties, name)
        if got != want:
            problems.append(f"property {name}: {got!r}, expected {want!r}")
    return msg_id, problems


def inspect_message_with(
    properties: pika.BasicProperties, body: bytes, added: tuple[str, ...]
) -> tuple[str, list[str], dict[str, Any]]:
    """:func:`inspect_message` for a message whose headers gained ``added`` (set by the
    publisher or by the broker): its id, its problems and the added headers, which it
    takes out of ``properties``."""
    headers = dict(properties.headers or {})
    extra = {name: headers.pop(name) for name in added if name in headers}
    properties.headers = headers
    msg_id, problems = inspect_message(properties, body)
    return msg_id, problems, extra


_IN_LINE = re.compile(r"^[rl](\d+)\.(p\d+|c|fence)-?(\d*)$")


def place_in_line(msg_id: str) -> tuple[str, tuple[int, int]] | None:
    """(stream, rank): messages of one stream were published one after the other on one
    channel, so a queue must hold them in the order of their ranks."""
    found = _IN_LINE.match(msg_id)
    if found is None:
        return None
    number, stream, n = found.groups()
    return stream, (int(number), int(n) if n else -1)


# -- the model --------------------------------------------------------------------------

MAYBE = "maybe"  # published, not confirmed: may or may not exist
MUST = "must"  # confirmed, or found after a restart and not acked since: must exist
ACKED = "acked"  # ack sent, not known durable: may come back, as redelivered
GONE = "gone"  # ack known durable (fenced), or the queue was deleted: must not come back
LOST = "lost"  # was owed and missing at a restart (already reported)
ABSENT = "absent"  # not owed, and missing at a restart: gone for good


@dataclass(slots=True)
class Copy:
    """One message in one queue."""

    state: str = MAYBE
    delivered_in: int = -1  # the life in which a consumer last saw it, -1: never
    acked_in: int = -1


@dataclass
class Model:
    """What the broker owes after a crash, built from what clients saw (see test_kill9)."""

    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    queues: dict[str, dict[str, Copy]] = field(default_factory=dict)
    life: int = 0
    violations: list[str] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    _outstanding: set[tuple[str, str]] = field(default_factory=set)
    _settled: set[tuple[str, str]] = field(default_factory=set)
    _unfenced: list[Copy] = field(default_factory=list)

    def violation(self, kind: str, text: str) -> None:
        self.violations.append(f"life {self.life}: {kind}: {text}")

    def new_life(self) -> None:
        self.life += 1
        self._outstanding.clear()
        self._settled.clear()
        self._unfenced.clear()

    def add_queue(self, name: str) -> None:
        self.queues.setdefault(name, {})

    def drop_queue(self, name: str) -> None:
        """The queue was deleted (delete-ok received): its messages are gone."""
        for copy in self.queues.pop(name, {}).values():
            copy.state = GONE

    # -- publishers --

    def published(self, msg_id: str, queues: tuple[str, ...]) -> None:
        self.routes[msg_id] = queues
        for queue in queues:
            self.queues[queue][msg_id] = Copy()
        self.stats["published"] += 1

    def confirmed(self, msg_id: str) -> None:
        for queue in self.routes[msg_id]:
            copy = self.queues[queue][msg_id]
            if copy.state == MAYBE:
                copy.state = MUST
        self.stats["confirmed"] += 1

    # -- consumers --

    def delivered(
        self, queue: str, msg_id: str, redelivered: bool, problems: list[str], who: str
    ) -> bool:
        """Checks a delivery against what came before; False if the model does not know
        the message (then it is not to be acked through the model)."""
        self.stats["deliveries"] += 1
        where = f"{msg_id} from {queue} ({who}, redelivered={redelivered})"
        if problems:
            self.violation("CORRUPT", f"{where}: " + "; ".join(problems))
        route = self.routes.get(msg_id)
        if route is None:
            self.violation("UNKNOWN", f"{where}: never published")
            return False
        if queue not in route:
            self.violation("WRONG QUEUE", f"{where}: was routed to {route}")
            return False
        if queue not in self.queues:
            self.violation("RESURRECTED", f"{where}: its queue was deleted")
            return False
        copy = self.queues[queue][msg_id]
        key = (queue, msg_id)
        if copy.state in (GONE, LOST, ABSENT):
            self.violation("RESURRECTED", f"{where}: {_gone_why(copy)}")
        elif key in self._outstanding:
            self.violation("DUPLICATE", f"{where}: delivered again while unacked")
        elif key in self._settled:
            self.violation("DUPLICATE", f"{where}: delivered again after its ack, same life")
        elif copy.delivered_in >= 0 and not redelivered:
            acked = f", acked in life {copy.acked_in}" if copy.acked_in >= 0 else ", unacked"
            self.violation(
                "NOT REDELIVERED",
                f"{where}: already delivered in life {copy.delivered_in}{acked}",
            )
        if copy.state != MAYBE:
            copy.state = MUST  # here again: in the queue until acked
        copy.delivered_in = self.life
        self._outstanding.add(key)
        return True

    def acked(self, queue: str, msg_id: str) -> None:
        copy = self.queues[queue][msg_id]
        key = (queue, msg_id)
        self._outstanding.discard(key)
        self._settled.add(key)
        copy.state = ACKED
        copy.acked_in = self.life
        self._unfenced.append(copy)
        self.stats["acked"] += 1

    def requeued(self, queue: str, msg_id: str) -> None:
        self._outstanding.discard((queue, msg_id))

    def fenced(self) -> None:
        """A confirm arrived for a publish sent after these acks on the same channel: the
        flush that made the publish durable made the acks durable too."""
        for copy in self._unfenced:
            if copy.state == ACKED:
                copy.state = GONE
        self._unfenced.clear()

    def drained(self, queue: str, seen: set[str]) -> None:
        """After a restart, ``seen`` is everything ``queue`` held: what it owed and did not
        hold is lost; what it held exists now whatever we knew before."""
        for msg_id, copy in self.queues[queue].items():
            if msg_id in seen:
                if copy.state == MAYBE:
                    copy.state = MUST
                continue
            if copy.state == MUST:
                delivered = (
                    f"delivered in life {copy.delivered_in}"
                    if copy.delivered_in >= 0
                    else "never delivered"
                )
                self.violation("LOST", f"{msg_id} from {queue}: confirmed, not acked, {delivered}")
                copy.state = LOST
            elif copy.state in (MAYBE, ACKED):
                copy.state = ABSENT
        self.stats["checked"] += len(seen)

    def owed(self, queue: str) -> int:
        return sum(1 for copy in self.queues[queue].values() if copy.state == MUST)


def _gone_why(copy: Copy) -> str:
    if copy.state == GONE and copy.acked_in >= 0:
        return f"its ack was durable in life {copy.acked_in}"
    if copy.state == GONE:
        return "its queue was deleted"
    return "it was missing at an earlier restart"
