"""Connections over time: heartbeats keep an idle one alive; shutdown tells every client."""

from __future__ import annotations

import threading
import time

import pika
import pytest
from pika import spec
from pika.exceptions import (
    AMQPConnectionError,
    ConnectionClosedByBroker,
    ProbableAuthenticationError,
)
from rawamqp import RawClient

from postoffice.testing import running_broker


def test_idle_connection_with_heartbeats_stays_open(connect, names):
    connection = connect(heartbeat=1)
    channel = connection.channel()
    queue = names()
    channel.queue_declare(queue)
    # Idle for several heartbeat intervals: the broker must take pika's heartbeats as
    # signs of life (pika's own check is too lenient to notice missing ones this fast;
    # test_broker_sends_heartbeats_to_a_quiet_client covers that direction).
    connection.process_data_events(time_limit=3.5)
    assert connection.is_open
    channel.basic_publish("", queue, b"still here")
    assert channel.basic_get(queue, auto_ack=True)[2] == b"still here"


def test_broker_sends_heartbeats_to_a_quiet_client(broker):
    with RawClient(broker.host, broker.port) as raw:
        raw.handshake(heartbeat=1)
        heartbeats = 0
        deadline = time.monotonic() + 10
        while heartbeats < 3:
            assert time.monotonic() < deadline, "no heartbeats from the broker"
            got = raw.read_frame(timeout=deadline - time.monotonic())
            assert got.frame_type == spec.FRAME_HEARTBEAT, got
            heartbeats += 1
            raw.send(b"\x08\x00\x00\x00\x00\x00\x00\xce")  # ours keep the connection up
        raw.open_channel(1)  # and it still works


def _stop_in_background(broker) -> threading.Thread:
    stopper = threading.Thread(target=broker.stop, name="stop-broker")
    stopper.start()
    return stopper


def test_graceful_shutdown_closes_clients_with_320():
    with running_broker() as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.queue_declare("shutdown-q")
        channel.basic_consume("shutdown-q", lambda *args: None)
        with RawClient(broker.host, broker.port) as raw:
            raw.handshake()
            stopper = _stop_in_background(broker)
            close = raw.expect_connection_close()
            assert close.reply_code == 320
            assert close.reply_text.startswith("CONNECTION_FORCED")
            raw.wait_closed(timeout=10)

        deadline = time.monotonic() + 10
        with pytest.raises(ConnectionClosedByBroker) as caught:
            while time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.1)
        assert caught.value.reply_code == 320
        assert connection.is_closed
        stopper.join(10)
        assert not stopper.is_alive(), "broker.stop() did not return"

        with pytest.raises(AMQPConnectionError):
            pika.BlockingConnection(
                pika.URLParameters(broker.url + "?connection_attempts=1&socket_timeout=2")
            )


def test_wrong_password_is_refused_with_403(broker, connect, names):
    parameters = pika.URLParameters(broker.url)
    parameters.credentials = pika.PlainCredentials("guest", "not-the-password")
    parameters.connection_attempts = 1
    with pytest.raises(ProbableAuthenticationError) as caught:
        pika.BlockingConnection(parameters)
    assert "(403) 'ACCESS_REFUSED" in str(caught.value)
    assert connect().channel().queue_declare(names()).method.message_count == 0
