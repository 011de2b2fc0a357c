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
from ..store import Store
from ..store.disk import DiskStore
from ..store.errors import StoreFailed, StoreWriteError
from .alarms import ResourceAlarm, disk_free, resident_memory, total_memory
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
        """``store`` defaults to the disk engine on ``settings.data_dir``."""
        self.settings = settings if settings is not None else Settings()
        if store is None:
            store = DiskStore(self.settings.data_dir)
        self.store = store
        store.wakeup = self._store_has_work
        self.store_flush_pending = False
        self.broker = Broker(
            store=store,
            users={self.settings.default_user: self.settings.default_pass},
            default_vhost=self.settings.default_vhost,
            edit_properties=_edit_properties,
            read_properties=BasicProperties,
            consumer_timeout=self.settings.consumer_timeout,
        )
        self.connections: set[AMQPConnection] = set()
        self._servers: list[asyncio.Server] = []
        self.port: int | None = None
        self.alarm_active = False
        self._alarms: list[ResourceAlarm] = []
        self.alarm_reason = ""
        self._stop: asyncio.Event | None = None
        self.exit_code = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self.broker.timers.wakeup = self._arm_timer

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        self._arm_timer()  # deadlines recovered with the queues (TTLs, x-expires...)
        if self.store_flush_pending:
            loop.call_soon(self._scheduled_store_flush)
        ram = total_memory()
        if settings.memory_high_watermark < 1.0 and ram:
            limit = int(ram * settings.memory_high_watermark)
            self._alarms.append(
                ResourceAlarm("memory", limit, self._alarm_changed, resident_memory)
            )
        if settings.disk_free_limit and isinstance(self.store, DiskStore):
            self._alarms.append(
                ResourceAlarm(
                    "disk",
                    settings.disk_free_limit,
                    self._alarm_changed,
                    disk_free(settings.data_dir),
                    low=True,
                )
            )
        for alarm in self._alarms:
            alarm.start()
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

    # -- the core's deadlines ---------------------------------------------------------

    def _arm_timer(self) -> None:
        """One event-loop timer for the broker's earliest deadline (core/timers.py)."""
        due = self.broker.timers.next_due()
        if due == self._timer_due:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_due = due
        if due is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: start() arms it
                delay = max(0.0, due - self.broker.clock.monotonic())
                self._timer = asyncio.get_running_loop().call_later(delay, self._run_timers)

    def _run_timers(self) -> None:
        self._timer = None
        self._timer_due = None
        try:
            self.broker.timers.run_due()
        except Exception:
            log.exception("a scheduled broker task failed")
        self._arm_timer()

    # -- group commit ----------------------------------------------------------------

    def _store_has_work(self) -> None:
        """The store holds unflushed work: flush it at the end of this loop turn, so
        every publish and declare of the turn shares one write and one fsync."""
        if not self.store_flush_pending:
            self.store_flush_pending = True
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # recovery, before the loop runs: start() flushes it
                return
            loop.call_soon(self._scheduled_store_flush)

    def _scheduled_store_flush(self) -> None:
        if self.store_flush_pending:  # a connection may have flushed it already
            self.flush_store()

    def flush_store(self) -> None:
        """Writes and fsyncs what the store holds, then runs its callbacks (confirms...)."""
        self.store_flush_pending = False
        try:
            self.store.flush()
        except StoreWriteError as exc:
            # Nothing of this flush is confirmed; the store keeps it for the next try.
            log.error("could not write to the data directory, retrying in 1 s: %s", exc.text)
            asyncio.get_running_loop().call_later(1.0, self._store_has_work)
        except StoreFailed as exc:
            log.critical("storage failed, durability can no longer be promised: %s", exc.text)
            if self._stop is not None:
                self.exit_code = 1
                self._stop.set()

    def _alarm_changed(self, _active: bool) -> None:
        self.set_alarm(any(alarm.active for alarm in self._alarms))

    def set_alarm(self, active: bool) -> None:
        """Resource alarms went on or off: publishers are blocked or released."""
        if active == self.alarm_active:
            return
        self.alarm_active = active
        reasons = [alarm.resource for alarm in self._alarms if alarm.active]
        self.alarm_reason = "low on " + " and ".join(reasons or ["memory"])
        for connection in list(self.connections):
            connection.set_alarm(active)

    async def stop(self) -> None:
        """Stops accepting, sends 320 CONNECTION_FORCED to every client, waits for them, closes."""
        if self._timer is not None:
            self._timer.cancel()
        for alarm in self._alarms:
            alarm.stop()
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
        try:
            self.store.flush()
        finally:
            self.store.close()

    async def serve_until_signalled(self) -> None:
        await self.start()
        stop = self._stop = asyncio.Event()
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


def run(settings: Settings) -> int:
    """Runs a server until SIGINT or SIGTERM, then shuts it down gracefully.

    Returns 0, or 1 when storage failed and the broker stopped on its own.
    """
    tune_garbage_collector()
    loop = new_event_loop()
    try:
        server = Server(settings)
        loop.run_until_complete(server.serve_until_signalled())
        return server.exit_code
    finally:
        loop.close()
