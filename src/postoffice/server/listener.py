"""Listeners and the server's life: start, serve, shut down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from typing import Any

from .. import __version__
from ..amqp import BasicProperties
from ..config import Settings
from ..core import Broker, Properties
from ..store import MemoryStore, Store
from .alarms import MemoryAlarm, total_memory
from .connection import AMQPConnection

__all__ = ["Server", "run"]

log = logging.getLogger("postoffice.server")

_SHUTDOWN_GRACE = 5.0  # seconds clients get to answer connection.close on shutdown


def _edit_properties(properties: Properties, changes: dict[str, Any]) -> Properties:
    assert isinstance(properties, BasicProperties)
    return properties.replace(**changes)


class Server:
    """An AMQP server: a broker and the listeners that let clients reach it.

    ``await start()`` binds the listeners (port 0 picks a free port: see
    :attr:`port`); ``await stop()`` closes them and every connection gracefully.
    """

    def __init__(self, settings: Settings | None = None, *, store: Store | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        self.broker = Broker(
            store=store if store is not None else MemoryStore(),
            users={self.settings.default_user: self.settings.default_pass},
            default_vhost=self.settings.default_vhost,
            edit_properties=_edit_properties,
        )
        self.connections: set[AMQPConnection] = set()
        self._servers: list[asyncio.Server] = []
        self.port: int | None = None
        self.alarm_active = False
        self._memory_alarm: MemoryAlarm | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        ram = total_memory()
        if settings.memory_high_watermark < 1.0 and ram:
            self._memory_alarm = MemoryAlarm(
                int(ram * settings.memory_high_watermark), self.set_alarm
            )
            self._memory_alarm.start()
        host = settings.host or None
        tcp = await loop.create_server(
            lambda: AMQPConnection(self),
            host=host,
            port=settings.port,
            reuse_address=True,
            backlog=1024,
        )
        self._servers.append(tcp)
        self.port = tcp.sockets[0].getsockname()[1]
        for sock in tcp.sockets:
            log.info("listening for AMQP 0-9-1 on %s", _address(sock.getsockname()))
        if settings.unix_socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(settings.unix_socket)
            unix = await loop.create_unix_server(
                lambda: AMQPConnection(self), path=settings.unix_socket
            )
            self._servers.append(unix)
            log.info("listening for AMQP 0-9-1 on unix socket %s", settings.unix_socket)

    def set_alarm(self, active: bool) -> None:
        """A resource alarm went on or off: publishers are blocked or released."""
        self.alarm_active = active
        for connection in list(self.connections):
            connection.set_alarm(active)

    async def stop(self) -> None:
        """Stops accepting, sends 320 CONNECTION_FORCED to every client, waits for them, closes."""
        if self._memory_alarm is not None:
            self._memory_alarm.stop()
        for server in self._servers:
            server.close()
        connections = list(self.connections)
        for connection in connections:
            connection.shutdown()
        if connections:
            waiting = [connection.closed for connection in connections]
            await asyncio.wait(waiting, timeout=_SHUTDOWN_GRACE)
            for connection in connections:
                if not connection.closed.done() and connection.transport is not None:
                    connection.transport.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
        if self.settings.unix_socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.settings.unix_socket)
        self.broker.store.close()

    async def serve_until_signalled(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        log.info("postoffice %s started (Python %s)", __version__, sys.version.split()[0])
        await stop.wait()
        log.info("shutting down: closing %d connection(s)", len(self.connections))
        await self.stop()
        log.info("stopped")


def _address(sockname: object) -> str:
    if isinstance(sockname, tuple):
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(sockname)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed, asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def tune_garbage_collector() -> None:
    """Makes CPython's cyclic collector run rarely.

    A broker's heap is mostly queued messages, which form no cycles, but each is
    a tracked object: with the default thresholds the collector walks the whole
    backlog again and again as it grows (measured: a quarter of the CPU with a few
    hundred thousand messages queued).  Cyclic garbage here comes from closed
    connections, which are rare; it is still collected, just less eagerly.
    """
    gc.freeze()  # what start-up built lives as long as the process
    gc.set_threshold(100_000, 50, 20)


def run(settings: Settings) -> None:
    """Runs a server until SIGINT or SIGTERM, then shuts it down gracefully."""
    tune_garbage_collector()
    loop = new_event_loop()
    try:
        loop.run_until_complete(Server(settings).serve_until_signalled())
    finally:
        loop.close()
