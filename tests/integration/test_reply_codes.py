"""Errors a client can provoke: the reply code, its scope, and that nothing else suffers.

Every case runs in the same scene.  On the connection that errs, a spare channel has
published two messages with confirms, and the channel that errs holds one of them
unacked.  After the error:

* the code is the one RabbitMQ sends, on the channel (soft error) or the connection
  (hard error);
* for a soft error the connection and its spare channel still work;
* a bystander connection still works, and finds both messages: the held one
  redelivered, ahead of the other (nothing accepted is lost, nothing reordered).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pika
import pytest
from pika import spec
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker
from rawamqp import RawClient


@dataclass
class Scene:
    connection: pika.BlockingConnection
    channel: object  # the channel that errs
    spare: object  # another channel on the same connection
    bystander: object  # a channel on another connection
    queue: str
    names: Callable[[str], str]

    def spare_queue(self) -> str:
        """A queue of its own with a message in it, declared on the spare channel."""
        queue = self.names("spare")
        self.spare.queue_declare(queue)
        self.spare.basic_publish("", queue, b"spare")
        return queue

    def check_nothing_lost(self, connection_survives: bool) -> None:
        assert self.connection.is_open is connection_survives
        assert self.spare.is_open is connection_survives
        if connection_survives:
            assert self.channel.is_closed
            # pika reuses the lowest free number: the one the broker just closed.
            reopened = self.connection.channel()
            assert reopened.channel_number == self.channel.channel_number
            reopened.basic_qos(prefetch_count=5)
            probe = self.names("probe")
            self.spare.queue_declare(probe)
            self.spare.basic_publish("", probe, b"still works")
            assert self.spare.basic_get(probe, auto_ack=True)[2] == b"still works"
        assert self.bystander.is_open
        got = []
        while True:
            method, _, body = self.bystander.basic_get(self.queue, auto_ack=True)
            if method is None:
                break
            got.append((method.redelivered, body))
        assert got == [(True, b"held"), (False, b"waiting")]


@pytest.fixture
def scene(connect, names) -> Scene:
    queue = names("kept")
    bystander = connect().channel()
    bystander.queue_declare(queue)
    connection = connect()
    spare = connection.channel()
    spare.confirm_delivery()
    spare.basic_publish("", queue, b"held")
    spare.basic_publish("", queue, b"waiting")
    channel = connection.channel()
    method, _, body = channel.basic_get(queue)
    assert (body, method.redelivered) == (b"held", False)
    return Scene(connection, channel, spare, bystander, queue, names)


def channel_error(scene: Scene, action: Callable[[], object]) -> ChannelClosedByBroker:
    with pytest.raises(ChannelClosedByBroker) as caught:
        action()
    scene.check_nothing_lost(connection_survives=True)
    return caught.value


def connection_error(scene: Scene, action: Callable[[], object]) -> ConnectionClosedByBroker:
    with pytest.raises(ConnectionClosedByBroker) as caught:
        action()
    scene.check_nothing_lost(connection_survives=False)
    return caught.value


# -- 404 NOT_FOUND ---------------------------------------------------------------------


def test_404_passive_declare_of_a_missing_queue(scene, names):
    error = channel_error(scene, lambda: scene.channel.queue_declare(names("no"), passive=True))
    assert error.reply_code == 404
    assert error.reply_text.startswith("NOT_FOUND")


def test_404_passive_declare_of_a_missing_exchange(scene, names):
    error = channel_error(scene, lambda: scene.channel.exchange_declare(names("no"), passive=True))
    assert error.reply_code == 404


def test_404_publish_to_a_missing_exchange(scene, names):
    def publish() -> None:
        scene.channel.confirm_delivery()
        scene.channel.basic_publish(names("no"), "key", b"lost")

    assert channel_error(scene, publish).reply_code == 404


def test_404_bind_to_a_missing_exchange(scene, names):
    error = channel_error(scene, lambda: scene.channel.queue_bind(scene.queue, names("no"), "k"))
    assert error.reply_code == 404


def test_404_consume_from_a_missing_queue(scene, names):
    error = channel_error(scene, lambda: scene.channel.basic_consume(names("no"), lambda *_: None))
    assert error.reply_code == 404


# -- 403 ACCESS_REFUSED ------------------------------------------------------------------


def test_403_declaring_an_exchange_with_the_amq_prefix(scene):
    error = channel_error(scene, lambda: scene.channel.exchange_declare("amq.mine", "direct"))
    assert error.reply_code == 403


def test_403_declaring_a_queue_with_the_amq_prefix(scene):
    error = channel_error(scene, lambda: scene.channel.queue_declare("amq.mine"))
    assert error.reply_code == 403


def test_403_publishing_to_an_internal_exchange(scene, names):
    internal = names("internal")
    scene.spare.exchange_declare(internal, "fanout", internal=True)

    def publish() -> None:
        scene.channel.confirm_delivery()
        scene.channel.basic_publish(internal, "", b"refused")

    assert channel_error(scene, publish).reply_code == 403


def test_403_consuming_beside_an_exclusive_consumer(scene, connect, names):
    queue = names("watched")
    owner = connect().channel()
    owner.queue_declare(queue)
    owner.basic_consume(queue, lambda *_: None, exclusive=True)
    error = channel_error(scene, lambda: scene.channel.basic_consume(queue, lambda *_: None))
    assert error.reply_code == 403
    assert owner.queue_declare(queue, passive=True).method.consumer_count == 1


# -- 405 RESOURCE_LOCKED -------------------------------------------------------------------


def test_405_using_another_connections_exclusive_queue(scene, connect, names):
    owner = connect().channel()
    exclusive = names("exclusive")
    owner.queue_declare(exclusive, exclusive=True)
    owner.basic_publish("", exclusive, b"mine")
    error = channel_error(scene, lambda: scene.channel.basic_get(exclusive))
    assert error.reply_code == 405
    assert owner.basic_get(exclusive, auto_ack=True)[2] == b"mine"


def test_405_redeclaring_another_connections_exclusive_queue(scene, connect, names):
    owner = connect().channel()
    exclusive = names("exclusive")
    owner.queue_declare(exclusive, exclusive=True)
    error = channel_error(scene, lambda: scene.channel.queue_declare(exclusive, exclusive=True))
    assert error.reply_code == 405
    assert owner.queue_declare(exclusive, passive=True).method.queue == exclusive


# -- 406 PRECONDITION_FAILED ----------------------------------------------------------------


def test_406_ack_of_an_unknown_delivery_tag(scene):
    def ack() -> None:
        scene.channel.basic_ack(delivery_tag=999)
        scene.channel.basic_qos(prefetch_count=1)  # a round trip to hear the answer

    error = channel_error(scene, ack)
    assert error.reply_code == 406
    assert "unknown delivery tag 999" in error.reply_text


def test_406_second_ack_of_the_same_tag(scene):
    def ack_twice() -> None:
        scene.channel.basic_ack(delivery_tag=1)  # the held message: done with
        scene.channel.basic_ack(delivery_tag=1)
        scene.channel.basic_qos(prefetch_count=1)

    with pytest.raises(ChannelClosedByBroker) as caught:
        ack_twice()
    assert caught.value.reply_code == 406
    assert scene.spare.is_open
    got = scene.bystander.basic_get(scene.queue, auto_ack=True)
    assert (got[0].redelivered, got[2], got[0].message_count) == (False, b"waiting", 0)


def test_406_redeclaring_a_queue_with_other_properties(scene):
    error = channel_error(scene, lambda: scene.channel.queue_declare(scene.queue, durable=True))
    assert error.reply_code == 406
    assert "inequivalent arg 'durable'" in error.reply_text


def test_406_redeclaring_a_queue_with_other_arguments(scene, names):
    queue = names("limited")
    scene.spare.queue_declare(queue, arguments={"x-max-length": 10})
    error = channel_error(
        scene, lambda: scene.channel.queue_declare(queue, arguments={"x-max-length": 20})
    )
    assert error.reply_code == 406


def test_406_redeclaring_an_exchange_with_another_type(scene, names):
    exchange = names("x")
    scene.spare.exchange_declare(exchange, "direct")
    error = channel_error(scene, lambda: scene.channel.exchange_declare(exchange, "fanout"))
    assert error.reply_code == 406
    assert scene.spare.exchange_declare(exchange, "direct")  # the original is untouched


def test_406_delete_if_empty_of_a_queue_with_messages(scene):
    error = channel_error(
        scene, lambda: scene.channel.queue_delete(scene.spare_queue(), if_empty=True)
    )
    assert error.reply_code == 406


def test_406_delete_if_unused_of_a_queue_with_a_consumer(scene):
    queue = scene.spare_queue()
    scene.spare.basic_consume(queue, lambda *_: None)
    error = channel_error(scene, lambda: scene.channel.queue_delete(queue, if_unused=True))
    assert error.reply_code == 406


def test_406_reply_to_without_a_reply_consumer(scene):
    def publish() -> None:
        scene.channel.confirm_delivery()
        scene.channel.basic_publish(
            "", scene.queue, b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to")
        )

    assert channel_error(scene, publish).reply_code == 406


# -- hard errors: the whole connection goes ---------------------------------------------------


def test_540_basic_qos_with_a_prefetch_size(scene):
    error = connection_error(scene, lambda: scene.channel.basic_qos(prefetch_size=1024))
    assert error.reply_code == 540


def test_530_duplicate_consumer_tag_closes_the_connection(broker, connect, names):
    # pika and aio-pika refuse a duplicate consumer tag themselves: speak AMQP directly.
    queue, other = names("kept"), names("other")
    bystander = connect().channel()
    bystander.queue_declare(queue)
    bystander.queue_declare(other)
    bystander.confirm_delivery()
    bystander.basic_publish("", queue, b"held")
    bystander.basic_publish("", queue, b"waiting")

    with RawClient(broker.host, broker.port) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.open_channel(2)
        raw.send_method(2, spec.Basic.Get(queue=queue))
        assert raw.expect(spec.Basic.GetOk).redelivered is False
        assert raw.read_content()[1] == b"held"
        raw.send_method(1, spec.Basic.Consume(queue=other, consumer_tag="twice"))
        raw.expect(spec.Basic.ConsumeOk)
        raw.send_method(1, spec.Basic.Consume(queue=other, consumer_tag="twice"))
        close = raw.expect_connection_close()
        assert close.reply_code == 530
        assert (close.class_id, close.method_id) == (60, 20)  # basic.consume
        raw.wait_closed(timeout=5)

    got = [bystander.basic_get(queue, auto_ack=True) for _ in range(2)]
    assert [(m.redelivered, body) for m, _, body in got] == [(True, b"held"), (False, b"waiting")]
    assert bystander.queue_declare(other, passive=True).method.consumer_count == 0
