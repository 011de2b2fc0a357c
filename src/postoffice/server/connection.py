"""An AMQP connection on the wire: handshake, frame dispatch, heartbeats, batched writes.

Theory of operation: the connection moves through the states of AMQP 0-9-1 section
2.2.4.  ``AWAIT_HEADER`` wants the 8-byte protocol header; then each handshake
state accepts exactly the methods in :data:`_TRANSITIONS` on channel 0, and any
other frame ends the connection.  ``OPEN`` routes channel-0 methods through the
same table and every other frame to its :class:`ServerChannel`.  ``CLOSING`` (we
sent connection.close) waits for close-ok and drops everything else.

Errors become frames here and nowhere else: a :class:`~postoffice.errors.SoftError`
closes its channel, a :class:`~postoffice.errors.HardError` the connection; during
the handshake, as RabbitMQ does, the socket is simply closed (but a refused login is
told with a 403 to clients that asked for authentication_failure_close).  Anything
else is a broker bug: logged with its traceback, answered with 541 INTERNAL_ERROR.

Writes go to :attr:`out` and leave in one ``transport.write`` per event-loop turn.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

from .. import amqp
from ..amqp.frames import (
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FRAME_PUBLISH,
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    FrameReader,
)
from ..config import Settings
from ..core import Broker
from ..core import Connection as CoreConnection
from ..errors import (
    AccessRefused,
    AMQPError,
    ChannelError,
    CommandInvalid,
    ConnectionForced,
    HardError,
    InternalError,
    NotAllowed,
    SoftError,
    UnexpectedFrame,
)
from .channel import ChannelState, ServerChannel
from .handshake import MECHANISMS, parse_credentials, server_properties

if TYPE_CHECKING:
    from .listener import Server

__all__ = ["AMQPConnection", "ConnectionState"]

log = logging.getLogger("postoffice.connection")

_CLOSE_TIMEOUT = 3.0  # seconds to wait for close-ok before dropping the socket
_WRITE_HIGH_WATER = 4 * 1024 * 1024
_WRITE_LOW_WATER = 1024 * 1024
_FAIR_SHARE = 32 * 1024  # bytes read per connection per loop turn before yielding


class ConnectionState(Enum):
    AWAIT_HEADER = "awaiting protocol header"
    AWAIT_START_OK = "awaiting connection.start-ok"
    AWAIT_TUNE_OK = "awaiting connection.tune-ok"
    AWAIT_OPEN = "awaiting connection.open"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


S = ConnectionState

# (state, method class) -> handler name: every channel-0 method the connection accepts.
_TRANSITIONS: dict[tuple[ConnectionState, type[amqp.Method]], str] = {
    (S.AWAIT_START_OK, amqp.ConnectionStartOk): "_start_ok",
    (S.AWAIT_TUNE_OK, amqp.ConnectionTuneOk): "_tune_ok",
    (S.AWAIT_OPEN, amqp.ConnectionOpen): "_open",
    (S.OPEN, amqp.ConnectionClose): "_close_by_client",
    (S.OPEN, amqp.ConnectionUpdateSecret): "_update_secret",
    (S.AWAIT_START_OK, amqp.ConnectionClose): "_close_by_client",
    (S.AWAIT_TUNE_OK, amqp.ConnectionClose): "_close_by_client",
    (S.AWAIT_OPEN, amqp.ConnectionClose): "_close_by_client",
    (S.CLOSING, amqp.ConnectionClose): "_close_crossed",
    (S.CLOSING, amqp.ConnectionCloseOk): "_close_ok",
}

_HANDSHAKE_STATES = frozenset({S.AWAIT_HEADER, S.AWAIT_START_OK, S.AWAIT_TUNE_OK, S.AWAIT_OPEN})


class AMQPConnection(asyncio.Protocol):
    # Slots: a broker holds thousands of these (idle connections cost memory).
    __slots__ = (
        "_blocked",
        "_flush_scheduled",
        "_header",
        "_last_received",
        "_sent_since_tick",
        "_timers",
        "_unreadable",
        "_yielding",
        "after_method",
        "alarm",
        "broker",
        "channel_max",
        "channels",
        "client_capabilities",
        "client_properties",
        "closed",
        "confirms_pending",
        "core",
        "frame_max",
        "heartbeat",
        "loop",
        "out",
        "peer",
        "publishes",
        "reader",
        "server",
        "settings",
        "state",
        "transport",
        "user",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.settings: Settings = server.settings
        self.broker: Broker = server.broker
        self.loop = asyncio.get_running_loop()
        self.state = S.AWAIT_HEADER
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.user = ""
        self.reader = FrameReader(self.settings.frame_max)
        self.frame_max = self.settings.frame_max
        self.channel_max = self.settings.channel_max
        self.heartbeat = 0
        self.client_properties: dict[str, Any] = {}
        self.client_capabilities: dict[str, Any] = {}
        self.channels: dict[int, ServerChannel] = {}
        self.core: CoreConnection = None  # type: ignore[assignment]  # set by connection.open
        self.out: list[bytes] = []
        # Frames that must follow the reply of the method being handled.
        self.after_method: list[bytes] = []
        self.confirms_pending: set[ServerChannel] = set()
        self._flush_scheduled = False
        self._header = b""
        self._unreadable = False
        self._yielding = False
        # Resource alarm: on broker-wide; this connection blocked once it publishes.
        self.alarm = server.alarm_active
        self.publishes = False
        self._blocked = False
        self._last_received = 0.0
        self._sent_since_tick = False
        self._timers: list[asyncio.TimerHandle] = []
        self.closed = self.loop.create_future()

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER, low=_WRITE_LOW_WATER)
        peer = transport.get_extra_info("peername")
        self.peer = (
            f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unix socket")
        )
        self.server.connections.add(self)
        self._last_received = self.loop.time()
        self._timers.append(
            self.loop.call_later(self.settings.handshake_timeout, self._handshake_timeout)
        )
        log.debug("accepting AMQP connection %s", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is S.OPEN:
            log.info(
                "client %s (user '%s') closed the socket without connection.close",
                self.peer,
                self.user,
            )
        self.state = S.CLOSED
        for timer in self._timers:
            timer.cancel()
        self._release()
        self.server.connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self.core is not None:
            self.core.set_writable(False)

    def resume_writing(self) -> None:
        if self.core is not None:
            self.core.set_writable(True)

    def data_received(self, data: bytes) -> None:
        self._last_received = self.loop.time()
        if len(data) >= _FAIR_SHARE and not self._yielding and self.transport is not None:
            # A full read means more is waiting.  Take this chunk, then let every other
            # connection have its turn before reading again: otherwise one flooding
            # publisher keeps the loop (libuv reads up to ~2 MB at a time) and its
            # consumers starve.
            self._yielding = True
            self.transport.pause_reading()
            self.loop.call_soon(self._resume_reading)
        if self.state is S.AWAIT_HEADER:
            data = self._protocol_header(data)
            if not data:
                return
        if self._unreadable:
            return
        try:
            frames = self.reader.feed(data)
        except AMQPError as exc:
            # The byte stream cannot be followed any more: say why, stop reading, and
            # half-close so the client reads our close before the socket goes.
            self._unreadable = True
            self._fail(exc, 0, None)
            self._flush()
            if self.transport is not None and self.transport.can_write_eof():
                self.transport.write_eof()
            return
        channels = self.channels
        for event in frames:
            if self.state is S.CLOSED:
                return
            frame_type = event[0]
            number = event[1]
            try:
                channel = channels.get(number)
                if channel is not None:
                    if frame_type == FRAME_PUBLISH:
                        channel.publish_whole(event[2], event[3], event[4])
                    else:
                        channel.handle_frame(frame_type, event[2])
                elif frame_type == FRAME_PUBLISH:
                    self._unopened_channel(number, FRAME_METHOD, None)
                elif number == 0:
                    self._channel_zero(frame_type, event[2])
                else:
                    self._unopened_channel(number, frame_type, event[2])
            except AMQPError as exc:
                self._fail(exc, number, event[2] if frame_type == FRAME_METHOD else None)
            except Exception:
                log.exception("internal error on connection %s, channel %d", self.peer, number)
                self._fail(InternalError("internal error"), 0, None)
            if self.after_method:
                self.out.extend(self.after_method)
                self.after_method.clear()
                self.schedule_flush()

    def _resume_reading(self) -> None:
        self._yielding = False
        if self.transport is not None and self.state is not S.CLOSED and not self._blocked:
            self.transport.resume_reading()

    # -- resource alarms -------------------------------------------------------------

    def first_publish(self) -> None:
        """Called on this connection's first publish: it is a publisher from now on."""
        self.publishes = True
        if self.alarm:
            self._block()

    def set_alarm(self, active: bool) -> None:
        self.alarm = active
        if active and self.publishes:
            self._block()
        elif not active and self._blocked:
            self._blocked = False
            if self.client_capabilities.get("connection.blocked"):
                self.send_method(0, amqp.ConnectionUnblocked())
            if not self._yielding:
                self._resume_reading()

    def _block(self) -> None:
        if self._blocked or self.transport is None or self.state is not S.OPEN:
            return
        self._blocked = True
        self.transport.pause_reading()
        if self.client_capabilities.get("connection.blocked"):
            self.send_method(0, amqp.ConnectionBlocked(reason=self.server.alarm_reason))

    # -- the handshake -------------------------------------------------------------

    def _protocol_header(self, data: bytes) -> bytes:
        header = self._header + data
        if len(header) < 8:
            if not PROTOCOL_HEADER.startswith(header):
                self._reject_protocol()
            else:
                self._header = header
            return b""
        if header[:8] != PROTOCOL_HEADER:
            self._reject_protocol()
            return b""
        self._header = b""
        self.state = S.AWAIT_START_OK
        self.send_method(
            0,
            amqp.ConnectionStart(
                version_major=0,
                version_minor=9,
                server_properties=server_properties(),
                mechanisms=MECHANISMS,
                locales=b"en_US",
            ),
        )
        return header[8:]

    def _reject_protocol(self) -> None:
        # AMQP 0-9-1 section 4.2.2: answer with the header we speak, then close.
        assert self.transport is not None
        self.transport.write(PROTOCOL_HEADER)
        self.state = S.CLOSED
        self.transport.close()

    def _start_ok(self, method: amqp.ConnectionStartOk) -> None:
        self.client_properties = dict(method.client_properties)
        capabilities = self.client_properties.get("capabilities")
        self.client_capabilities = dict(capabilities) if isinstance(capabilities, dict) else {}
        user, password = parse_credentials(method.mechanism, method.response)
        self.user = user
        if not self.broker.authenticate(user, password):
            raise AccessRefused(
                f"Login was refused using authentication mechanism {method.mechanism}. "
                "For details see the broker logfile."
            )
        if user in self.settings.loopback_users and not self._from_loopback():
            raise AccessRefused(f"user '{user}' can only connect via localhost")
        self.state = S.AWAIT_TUNE_OK
        self.send_method(
            0,
            amqp.ConnectionTune(
                channel_max=self.settings.channel_max,
                frame_max=self.settings.frame_max,
                heartbeat=self.settings.heartbeat,
            ),
        )

    def _from_loopback(self) -> bool:
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        if not isinstance(peer, tuple):
            return True  # a Unix socket is local by construction
        host = str(peer[0])
        return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1", "localhost")

    def _tune_ok(self, method: amqp.ConnectionTuneOk) -> None:
        ours = self.settings
        frame_max = method.frame_max or ours.frame_max
        if frame_max < 4096:
            raise NotAllowed(f"frame_max={frame_max} < 4096 min size")
        if frame_max > ours.frame_max:
            raise NotAllowed(f"frame_max={frame_max} > {ours.frame_max} max size")
        channel_max = method.channel_max or ours.channel_max
        if channel_max > ours.channel_max:
            raise NotAllowed(f"channel_max={channel_max} > {ours.channel_max} max")
        self.frame_max = frame_max
        self.reader.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat = method.heartbeat
        self.state = S.AWAIT_OPEN

    def _open(self, method: amqp.ConnectionOpen) -> None:
        self.core = self.broker.connect(method.virtual_host, self.user)
        self.state = S.OPEN
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self.heartbeat:
            self._schedule_heartbeat()
        self.send_method(0, amqp.ConnectionOpenOk())
        log.info(
            "connection %s: user '%s' opened vhost '%s'", self.peer, self.user, method.virtual_host
        )

    def _handshake_timeout(self) -> None:
        if self.state in _HANDSHAKE_STATES and self.transport is not None:
            log.info("closing connection %s: handshake not completed in time", self.peer)
            self.state = S.CLOSED
            self.transport.close()

    def _update_secret(self, method: amqp.ConnectionUpdateSecret) -> None:
        self.send_method(0, amqp.ConnectionUpdateSecretOk())

    # -- frames --------------------------------------------------------------------

    def _channel_zero(self, frame_type: int, payload: bytes) -> None:
        if frame_type == FRAME_HEARTBEAT:
            return
        if self.state is S.CLOSING:
            if frame_type == FRAME_METHOD:
                self._closing_method(payload)
            return
        if frame_type != FRAME_METHOD:
            raise UnexpectedFrame(f"unexpected frame type {frame_type} on channel 0")
        method = amqp.decode_method(payload)
        handler = _TRANSITIONS.get((self.state, type(method)))
        if handler is None:
            if self.state is S.OPEN:
                raise CommandInvalid(f"unexpected method '{method.NAME}' on channel 0")
            raise CommandInvalid(
                f"expected a connection method for {self.state.value}, got '{method.NAME}'"
            )
        getattr(self, handler)(method)

    def _closing_method(self, payload: bytes) -> None:
        try:
            method = amqp.decode_method(payload)
        except AMQPError:
            return
        handler = _TRANSITIONS.get((S.CLOSING, type(method)))
        if handler is not None:
            getattr(self, handler)(method)

    def _unopened_channel(self, number: int, frame_type: int, payload: bytes | None) -> None:
        """A frame on a channel that is not open; ``payload`` None for a whole publish."""
        if self.state is S.CLOSING:
            return
        if self.state is not S.OPEN:
            raise CommandInvalid(f"channel {number} used before the connection is open")
        if frame_type == FRAME_HEARTBEAT:
            raise UnexpectedFrame(f"heartbeat frame on channel {number}")
        if frame_type != FRAME_METHOD:
            raise UnexpectedFrame("expected method frame, got non method frame instead")
        method = amqp.decode_method(payload) if payload is not None else None
        if not isinstance(method, amqp.ChannelOpen):
            raise ChannelError("expected 'channel.open'")
        if len(self.channels) >= self.channel_max:
            # As RabbitMQ: channel_max bounds how many are open, not their numbers.
            self.close(
                NotAllowed(
                    f"number of channels opened ({len(self.channels)}) has reached the "
                    f"negotiated channel_max ({self.channel_max})"
                )
            )
            return
        self.channels[number] = ServerChannel(self, number)
        self.send_method(number, amqp.ChannelOpenOk())

    def channel_closed_by_client(self, channel: ServerChannel) -> None:
        channel.close_core()
        del self.channels[channel.number]
        self.send_method(channel.number, amqp.ChannelCloseOk())

    def forget_channel(self, channel: ServerChannel) -> None:
        self.channels.pop(channel.number, None)

    # -- errors become frames here ---------------------------------------------------

    def fail_channel(self, exc: AMQPError, number: int) -> None:
        """Closes a channel (or the connection, for a hard error) for a broker-side reason."""
        self._fail(exc, number, None)

    def _fail(self, exc: AMQPError, number: int, payload: bytes | None) -> None:
        if self.state is S.CLOSED:
            return
        if not exc.class_id and payload is not None and len(payload) >= 4:
            exc.class_id = int.from_bytes(payload[0:2], "big")
            exc.method_id = int.from_bytes(payload[2:4], "big")
        channel = self.channels.get(number)
        if self.state in _HANDSHAKE_STATES:
            self._fail_handshake(exc)
        elif isinstance(exc, SoftError) and channel is not None and self.state is S.OPEN:
            if channel.state is ChannelState.CLOSING:
                return
            log.info(
                "channel error on connection %s, channel %d: %s", self.peer, number, exc.reply_text
            )
            channel.close_core()
            channel.state = ChannelState.CLOSING
            self.send_method(
                number,
                amqp.ChannelClose(
                    reply_code=exc.reply_code,
                    reply_text=exc.reply_text,
                    class_id=exc.class_id,
                    method_id=exc.method_id,
                ),
            )
        else:
            self.close(exc)

    def _fail_handshake(self, exc: AMQPError) -> None:
        """As RabbitMQ: a refused login is told only to clients that asked for it
        (authentication_failure_close); a refused connection.open is always told;
        anything else before that just closes the socket."""
        log.info("closing connection %s during handshake: %s", self.peer, exc.reply_text)
        if self.state is S.AWAIT_OPEN:
            self.close(exc)
        elif isinstance(exc, AccessRefused) and self.client_capabilities.get(
            "authentication_failure_close"
        ):
            exc.class_id = exc.method_id = 0
            self.close(exc)
        else:
            self._drop()

    def close(self, exc: AMQPError) -> None:
        """Sends connection.close and waits (a little) for close-ok."""
        if self.state in (S.CLOSING, S.CLOSED):
            return
        if isinstance(exc, HardError | SoftError) and not isinstance(exc, ConnectionForced):
            log.info("closing connection %s (user '%s'): %s", self.peer, self.user, exc.reply_text)
        self._release()
        self.state = S.CLOSING
        self.send_method(
            0,
            amqp.ConnectionClose(
                reply_code=exc.reply_code,
                reply_text=exc.reply_text,
                class_id=exc.class_id,
                method_id=exc.method_id,
            ),
        )
        self._timers.append(self.loop.call_later(_CLOSE_TIMEOUT, self._drop))

    def _close_by_client(self, method: amqp.ConnectionClose) -> None:
        self._release()
        self.send_method(0, amqp.ConnectionCloseOk())
        self._drop()

    def _close_crossed(self, method: amqp.ConnectionClose) -> None:
        self.send_method(0, amqp.ConnectionCloseOk())
        self._drop()

    def _close_ok(self, method: amqp.ConnectionCloseOk) -> None:
        self._drop()

    def _release(self) -> None:
        """Gives everything this connection held back to the broker."""
        for channel in list(self.channels.values()):
            if channel.state is not ChannelState.CLOSING:
                channel.close_core()
        self.channels.clear()
        if self.core is not None:
            self.core.close()

    def _drop(self) -> None:
        """Flushes what is written and closes the socket."""
        self._flush()
        self.state = S.CLOSED
        if self.transport is not None:
            self.transport.close()

    # -- writing ---------------------------------------------------------------------

    def send_method(self, channel: int, method: amqp.Method) -> None:
        self.out.append(amqp.encode_method_frame(channel, method))
        self.schedule_flush()

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.server.store_flush_pending:
            # What the store holds must be durable before what we write: a delivery may
            # leave only once its "delivered" record is fsynced, or after a crash the
            # message would come back without redelivered=true.  Same group commit,
            # just done before this connection's output rather than after it.
            self.server.flush_store()
        if self.confirms_pending:
            for channel in self.confirms_pending:
                channel.flush_confirms()
            self.confirms_pending.clear()
        out = self.out
        if self.after_method:
            out.extend(self.after_method)
            self.after_method.clear()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))
            self._sent_since_tick = True
        out.clear()

    # -- heartbeats ------------------------------------------------------------------

    def _schedule_heartbeat(self) -> None:
        interval = max(self.heartbeat / 2, 0.5)
        self._timers.append(self.loop.call_later(interval, self._heartbeat_tick, interval))

    def _heartbeat_tick(self, interval: float) -> None:
        if self.state is S.CLOSED or self.transport is None:
            return
        if self.loop.time() - self._last_received > 2 * self.heartbeat:
            log.warning(
                "closing connection %s: missed heartbeats from client, timeout: %ds",
                self.peer,
                self.heartbeat,
            )
            self._release()
            self.state = S.CLOSED
            self.transport.abort()
            return
        if not self._sent_since_tick:
            self.transport.write(HEARTBEAT_FRAME)
        self._sent_since_tick = False
        self._timers = [
            t for t in self._timers if not t.cancelled() and t.when() > self.loop.time()
        ]
        self._timers.append(self.loop.call_later(interval, self._heartbeat_tick, interval))

    # -- shutdown --------------------------------------------------------------------

    def shutdown(self, reason: str = "shutdown") -> None:
        """Broker shutdown: 320 CONNECTION_FORCED to the client."""
        if self.state is S.OPEN:
            self.close(ConnectionForced(f"broker forced connection closure with reason '{reason}'"))
        elif self.state is not S.CLOSING:
            self._drop()
