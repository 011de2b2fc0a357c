"""Fixtures for differential tests: RabbitMQ (skipped when unreachable) and postoffice.

See ``interop_harness`` for what a scenario is and how observations are normalised.
The ``differential`` fixture runs one scenario against both brokers with the same
unique names and returns both observations; the test asserts they are equal.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple
from urllib.parse import quote, urlparse, urlunparse

import pytest
from interop_harness import DEFAULT_RABBITMQ_URL, Names, Target, normalise

from postoffice.testing import running_broker

# -- fixtures ------------------------------------------------------------------------------


class Observed(NamedTuple):
    rabbitmq: Any
    postoffice: Any


class _Reachability:
    checked = False
    reason: str | None = None
    version = ""


_rabbit = _Reachability()


def _rabbitmq_target() -> Target:
    return Target("rabbitmq", os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL))


@pytest.fixture(scope="session")
def rabbitmq() -> Target:
    target = _rabbitmq_target()
    if not _rabbit.checked:
        _rabbit.checked = True
        try:
            connection = target.connect()
        except Exception as exc:  # unreachable, refused, wrong credentials...
            _rabbit.reason = f"RabbitMQ not reachable at {target.host}:{target.port}: {exc!r}"
        else:
            version = connection._impl.server_properties.get("version", b"")
            _rabbit.version = version.decode() if isinstance(version, bytes) else str(version)
            connection.close()
    if _rabbit.reason is not None:
        pytest.skip(_rabbit.reason)
    return target


@pytest.fixture(scope="session")
def rabbitmq_version(rabbitmq: Target) -> str:
    return _rabbit.version


@pytest.fixture
def postoffice(rabbitmq: Target) -> Iterator[Target]:
    """A fresh postoffice broker for each test, so one test's damage stays its own.

    It gets RabbitMQ's user, password and vhost, so that texts naming them compare.
    """
    with running_broker(
        default_user=rabbitmq.user, default_pass=rabbitmq.password, default_vhost=rabbitmq.vhost
    ) as broker:
        url = urlunparse(urlparse(rabbitmq.url)._replace(netloc=_netloc(rabbitmq, broker.port)))
        yield Target("postoffice", url)


def _netloc(like: Target, port: int) -> str:
    return f"{quote(like.user, safe='')}:{quote(like.password, safe='')}@127.0.0.1:{port}"


Scenario = Callable[[Target, Names], Any]


@pytest.fixture
def differential(rabbitmq: Target, postoffice: Target) -> Callable[..., Observed]:
    """Runs a scenario on RabbitMQ and on postoffice: Observed(rabbitmq=..., postoffice=...).

    An exception from the scenario on RabbitMQ is a bug in the scenario and fails the
    test; on postoffice it is an observation (the broker hung or misbehaved), so the
    comparison shows it.
    """

    def run(scenario: Scenario) -> Observed:
        token = uuid.uuid4().hex[:10]
        names = Names(token)
        try:
            from_rabbit = scenario(rabbitmq, names)
        finally:
            names.cleanup(rabbitmq)
        names = Names(token)
        try:
            from_postoffice = scenario(postoffice, names)
        except Exception as exc:
            from_postoffice = ("scenario raised", type(exc).__name__, str(exc))
        # The postoffice broker is thrown away after the test: nothing to clean up.
        prefix = f"podiff-{token}-"
        return Observed(normalise(from_rabbit, prefix), normalise(from_postoffice, prefix))

    return run
