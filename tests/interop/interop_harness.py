"""Differential testing helpers: targets, unique names, outcomes, a raw AMQP client.

A scenario is a plain function ``scenario(target, names) -> observation``.  It drives
the broker at ``target`` (with pika, or with :class:`RawClient` where no client can
say what the scenario needs) and returns a plain, comparable value: tuples, lists,
dicts, strings, numbers.  The ``differential`` fixture runs it once against the
RabbitMQ named by ``$RABBITMQ_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/%2F``)
and once against a fresh postoffice broker, with the same unique names, and hands
back both observations; the test asserts they are equal.

Values a broker makes up (``amq.gen-...`` queue names, ``amq.ctag-...`` consumer
tags, direct reply-to addresses) are replaced by placeholders, but only when they have
RabbitMQ's exact form, so a differently shaped value still shows up as a difference.
The per-test name prefix is replaced by ``@`` to keep diffs readable.

Waits are bounded and never asserted on: a scenario waits for what it expects (up
to a few seconds) and then reports what it saw.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import pika
import pika.exceptions
from pika import frame as pframe
from pika import spec

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

# Capabilities pika announces; RawClient announces the same unless told otherwise.
CLIENT_CAPABILITIES = {
    "authentication_failure_close": True,
    "basic.nack": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "publisher_confirms": True,
}


# -- targets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A broker to run a scenario against."""

    kind: str  # "rabbitmq" or "postoffice"
    url: str

    @property
    def _parsed(self) -> Any:
        return urlparse(self.url)

    @property
    def host(self) -> str:
        return self._parsed.hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return self._parsed.port or 5672

    @property
    def user(self) -> str:
        return unquote(self._parsed.username or "guest")

    @property
    def password(self) -> str:
        return unquote(self._parsed.password or "guest")

    @property
    def vhost(self) -> str:
        path = self._parsed.path
        return unquote(path[1:]) if len(path) > 1 else "/"

    def parameters(self, **overrides: Any) -> pika.ConnectionParameters:
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "virtual_host": self.vhost,
            "credentials": pika.PlainCredentials(self.user, self.password),
            "connection_attempts": 1,
            "socket_timeout": 5,
            "blocked_connection_timeout": 10,
        }
        options.update(overrides)
        return pika.ConnectionParameters(**options)

    def connect(self, **overrides: Any) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.parameters(**overrides))

    def session(self) -> Session:
        return Session(self)

    def raw(self, **options: Any) -> RawClient:
        login = {"user": self.user, "password": self.password, "vhost": self.vhost}
        return RawClient(self.host, self.port, **(login | options))


# -- unique names ------------------------------------------------------------------------


class Names:
    """Unique queue and exchange names for one test; remembers them for cleanup."""

    def __init__(self, token: str) -> None:
        self.prefix = f"podiff-{token}-"
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def q(self, label: str) -> str:
        return self.queue(self.prefix + label)

    def x(self, label: str) -> str:
        return self.exchange(self.prefix + label)

    def queue(self, name: str) -> str:
        """Tracks a queue name made up by the scenario itself."""
        self.queues.append(name)
        return name

    def exchange(self, name: str) -> str:
        self.exchanges.append(name)
        return name

    def cleanup(self, target: Target) -> None:
        """Deletes everything the scenario may have made (best effort)."""
        if not self.queues and not self.exchanges:
            return
        try:
            connection = target.connect()
        except Exception:
            return
        try:
            for name in self.queues:
                _quietly(connection, lambda ch, name=name: ch.queue_delete(name))
            for name in self.exchanges:
                _quietly(connection, lambda ch, name=name: ch.exchange_delete(name))
        finally:
            with contextlib.suppress(Exception):
                connection.close()


def _quietly(connection: pika.BlockingConnection, action: Callable[[Any], Any]) -> None:
    if not connection.is_open:
        return
    try:
        channel = connection.channel()
        action(channel)
        if channel.is_open:
            channel.close()
    except Exception:
        pass


# -- outcomes ----------------------------------------------------------------------------


def attempt(action: Callable[[], Any]) -> tuple[Any, ...]:
    """Runs ``action``; ("ok", result) or how the broker closed the channel/connection."""
    try:
        result = action()
    except pika.exceptions.ChannelClosedByBroker as exc:
        return ("channel-closed", exc.reply_code, exc.reply_text)
    except pika.exceptions.ConnectionClosedByBroker as exc:
        return ("connection-closed", exc.reply_code, exc.reply_text)
    return ("ok", result)


