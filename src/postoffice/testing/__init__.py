"""A running broker for tests: ``with running_broker() as broker: ...`` or the pytest fixture.

The broker runs on its own event loop in a background thread and listens on a free
loopback port, so blocking clients (pika) and asyncio clients (aio-pika) in the
test's own thread both reach it.  Use it from pytest through the plugin::

    pytest_plugins = ["postoffice.testing"]

    def test_publish(postoffice_broker):
        connection = pika.BlockingConnection(pika.URLParameters(postoffice_broker.url))
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from ..config import Settings
from ..server import Server, new_event_loop
from ..store import MemoryStore, Store

__all__ = ["RunningBroker", "postoffice_broker", "running_broker"]


class RunningBroker:
    """A server running in a background thread; stop it with :meth:`stop`."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self._loop = new_event_loop()
        # In memory unless a store is given: tests want a clean broker, not a data dir.
        self.server = Server(settings, store=store if store is not None else MemoryStore())
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="postoffice", daemon=True
        )
        self._thread.start()
        self.call(self.server.start())

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    def call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        """Runs a coroutine on the broker's loop and returns its result."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    def stop(self) -> None:
        if not self._loop.is_running():
            return
        self.call(self.server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextmanager
def running_broker(
    settings: Settings | None = None, *, store: Store | None = None, **overrides: Any
) -> Iterator[RunningBroker]:
    """A broker on a free loopback port for the duration of the ``with`` block.

    Its store is in memory unless ``store`` is given (e.g. ``DiskStore(tmp_path)``).
    """
    base = settings if settings is not None else Settings(host="127.0.0.1", port=0)
    broker = RunningBroker(dataclasses.replace(base, **overrides), store)
    try:
        yield broker
    finally:
        broker.stop()


try:
    import pytest
except ImportError:  # pytest is optional: the context manager works without it
    pass
else:

    @pytest.fixture
    def postoffice_broker() -> Iterator[RunningBroker]:
        """A fresh broker for one test."""
        with running_broker() as broker:
            yield broker
