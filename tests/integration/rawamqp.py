"""A bare AMQP 0-9-1 client over a socket, for what real clients refuse to send.

Frames are built and parsed with pika's codec (not the broker's own), so a test
cannot pass because both ends share the same mistake.  Every read is bounded by a
deadline; the socket's end is reported as :class:`Closed`.
"""

from __future__ import annotations

import socket
import struct
import time

from pika import frame, spec

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


class Closed(Exception):
    """The broker closed the socket."""


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_method(self, channel: int, method: spec.amqp_object.Method) -> None:
        self.send(frame.Method(channel, method).marshal())

    def publish(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        immediate: bool = False,
        properties: spec.BasicProperties | None = None,
    ) -> None:
        method = spec.Basic.Publish(exchange=exchange, routing_key=routing_key, immediate=immediate)
        header = frame.Header(channel, len(body), properties or spec.BasicProperties())
        self.send(
            frame.Method(channel, method).marshal()
            + header.marshal()
            + frame.Body(channel, body).marshal()
        )

    # -- receiving -----------------------------------------------------------------

    def read_frame(self, timeout: float | None = None) -> frame.Frame:
        """The next frame, heartbeats included; Closed at the end of the stream."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            consumed, parsed = frame.decode_frame(self._buffer)
            if parsed is not None:
                self._buffer = self._buffer[consumed:]
                return parsed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame from the broker in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                raise Closed("connection reset") from None
            if not data:
                raise Closed("end of stream")
            self._buffer += data

    def read_raw_frame(self, timeout: float | None = None) -> tuple[int, int, bytes]:
        """(type, channel, payload) of the next frame, undecoded."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self._buffer) >= 7:
                frame_type, channel, size = struct.unpack_from(">BHI", self._buffer)
                if len(self._buffer) >= 8 + size:
                    payload = self._buffer[7 : 7 + size]
                    assert self._buffer[7 + size] == 0xCE, "bad frame end from the broker"
                    self._buffer = self._buffer[8 + size :]
                    return frame_type, channel, payload
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame from the broker in time")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise Closed("end of stream")
            self._buffer += data

    def read_method(self, timeout: float | None = None) -> tuple[int, spec.amqp_object.Method]:
        """(channel, method) of the next method frame, skipping heartbeats."""
        while True:
            got = self.read_frame(timeout)
            if isinstance(got, frame.Method):
                return got.channel_number, got.method
            if not isinstance(got, frame.Heartbeat):
                raise AssertionError(f"expected a method frame, got {got!r}")

    def expect(self, kind: type, timeout: float | None = None) -> spec.amqp_object.Method:
        _, method = self.read_method(timeout)
        if not isinstance(method, kind):
            raise AssertionError(f"expected {kind.NAME}, got {method!r}")
        return method

    def read_content(self) -> tuple[spec.BasicProperties, bytes]:
        header = self.read_frame()
        assert isinstance(header, frame.Header), header
        body = b""
        while len(body) < header.body_size:
            part = self.read_frame()
            assert isinstance(part, frame.Body), part
            body += part.fragment
        return header.properties, body

    def wait_closed(self, timeout: float) -> list[frame.Frame]:
        """Reads until the broker closes the socket; returns what it sent before."""
        deadline = time.monotonic() + timeout
        seen: list[frame.Frame] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the broker kept the socket open; it sent {seen!r}")
            try:
                seen.append(self.read_frame(remaining))
            except Closed:
                return seen

    def read_raw_until_closed(self, timeout: float) -> bytes:
        """Every byte the broker sends until it closes the socket."""
        deadline = time.monotonic() + timeout
        data = self._buffer
        self._buffer = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the broker kept the socket open; it sent {data!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    # -- conversations -------------------------------------------------------------

    def handshake(self, heartbeat: int = 0, frame_max: int = 131072) -> None:
        self.send(PROTOCOL_HEADER)
        self.expect(spec.Connection.Start)
        self.send_method(
            0,
            spec.Connection.StartOk(
                client_properties={"product": "rawamqp", "capabilities": {}},
                mechanism="PLAIN",
                response=b"\x00guest\x00guest",
                locale="en_US",
            ),
        )
        tune = self.expect(spec.Connection.Tune)
        self.send_method(
            0,
            spec.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=frame_max, heartbeat=heartbeat
            ),
        )
        self.send_method(0, spec.Connection.Open(virtual_host="/"))
        self.expect(spec.Connection.OpenOk)

    def open_channel(self, channel: int) -> None:
        self.send_method(channel, spec.Channel.Open())
        got_channel, method = self.read_method()
        assert (got_channel, type(method)) == (channel, spec.Channel.OpenOk), method

    def expect_connection_close(self, timeout: float | None = None) -> spec.Connection.Close:
        """Waits for connection.close (skipping other frames) and answers close-ok."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            got = self.read_frame(max(deadline - time.monotonic(), 0.001))
            if isinstance(got, frame.Method) and isinstance(got.method, spec.Connection.Close):
                self.send_method(0, spec.Connection.CloseOk())
                return got.method


def raw_frame(frame_type: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    """A frame with any type, payload and end octet, however wrong."""
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])