class Session:
    """A pika connection that each ``step`` uses through a fresh channel.

    When a step closed the connection, the next step reconnects, so one scenario can
    walk through many error cases and report each.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self._connection: pika.BlockingConnection | None = None

    @property
    def connection(self) -> pika.BlockingConnection:
        if self._connection is None or not self._connection.is_open:
            self._connection = self.target.connect()
        return self._connection

    def channel(self) -> Any:
        return self.connection.channel()

    def step(self, action: Callable[[Any], Any]) -> tuple[Any, ...]:
        """Runs ``action(channel)`` on a new channel; returns its :func:`attempt` outcome."""
        channel = self.channel()
        outcome = attempt(lambda: action(channel))
        if channel.is_open:
            with contextlib.suppress(Exception):
                channel.close()
        return outcome

    def close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(Exception):
                self._connection.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plain(result: Any) -> Any:
    """A pika BlockingChannel result as a plain value: a method frame as its fields
    (None when it has none), queue.declare-ok as (queue, message_count, consumer_count)."""
    if isinstance(result, pframe.Method):
        method = result.method
        if isinstance(method, spec.Queue.DeclareOk):
            return declare_ok(result)
        return fields(method) or None
    return result


class _Operations:
    """``op.exchange_declare(x, "direct")`` is ``lambda ch: plain(ch.exchange_declare(...))``.

    A short way to write one-call steps for :meth:`Session.step`.
    """

    def __getattr__(self, name: str) -> Callable[..., Callable[[Any], Any]]:
        def operation(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
            return lambda channel: plain(getattr(channel, name)(*args, **kwargs))

        return operation


op = _Operations()


def declare_ok(result: Any) -> tuple[str, int, int]:
    """queue.declare-ok as (queue, message_count, consumer_count)."""
    method = result.method
    return (method.queue, method.message_count, method.consumer_count)


def confirming(connection: pika.BlockingConnection) -> Any:
    """A channel in confirm mode: each publish returns once the broker has routed it."""
    channel = connection.channel()
    channel.confirm_delivery()
    return channel


def eventually(read: Callable[[], Any], expect: Any, timeout: float = 2.0) -> Any:
    """``read()`` again until it returns ``expect`` (at most ``timeout`` s); the last value.

    RabbitMQ applies acks, requeues and deletions asynchronously, and its queues
    answer a passive declare (stat) ahead of casts still in their mailbox, so a count
    read right after such an operation can be stale.  ``expect`` is the steady state
    RabbitMQ reaches; a broker that never reaches it shows its own value.
    """
    deadline = time.monotonic() + timeout
    value = read()
    while value != expect and time.monotonic() < deadline:
        time.sleep(0.01)
        value = read()
    return value


def ready_count(connection: pika.BlockingConnection, queue: str, *, expect: Any = None) -> Any:
    """Messages ready in a queue, as a passive declare on a fresh channel reports them.

    With ``expect``, waits (bounded) for that value: see :func:`eventually`.
    """

    def read() -> Any:
        channel = connection.channel()
        outcome = attempt(lambda: channel.queue_declare(queue, passive=True).method.message_count)
        if channel.is_open:
            channel.close()
        return outcome[1] if outcome[0] == "ok" else outcome

    return read() if expect is None else eventually(read, expect)


def exists(
    connection: pika.BlockingConnection, kind: str, name: str, *, expect: Any = None
) -> bool | tuple[Any, ...]:
    """Whether a queue or exchange exists (passive declare), else the error seen.

    With ``expect``, waits (bounded) for that value: see :func:`eventually`.
    """

    def read() -> Any:
        channel = connection.channel()
        if kind == "queue":
            outcome = attempt(lambda: channel.queue_declare(name, passive=True))
        else:
            outcome = attempt(lambda: channel.exchange_declare(name, passive=True))
        if channel.is_open:
            channel.close()
        if outcome[0] == "ok":
            return True
        if outcome[:2] == ("channel-closed", 404):
            return False
        return outcome

    return read() if expect is None else eventually(read, expect)


def get_all(channel: Any, queue: str, *, ack: bool = True, limit: int = 10_000) -> list[Any]:
    """basic.get until get-empty: [(body, redelivered)]; acks each unless ack=False."""
    seen = []
    for _ in range(limit):
        method, _properties, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        seen.append((body, method.redelivered))
        if ack:
            channel.basic_ack(method.delivery_tag)
    return seen


def pump(
    connection: pika.BlockingConnection, done: Callable[[], bool], timeout: float = 5.0
) -> None:
    """Processes I/O until ``done()`` or ``timeout`` seconds (a bound, never asserted)."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.02)


