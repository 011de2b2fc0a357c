"""De-duplication (rabbitmq-message-deduplication) with pika: declare errors, the
exchange's window, queue-level de-duplication, and the window through a restart and
through kill -9."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker, UnroutableError

from postoffice.store.disk import DiskStore
from postoffice.testing import running_broker

DEDUP = "x-message-deduplication"


def publish(
    channel: BlockingChannel,
    exchange: str,
    key: Any,
    *,
    routing_key: str = "",
    mandatory: bool = False,
    **headers: Any,
) -> None:
    headers = {name.replace("_", "-"): value for name, value in headers.items()}
    headers["x-deduplication-header"] = key
    properties = pika.BasicProperties(headers=headers, delivery_mode=2)
    channel.basic_publish(exchange, routing_key, b"body", properties, mandatory=mandatory)


def depth(channel: BlockingChannel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def dedup_exchange(
    channel: BlockingChannel, name: str, queue: str, *, durable: bool = False, **arguments: Any
) -> None:
    arguments = {name.replace("_", "-"): value for name, value in arguments.items()}
    arguments.setdefault("x-cache-size", 100)
    channel.exchange_declare(name, DEDUP, durable=durable, arguments=arguments)
    channel.queue_declare(queue, durable=durable)
    channel.queue_bind(queue, name, "ignored")


# -- against the shared broker ---------------------------------------------------------


def test_a_missing_cache_size_closes_the_channel_with_the_plugins_406(connection, names):
    channel = connection.channel()
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.exchange_declare(names("x"), DEDUP)
    assert closed.value.reply_code == 406
    assert closed.value.reply_text == (
        "PRECONDITION_FAILED - Missing or invalid argument,           "
        "'x-cache-size' must be an integer greater than 0"
    )


def test_a_bad_persistence_closes_the_channel_with_the_plugins_406(connection, names):
    channel = connection.channel()
    arguments = {"x-cache-size": 5, "x-cache-persistence": "ram"}
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.exchange_declare(names("x"), DEDUP, arguments=arguments)
    assert closed.value.reply_text == (
        "PRECONDITION_FAILED - Invalid argument,              "
        "'x-cache-persistence' must be either 'disk' or 'memory'"
    )


def test_duplicates_are_dropped_and_still_acked(channel, names):
    exchange, queue = names("x"), names("q")
    dedup_exchange(channel, exchange, queue, x_cache_ttl=60_000)
    channel.confirm_delivery()
    for _ in range(3):
        publish(channel, exchange, "order-1", routing_key="any-key")  # raises on a nack
    publish(channel, exchange, "order-2")
    publish(channel, exchange, b"order-2")  # the same bytes as a byte array
    assert depth(channel, queue) == 2


def test_a_mandatory_duplicate_is_returned_as_in_the_plugin(channel, names):
    exchange, queue = names("x"), names("q")
    dedup_exchange(channel, exchange, queue)
    channel.confirm_delivery()
    publish(channel, exchange, "k", mandatory=True)
    with pytest.raises(UnroutableError):
        publish(channel, exchange, "k", mandatory=True)
    assert depth(channel, queue) == 1


def test_a_key_comes_back_after_its_ttl(channel, names):
    exchange, queue = names("x"), names("q")
    dedup_exchange(channel, exchange, queue, x_cache_ttl=60_000)
    publish(channel, exchange, "short", x_cache_ttl=200)
    publish(channel, exchange, "short")
    time.sleep(0.3)
    publish(channel, exchange, "short")
    assert depth(channel, queue) == 2


def test_a_full_cache_forgets_a_key(channel, names):
    exchange, queue = names("x"), names("q")
    dedup_exchange(channel, exchange, queue, x_cache_size=1)
    for key in ("this", "that", "this"):
        publish(channel, exchange, key)
    assert depth(channel, queue) == 3


def test_a_deduplicating_queue_holds_one_message_per_key(channel, names):
    queue = names("q")
    channel.queue_declare(queue, arguments={DEDUP: True})
    for key in ("a", "a", 42, 42, "b"):
        publish(channel, "", key, routing_key=queue)
    assert depth(channel, queue) == 3


def test_a_queue_key_is_free_once_its_message_went_to_a_no_ack_consumer(channel, names):
    queue = names("q")
    channel.queue_declare(queue, arguments={DEDUP: True})
    publish(channel, "", "a", routing_key=queue)
    received: list[bytes] = []
    channel.basic_consume(queue, lambda ch, m, p, body: received.append(body), auto_ack=True)
    publish(channel, "", "a", routing_key=queue)
    deadline = time.monotonic() + 5
    while len(received) < 2 and time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=0.05)
    assert received == [b"body", b"body"]


def test_a_queue_key_stays_until_the_message_is_acked(channel, names):
    queue = names("q")
    channel.queue_declare(queue, arguments={DEDUP: True})
    publish(channel, "", "a", routing_key=queue)
    method, _, _ = channel.basic_get(queue, auto_ack=False)
    assert method is not None
    publish(channel, "", "a", routing_key=queue)  # the original is not acked yet
    assert depth(channel, queue) == 0
    channel.basic_ack(method.delivery_tag)
    publish(channel, "", "a", routing_key=queue)
    assert depth(channel, queue) == 1


# -- restarts --------------------------------------------------------------------------


def test_a_disk_window_survives_a_restart(tmp_path: Path):
    exchange, queue = "dedup.x", "dedup.q"
    with running_broker(store=DiskStore(tmp_path, fsync=False)) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        dedup_exchange(
            channel, exchange, queue, durable=True, x_cache_persistence="disk", x_cache_ttl=60_000
        )
        channel.confirm_delivery()
        publish(channel, exchange, "order-1")
        publish(channel, exchange, 7)
        connection.close()

    with running_broker(store=DiskStore(tmp_path, fsync=False)) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.confirm_delivery()
        assert depth(channel, queue) == 2
        channel.queue_purge(queue)
        publish(channel, exchange, "order-1")
        publish(channel, exchange, 7)
        publish(channel, exchange, "order-2")
        assert depth(channel, queue) == 1
        connection.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _broker_process(data_dir: Path) -> Iterator[tuple[int, Callable[[], None]]]:
    """``postoffice serve`` on ``data_dir``; yields its port and a function that kills it -9."""
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "postoffice",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(30)

    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "the broker exited before accepting connections"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the broker never accepted connections"
                time.sleep(0.05)
        yield port, kill
    finally:
        kill()


def test_a_disk_window_survives_kill_9(tmp_path: Path):
    exchange, queue = "dedup.x", "dedup.q"
    url = "amqp://guest:guest@127.0.0.1:{}/%2F"
    with _broker_process(tmp_path) as (port, kill):
        connection = pika.BlockingConnection(pika.URLParameters(url.format(port)))
        channel = connection.channel()
        dedup_exchange(channel, exchange, queue, durable=True, x_cache_persistence="disk")
        channel.confirm_delivery()
        for n in range(20):
            publish(channel, exchange, f"order-{n}")  # acked: the key is on disk
        connection.close()
        kill()

    with _broker_process(tmp_path) as (port, _):
        connection = pika.BlockingConnection(pika.URLParameters(url.format(port)))
        channel = connection.channel()
        channel.confirm_delivery()
        assert depth(channel, queue) == 20
        for n in range(21):
            publish(channel, exchange, f"order-{n}")  # a retry after the crash
        assert depth(channel, queue) == 21
        connection.close()
