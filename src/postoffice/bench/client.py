"""A small blocking AMQP client for the benchmark's control work.

It opens connections, declares and deletes what a scenario needs, and hands its
socket over to a worker's own loop (:mod:`postoffice.bench.loadgen`), which then
reads and writes raw frames.  Methods are encoded and decoded with the project's
codec; the hot frames never pass through here.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from postoffice import amqp
from postoffice.amqp import Method
from postoffice.amqp.frames import FRAME_METHOD, HEARTBEAT_FRAME, PROTOCOL_HEADER, method_index
from postoffice.errors import AMQPError

__all__ = ["BenchError", "BrokerAddress", "BrokerClosed", "Connection"]

M = TypeVar("M", bound=Method)

_FRAME_HEADER = struct.Struct(">BHI")
_FRAME_END = 0xCE
_RECV_SIZE = 1 << 18
_CLOSE = amqp.ConnectionClose.INDEX
_CLOSE_OK = amqp.ConnectionCloseOk.INDEX
_CHANNEL_CLOSE = amqp.ChannelClose.INDEX
_BLOCKED = amqp.ConnectionBlocked.INDEX
_UNBLOCKED = amqp.ConnectionUnblocked.INDEX


class BenchError(Exception):
    """The benchmark cannot go on; the message says why in the user's terms."""