def props(properties: Any) -> dict[str, Any]:
    """pika BasicProperties as a plain dict of the properties that are set."""
    return {key: value for key, value in vars(properties).items() if value is not None}


def fields(method: Any) -> dict[str, Any]:
    return dict(vars(method))


# -- a raw AMQP client, for what pika cannot say ----------------------------------------


class RawClient:
    """A socket speaking AMQP 0-9-1 frame by frame, using pika's codec.

    ``open=True`` completes the handshake (PLAIN login, tune-ok, connection.open).
    Reads are bounded by ``timeout`` seconds; :meth:`recv` returns None when the
    server closed the socket.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        capabilities: dict[str, Any] | None = None,
        channel_max: int = 0,
        frame_max: int = 131072,
        heartbeat: int = 0,
        open: bool = True,
        timeout: float = 5.0,
    ) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""
        self.eof = False
        self.start: Any = None
        self.tune: Any = None
        self.frame_max = frame_max
        if open:
            self.handshake(
                user=user,
                password=password,
                vhost=vhost,
                capabilities=capabilities,
                channel_max=channel_max,
                frame_max=frame_max,
                heartbeat=heartbeat,
            )

    # handshake

    def greet(self) -> Any:
        self.sock.sendall(pframe.ProtocolHeader().marshal())
        start = self.recv()
        self.start = start.method if start is not None else None
        return start

    def login(
        self,
        user: str = "guest",
        password: str = "guest",
        capabilities: dict[str, Any] | None = None,
        mechanism: str = "PLAIN",
        response: bytes | None = None,
    ) -> Any:
        """Sends start-ok; returns the next frame (tune on success) or None on EOF."""
        caps = CLIENT_CAPABILITIES if capabilities is None else capabilities
        if response is None:
            response = b"\0" + user.encode() + b"\0" + password.encode()
        self.method(
            0,
            spec.Connection.StartOk(
                client_properties={"product": "postoffice-differential", "capabilities": caps},
                mechanism=mechanism,
                response=response,
                locale="en_US",
            ),
        )
        return self.recv()

    def handshake(
        self,
        *,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        capabilities: dict[str, Any] | None = None,
        channel_max: int = 0,
        frame_max: int = 131072,
        heartbeat: int = 0,
    ) -> None:
        self.greet()
        tune = self.login(user, password, capabilities)
        assert tune is not None and isinstance(tune.method, spec.Connection.Tune), tune
        self.tune = tune.method
        self.method(
            0,
            spec.Connection.TuneOk(
                channel_max=channel_max or tune.method.channel_max,
                frame_max=frame_max,
                heartbeat=heartbeat,
            ),
        )
        self.method(0, spec.Connection.Open(virtual_host=vhost))
        opened = self.recv()
        assert opened is not None and isinstance(opened.method, spec.Connection.OpenOk), opened

    # writing

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def method(self, channel: int, method: Any) -> None:
        self.send(pframe.Method(channel, method).marshal())

    def open_channel(self, channel: int) -> Any:
        self.method(channel, spec.Channel.Open())
        return self.expect(spec.Channel.OpenOk)

    def publish(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Any = None,
        *,
        mandatory: bool = False,
        immediate: bool = False,
        raw_properties: bytes | None = None,
    ) -> None:
        """basic.publish with its content, body split at the negotiated frame_max."""
        data = [
            pframe.Method(
                channel,
                spec.Basic.Publish(
                    exchange=exchange,
                    routing_key=routing_key,
                    mandatory=mandatory,
                    immediate=immediate,
                ),
            ).marshal()
        ]
        if raw_properties is not None:
            payload = struct.pack(">HHQ", 60, 0, len(body)) + raw_properties
            data.append(struct.pack(">BHL", 2, channel, len(payload)) + payload + b"\xce")
        else:
            data.append(
                pframe.Header(channel, len(body), properties or spec.BasicProperties()).marshal()
            )
        room = self.frame_max - 8
        for start in range(0, len(body), room):
            data.append(pframe.Body(channel, body[start : start + room]).marshal())
        self.send(b"".join(data))

    # reading

    def recv(self, timeout: float | None = None) -> Any:
        """The next frame, decoded by pika, or None once the server has closed the socket."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if self.buffer:
                consumed, frame = pframe.decode_frame(self.buffer)
                if frame is not None:
                    self.buffer = self.buffer[consumed:]
                    return frame
            if self.eof:
                return None
            self._read(deadline)

    def recv_raw(self, timeout: float | None = None) -> tuple[int, int, bytes] | None:
        """The next frame undecoded: (type, channel, payload), or None at EOF."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self.buffer) >= 7:
                frame_type, channel, size = struct.unpack(">BHL", self.buffer[:7])
                if len(self.buffer) >= 8 + size:
                    payload = self.buffer[7 : 7 + size]
                    self.buffer = self.buffer[8 + size :]
                    return frame_type, channel, payload
            if self.eof:
                return None
            self._read(deadline)

    def _read(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no frame from the server")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no frame from the server") from None
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
        self.buffer += chunk

    def frames_until(self, done: Callable[[Any], bool], timeout: float | None = None) -> list[Any]:
        """Frames up to and including the first for which ``done`` holds (or EOF: None last)."""
        seen = []
        while True:
            frame = self.recv(timeout)
            seen.append(frame)
            if frame is None or done(frame):
                return seen

    def expect(self, method_class: type) -> Any:
        """Skips frames until a method of ``method_class``; returns it (or None on EOF)."""
        for frame in self.frames_until(lambda f: is_method(f, method_class)):
            if frame is not None and is_method(frame, method_class):
                return frame.method
        return None

    def until_closed(self, timeout: float | None = None) -> list[Any]:
        """Frames up to a channel.close / connection.close or EOF, described."""
        frames = self.frames_until(
            lambda f: is_method(f, spec.Channel.Close) or is_method(f, spec.Connection.Close),
            timeout,
        )
        return [describe(f) for f in frames]

    def until_eof(self, first: Any = ...) -> list[Any]:
        """Frames until the server closes the socket, described; a connection.close is
        answered with close-ok, as a client would.  ``first`` is a frame already read.
        A server that keeps the socket open ends the list with "no EOF"."""
        seen: list[Any] = []
        frame = first if first is not ... else self._recv_or_timeout()
        while True:
            seen.append(frame if isinstance(frame, str) else describe(frame))
            if frame is None or isinstance(frame, str):
                return seen
            if is_method(frame, spec.Connection.Close):
                self.method(0, spec.Connection.CloseOk())
            frame = self._recv_or_timeout()

    def _recv_or_timeout(self) -> Any:
        try:
            return self.recv()
        except TimeoutError:
            return "no EOF"

    def sync(self, channel: int) -> list[Any]:
        """A round trip on ``channel`` (basic.qos): the frames up to its answer, described.

        The answer ends the list; a close or EOF ends it first if the channel failed.
        """
        self.method(channel, spec.Basic.Qos(prefetch_count=0))
        frames = self.frames_until(
            lambda f: (
                is_method(f, spec.Basic.QosOk)
                or is_method(f, spec.Channel.Close)
                or is_method(f, spec.Connection.Close)
            )
        )
        return [describe(f) for f in frames]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_method(frame: Any, method_class: type) -> bool:
    return isinstance(frame, pframe.Method) and isinstance(frame.method, method_class)


def describe(frame: Any) -> Any:
    """A frame as a plain value: ("Basic.Ack", channel, {fields}), ("header", ...), ..."""
    if frame is None:
        return "EOF"
    if isinstance(frame, pframe.Method):
        return (frame.method.NAME, frame.channel_number, fields(frame.method))
    if isinstance(frame, pframe.Header):
        return ("header", frame.channel_number, frame.body_size, props(frame.properties))
    if isinstance(frame, pframe.Body):
        return ("body", frame.channel_number, bytes(frame.fragment))
    if isinstance(frame, pframe.Heartbeat):
        return ("heartbeat",)
    if isinstance(frame, pframe.ProtocolHeader):
        return ("protocol-header", frame.major, frame.minor, frame.revision)
    return repr(frame)


# -- field tables with their wire types ------------------------------------------------------

# AMQP 0-9-1 field value tags of fixed size, as RabbitMQ encodes them (pika's decoder
# turns several of them into the same Python int, so a scenario that cares about the
# exact type reads the content header itself).
_FIXED_FIELDS = {
    b"t": ">B",
    b"b": ">b",
    b"B": ">B",
    b"s": ">h",
    b"u": ">H",
    b"I": ">i",
    b"i": ">I",
    b"l": ">q",
    b"L": ">q",
    b"f": ">f",
    b"d": ">d",
    b"T": ">Q",
}


def typed_headers(payload: bytes) -> list[tuple[str, Any]] | None:
    """The ``headers`` table of a content-header frame payload, each value typed.

    A table is a list of (key, value) in wire order; a value is (tag, decoded), e.g.
    ("l", 1), ("S", "text"), ("A", [...]), ("F", [(key, value), ...]), ("T", seconds).
    None when the header carries no headers property.
    """
    flags = struct.unpack_from(">H", payload, 12)[0]
    offset = 14
    for bit in (0x8000, 0x4000):  # content-type, content-encoding come first
        if flags & bit:
            offset += 1 + payload[offset]
    if not flags & 0x2000:
        return None
    return _typed_table(payload, offset)[0]


def _typed_table(data: bytes, offset: int) -> tuple[list[tuple[str, Any]], int]:
    size = struct.unpack_from(">I", data, offset)[0]
    offset += 4
    end = offset + size
    table = []
    while offset < end:
        length = data[offset]
        key = data[offset + 1 : offset + 1 + length].decode("utf-8", "replace")
        value, offset = _typed_value(data, offset + 1 + length)
        table.append((key, value))
    return table, offset


def _typed_value(data: bytes, offset: int) -> tuple[Any, int]:
    tag = data[offset : offset + 1]
    offset += 1
    if tag in _FIXED_FIELDS:
        layout = _FIXED_FIELDS[tag]
        value = struct.unpack_from(layout, data, offset)[0]
        return (tag.decode(), value), offset + struct.calcsize(layout)
    if tag in (b"S", b"x"):
        size = struct.unpack_from(">I", data, offset)[0]
        raw = data[offset + 4 : offset + 4 + size]
        text: Any = raw.decode("utf-8") if tag == b"S" else raw
        return (tag.decode(), text), offset + 4 + size
    if tag == b"A":
        size = struct.unpack_from(">I", data, offset)[0]
        offset += 4
        end = offset + size
        items = []
        while offset < end:
            item, offset = _typed_value(data, offset)
            items.append(item)
        return ("A", items), offset
    if tag == b"F":
        table, offset = _typed_table(data, offset)
        return ("F", table), offset
    if tag == b"D":
        places, raw = struct.unpack_from(">Bi", data, offset)
        return ("D", (places, raw)), offset + 5
    if tag == b"V":
        return ("V", None), offset
    raise ValueError(f"unknown field type {tag!r}")


# -- normalising what brokers make up -------------------------------------------------------

_GENERATED = [
    (re.compile(r"amq\.gen-[A-Za-z0-9_-]{22}(?![A-Za-z0-9_-])"), "amq.gen-<id>"),
    (re.compile(r"amq\.ctag-[A-Za-z0-9_-]{22}(?![A-Za-z0-9_-])"), "amq.ctag-<id>"),
    (re.compile(r"amq\.rabbitmq\.reply-to\.[A-Za-z0-9+/=_.-]+"), "amq.rabbitmq.reply-to.<id>"),
]


def normalise(value: Any, prefix: str) -> Any:
    if isinstance(value, str):
        value = value.replace(prefix, "@")
        for pattern, replacement in _GENERATED:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return value
        return normalise(text, prefix).encode("utf-8")
    if isinstance(value, tuple):
        return tuple(normalise(item, prefix) for item in value)
    if isinstance(value, list):
        return [normalise(item, prefix) for item in value]
    if isinstance(value, dict):
        return {normalise(k, prefix): normalise(v, prefix) for k, v in value.items()}
    return value
