"""One broker for the whole integration session; tests keep apart by unique names.

A fresh broker per test costs a thread, a loop and a listener; sharing one is safe
because every test declares its own queues and exchanges (the ``names`` fixture).
Tests that stop the broker or change its settings start their own with
``running_broker()``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator

import pika
import pytest

from postoffice.testing import RunningBroker, running_broker

_counter = itertools.count()


@pytest.fixture(scope="session")
def broker() -> Iterator[RunningBroker]:
    with running_broker() as running:
        yield running


@pytest.fixture
def url(broker: RunningBroker) -> str:
    return broker.url


class Names:
    """Queue and exchange names no other test uses: ``names("orders")``."""

    def __init__(self, test_name: str) -> None:
        self.prefix = re.sub(r"[^A-Za-z0-9]+", "-", test_name)[:80]

    def __call__(self, what: str = "q") -> str:
        return f"{self.prefix}.{what}.{next(_counter)}"


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Names:
    return Names(request.node.name)


@pytest.fixture
def connect(url: str) -> Iterator[Callable[..., pika.BlockingConnection]]:
    """Opens pika blocking connections and closes those still open at teardown."""
    opened: list[pika.BlockingConnection] = []

    def open_connection(**params: object) -> pika.BlockingConnection:
        parameters = pika.URLParameters(url)
        for key, value in params.items():
            setattr(parameters, key, value)
        connection = pika.BlockingConnection(parameters)
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        if connection.is_open:
            connection.close()


@pytest.fixture
def connection(connect: Callable[..., pika.BlockingConnection]) -> pika.BlockingConnection:
    return connect()


@pytest.fixture
def channel(connection: pika.BlockingConnection):
    return connection.channel()