class BrokerClosed(BenchError):
    """The broker closed the connection or a channel, or the TCP connection ended."""


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker is and how to log in: parsed from an ``amqp://`` URL."""

    host: str = "127.0.0.1"
    port: int = 5672
    user: str = "guest"
    password: str = "guest"
    vhost: str = "/"

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """``amqp://user:pass@host:port/vhost``, with the vhost percent-encoded (``%2F``)."""
        parts = urlsplit(url)
        if parts.scheme != "amqp":
            raise ValueError(f"not an amqp:// URL: {url!r}")
        try:
            port = parts.port or 5672
        except ValueError:
            raise ValueError(f"bad port in {url!r}") from None
        # RabbitMQ's URI spec: an empty path means "/", and "/" alone means "".
        vhost = unquote(parts.path[1:]) if parts.path else "/"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            user=unquote(parts.username) if parts.username is not None else "guest",
            password=unquote(parts.password) if parts.password is not None else "guest",
            vhost=vhost,
        )

    def __str__(self) -> str:
        """The URL without the password."""
        vhost = self.vhost.replace("%", "%25").replace("/", "%2F")
        return f"amqp://{self.user}@{self.host}:{self.port}/{vhost}"

    @property
    def is_local(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")


class Connection:
    """One blocking AMQP connection; ``open()`` does the handshake.

    Frames are kept in :attr:`buffer` until read, so a worker that takes the socket
    over after ``basic.consume`` also takes the deliveries already received
    (:meth:`take_buffer`).
    """

    def __init__(self, address: BrokerAddress, name: str, timeout: float = 30.0) -> None:
        self.address = address
        self.name = name
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buffer = bytearray()
        self.frame_max = 131072
        self.server_properties: dict[str, Any] = {}
        self.blocked = 0
        self.closed = False

    # -- connection life ---------------------------------------------------------------

    def open(self) -> Connection:
        address = self.address
        try:
            sock = socket.create_connection((address.host, address.port), timeout=self.timeout)
        except OSError as exc:
            raise BrokerClosed(f"cannot connect to {address}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        sock.sendall(PROTOCOL_HEADER)
        start = self.read_method(0, amqp.ConnectionStart)
        self.server_properties = start.server_properties
        if b"PLAIN" not in start.mechanisms.split():
            raise BenchError(f"{address} does not offer PLAIN authentication")
        credentials = f"\0{address.user}\0{address.password}".encode()
        self.send_method(
            0,
            amqp.ConnectionStartOk(
                client_properties={
                    "product": "postoffice bench",
                    "platform": f"Python {sys.version_info[0]}.{sys.version_info[1]}",
                    "connection_name": self.name,
                    "capabilities": {
                        "publisher_confirms": True,
                        "basic.nack": True,
                        "consumer_cancel_notify": True,
                        "connection.blocked": True,
                        "authentication_failure_close": True,
                    },
                },
                mechanism="PLAIN",
                response=credentials,
                locale="en_US",
            ),
        )
        try:
            tune = self.read_method(0, amqp.ConnectionTune)
        except BrokerClosed as exc:
            raise BrokerClosed(f"login to {address} failed: {exc}") from None
        self.frame_max = min(tune.frame_max or self.frame_max, self.frame_max)
        # Heartbeat 0: the workers' loops do not send heartbeats, so ask for none.
        self.send_method(
            0, amqp.ConnectionTuneOk(channel_max=tune.channel_max, frame_max=self.frame_max)
        )
        self.call(0, amqp.ConnectionOpen(virtual_host=address.vhost), amqp.ConnectionOpenOk)
        return self

    def close(self, timeout: float = 5.0) -> bool:
        """Close gracefully; True when connection.close-ok came back in time.

        Waiting for close-ok matters to publishers: it proves the broker has read every
        frame written before, which closing the socket at once would not.
        """
        sock = self.sock
        if sock is None:
            return False
        ok = False
        try:
            if not self.closed:
                sock.settimeout(timeout)
                self.send_method(0, amqp.ConnectionClose(reply_code=200, reply_text="bye"))
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    frame_type, _channel, payload = self.read_frame()
                    if frame_type == FRAME_METHOD and method_index(payload) in (_CLOSE_OK, _CLOSE):
                        ok = True
                        break
        except (OSError, BenchError, AMQPError):
            pass
        finally:
            self.closed = True
            sock.close()
        return ok

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- frames ------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise BrokerClosed(f"{self.name}: the connection broke: {exc}") from None

    def send_method(self, channel: int, method: Method) -> None:
        self.send(amqp.encode_method_frame(channel, method))

    def fill(self, timeout: float | None = None) -> int:
        """Receive what is there (waiting up to ``timeout``, or the default); 0 on timeout."""
        sock = self.sock
        assert sock is not None
        sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            data = sock.recv(_RECV_SIZE)
        except (TimeoutError, BlockingIOError):
            if timeout is None:
                raise BenchError(
                    f"{self.name}: no answer from the broker in {self.timeout:g}s"
                ) from None
            return 0
        except OSError as exc:
            raise BrokerClosed(f"{self.name}: the connection broke: {exc}") from None
        if not data:
            self.closed = True
            raise BrokerClosed(f"{self.name}: the broker closed the TCP connection")
        self.buffer += data
        return len(data)

    def next_frame(self) -> tuple[int, int, bytes] | None:
        """The next whole frame in the buffer, or None."""
        buffer = self.buffer
        if len(buffer) < 8:
            return None
        if buffer.startswith(b"AMQP"):
            raise BenchError(f"the broker refused AMQP 0-9-1 (it answered {bytes(buffer[:8])!r})")
        frame_type, channel, size = _FRAME_HEADER.unpack_from(buffer, 0)
        if len(buffer) < size + 8:
            return None
        if buffer[size + 7] != _FRAME_END:
            raise BenchError(f"{self.name}: bad frame end from the broker")
        payload = bytes(buffer[7 : size + 7])
        del buffer[: size + 8]
        return frame_type, channel, payload

    def read_frame(self) -> tuple[int, int, bytes]:
        while True:
            frame = self.next_frame()
            if frame is not None:
                return frame
            self.fill()

    def take_buffer(self) -> bytes:
        """The bytes received but not read yet; the caller reads the socket from now on."""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def check_method(self, channel: int, payload: bytes) -> Method | None:
        """Decode a method; raise on a close, count blocks; None for those handled here."""
        method = amqp.decode_method(payload)
        index = method.INDEX
        if index == _CLOSE:
            assert isinstance(method, amqp.ConnectionClose)
            self._send_quietly(amqp.encode_method_frame(0, amqp.ConnectionCloseOk()))
            self.closed = True
            raise BrokerClosed(f"{self.name}: the broker closed the connection: {_reason(method)}")
        if index == _CHANNEL_CLOSE:
            assert isinstance(method, amqp.ChannelClose)
            self._send_quietly(amqp.encode_method_frame(channel, amqp.ChannelCloseOk()))
            raise BrokerClosed(
                f"{self.name}: the broker closed channel {channel}: {_reason(method)}"
            )
        if index == _BLOCKED:
            self.blocked += 1
            return None
        if index == _UNBLOCKED:
            return None
        return method

    def read_method(self, channel: int, expected: type[M]) -> M:
        """Wait for method ``expected`` on ``channel``, skipping content and other channels."""
        while True:
            frame_type, frame_channel, payload = self.read_frame()
            if frame_type != FRAME_METHOD:
                continue
            method = self.check_method(frame_channel, payload)
            if frame_channel == channel and isinstance(method, expected):
                return method

    def call(self, channel: int, method: Method, reply: type[M]) -> M:
        self.send_method(channel, method)
        return self.read_method(channel, reply)

    def _send_quietly(self, data: bytes) -> None:
        try:
            assert self.sock is not None
            self.sock.sendall(data)
        except OSError:
            pass

    # -- the methods scenarios use -------------------------------------------------------

    def channel_open(self, channel: int) -> None:
        self.call(channel, amqp.ChannelOpen(), amqp.ChannelOpenOk)

    def confirm_select(self, channel: int) -> None:
        self.call(channel, amqp.ConfirmSelect(), amqp.ConfirmSelectOk)

    def qos(self, channel: int, prefetch: int) -> None:
        self.call(channel, amqp.BasicQos(prefetch_count=prefetch), amqp.BasicQosOk)

    def consume(self, channel: int, queue: str, tag: str, no_ack: bool) -> str:
        reply = self.call(
            channel,
            amqp.BasicConsume(queue=queue, consumer_tag=tag, no_ack=no_ack),
            amqp.BasicConsumeOk,
        )
        return reply.consumer_tag

    def queue_declare(
        self,
        channel: int,
        queue: str,
        *,
        durable: bool = False,
        passive: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> amqp.QueueDeclareOk:
        return self.call(
            channel,
            amqp.QueueDeclare(
                queue=queue, durable=durable, passive=passive, arguments=arguments or {}
            ),
            amqp.QueueDeclareOk,
        )

    def queue_bind(self, channel: int, queue: str, exchange: str, routing_key: str) -> None:
        self.call(
            channel,
            amqp.QueueBind(queue=queue, exchange=exchange, routing_key=routing_key),
            amqp.QueueBindOk,
        )

    def queue_delete(self, channel: int, queue: str) -> int:
        return self.call(channel, amqp.QueueDelete(queue=queue), amqp.QueueDeleteOk).message_count

    def exchange_declare(self, channel: int, exchange: str, kind: str, *, durable: bool) -> None:
        self.call(
            channel,
            amqp.ExchangeDeclare(exchange=exchange, type=kind, durable=durable),
            amqp.ExchangeDeclareOk,
        )

    def exchange_delete(self, channel: int, exchange: str) -> None:
        self.call(channel, amqp.ExchangeDelete(exchange=exchange), amqp.ExchangeDeleteOk)

    def heartbeat(self) -> None:
        self.send(HEARTBEAT_FRAME)

    def describe_broker(self) -> str:
        """``product version`` as the broker announces itself."""
        properties = self.server_properties
        product = _text(properties.get("product")) or "unknown broker"
        version = _text(properties.get("version"))
        return f"{product} {version}".strip()


def _reason(method: amqp.ConnectionClose | amqp.ChannelClose) -> str:
    text = f"{method.reply_code} {method.reply_text}"
    if method.class_id:
        failed = amqp.METHODS.get((method.class_id << 16) | method.method_id)
        text += f" (on {failed.NAME if failed else f'{method.class_id}.{method.method_id}'})"
    return text


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)
