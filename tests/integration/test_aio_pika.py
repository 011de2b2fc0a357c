"""aio-pika against the broker: each test is a coroutine run with asyncio.run, bounded."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import functools
import os
from collections.abc import Awaitable, Callable

import aio_pika
import aiormq
import pytest
from aio_pika.patterns import RPC

WAIT = 20.0


def run_async(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Turns an async test into a sync one: its own event loop, a bound on its time."""

    @functools.wraps(test)
    def wrapper(*args: object, **kwargs: object) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), WAIT))

    return wrapper


@run_async
async def test_publish_with_confirms_and_consume_with_an_iterator(url, names):
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(names("x"), aio_pika.ExchangeType.TOPIC)
        queue = await channel.declare_queue(names("q"))
        await queue.bind(exchange, "orders.*")
        for i in range(10):
            confirmation = await exchange.publish(
                aio_pika.Message(b"order %d" % i), routing_key=f"orders.{i}"
            )
            assert isinstance(confirmation, aiormq.spec.Basic.Ack)
        received = []
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    received.append((message.routing_key, message.body, message.redelivered))
                if len(received) == 10:
                    break
        assert received == [(f"orders.{i}", b"order %d" % i, False) for i in range(10)]
        declared = await channel.declare_queue(queue.name, passive=True)
        assert declared.declaration_result.message_count == 0


EVERY_PAMQP_HEADER = {
    "bool": True,
    "short-short": -100,  # 'b'
    "short": -30000,  # 's'
    "unsigned-short": 65000,  # 'u'
    "long": -2_000_000_000,  # 'I'
    "unsigned-long": 4_000_000_000,  # 'i'
    "long-long": -(2**60),  # 'l'
    "float": 1.5,  # 'f', exact in 32 bits
    "decimal": decimal.Decimal("-12.34"),
    "text": "ünïcödé",
    "timestamp": datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    "table": {"a": {"b": [1, "c"]}},
    "array": [True, 7, "x", [], {"k": None}],
    "bytes": bytearray(b"\x00\xff"),
    "void": None,
}


@run_async
async def test_every_property_and_header_type_round_trips(url, names):
    sent = aio_pika.Message(
        b"payload",
        headers=EVERY_PAMQP_HEADER,
        content_type="text/plain",
        content_encoding="utf-8",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=3,
        correlation_id="c-1",
        reply_to="somewhere",
        expiration=3600,
        message_id="m-1",
        timestamp=datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
        type="kind",
        user_id="guest",
        app_id="aio-tests",
    )
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names())
        await channel.default_exchange.publish(sent, routing_key=queue.name)
        got = await queue.get(timeout=5, no_ack=True)
    fields = [
        "content_type",
        "content_encoding",
        "headers",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "message_type",
        "user_id",
        "app_id",
    ]
    expected = {name: getattr(sent.properties, name) for name in fields}
    assert {name: getattr(got.properties, name) for name in fields} == expected
    assert got.headers == EVERY_PAMQP_HEADER
    assert got.body == b"payload"


@run_async
async def test_qos_and_nack_with_requeue(url, names):
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=2)
        queue = await channel.declare_queue(names())
        for i in range(3):
            await channel.default_exchange.publish(
                aio_pika.Message(b"%d" % i), routing_key=queue.name
            )
        seen: list[tuple[bytes, bool]] = []
        async with queue.iterator() as messages:
            async for message in messages:
                seen.append((message.body, message.redelivered))
                if message.body == b"0" and not message.redelivered:
                    await message.nack(requeue=True)
                else:
                    await message.ack()
                if len(seen) == 4:
                    break
        assert seen == [(b"0", False), (b"1", False), (b"0", True), (b"2", False)]


@run_async
async def test_mandatory_return_raises_with_on_return_raises(url, names):
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(on_return_raises=True)
        with pytest.raises(aio_pika.exceptions.DeliveryError) as caught:
            await channel.default_exchange.publish(
                aio_pika.Message(b"nobody"), routing_key=names("absent"), mandatory=True
            )
        assert caught.value.message.body == b"nobody"
        assert caught.value.frame.reply_code == 312


@run_async
async def test_transaction_commit_and_rollback(url, names):
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=False)
        queue = await channel.declare_queue(names())
        transaction = channel.transaction()
        await transaction.select()
        await channel.default_exchange.publish(aio_pika.Message(b"no"), routing_key=queue.name)
        await transaction.rollback()
        await channel.default_exchange.publish(aio_pika.Message(b"yes"), routing_key=queue.name)
        await transaction.commit()
        got = await queue.get(timeout=5, no_ack=True)
        assert got.body == b"yes"
        assert await queue.get(fail=False) is None


@run_async
async def test_direct_reply_to(url, names):
    async with await aio_pika.connect(url) as server, await aio_pika.connect(url) as client:
        server_channel = await server.channel()
        service = await server_channel.declare_queue(names("svc"))

        async def serve(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                await server_channel.default_exchange.publish(
                    aio_pika.Message(message.body[::-1], correlation_id=message.correlation_id),
                    routing_key=message.reply_to,
                )

        await service.consume(serve)

        client_channel = await client.channel()
        replies: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        reply_queue = await client_channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await reply_queue.consume(replies.put, no_ack=True)
        await client_channel.default_exchange.publish(
            aio_pika.Message(b"olleh", reply_to="amq.rabbitmq.reply-to", correlation_id="42"),
            routing_key=service.name,
        )
        reply = await replies.get()
        assert (reply.body, reply.correlation_id) == (b"hello", "42")


@run_async
async def test_rpc_pattern(url, names):
    async with await aio_pika.connect(url) as server, await aio_pika.connect(url) as client:
        server_rpc = await RPC.create(await server.channel())

        async def multiply(*, x: int, y: int) -> int:
            return x * y

        method = names("multiply")
        await server_rpc.register(method, multiply, auto_delete=True)
        client_rpc = await RPC.create(await client.channel())
        results = await asyncio.gather(
            *(client_rpc.call(method, kwargs={"x": i, "y": 3}) for i in range(5))
        )
        assert results == [0, 3, 6, 9, 12]
        await client_rpc.close()
        await server_rpc.close()


@run_async
async def test_five_mebibyte_message(url, names):
    body = os.urandom(5 * 1024 * 1024)
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names())
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue.name)
        got = await queue.get(timeout=10, no_ack=True)
        assert (len(got.body), got.body == body) == (len(body), True)


@run_async
async def test_fifty_concurrent_connections(url, names):
    shared = names("shared")
    count = 50

    async def client(i: int) -> list[bytes]:
        async with await aio_pika.connect(url) as connection:
            channel = await connection.channel()
            own = await channel.declare_queue(names(f"own{i}"), auto_delete=True)
            shared_queue = await channel.declare_queue(shared)
            for j in range(5):
                await channel.default_exchange.publish(
                    aio_pika.Message(b"%d.%d" % (i, j)), routing_key=own.name
                )
            await channel.default_exchange.publish(
                aio_pika.Message(b"%d" % i), routing_key=shared_queue.name
            )
            got = []
            async with own.iterator(no_ack=True) as messages:
                async for message in messages:
                    got.append(message.body)
                    if len(got) == 5:
                        break
            return got

    results = await asyncio.gather(*(client(i) for i in range(count)))
    assert results == [[b"%d.%d" % (i, j) for j in range(5)] for i in range(count)]
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(shared, passive=True)
        assert queue.declaration_result.message_count == count


@run_async
async def test_channel_errors_leave_the_connection_usable(url, names):
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(names("missing"), passive=True)
        channel = await connection.channel()
        queue = await channel.declare_queue(names())
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(queue.name, durable=True)
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.declare_exchange("amq.custom")
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(b"ok"), routing_key=queue.name)
        queue = await channel.get_queue(queue.name)
        assert (await queue.get(timeout=5, no_ack=True)).body == b"ok"


@run_async
async def test_immediate_publish_closes_the_connection_with_540(url, names):
    async with (
        await aio_pika.connect(url) as bystander,
        await aio_pika.connect(url) as connection,
    ):
        kept_channel = await bystander.channel()
        kept = await kept_channel.declare_queue(names("kept"))
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(aio_pika.Message(b"accepted"), routing_key=kept.name)
        got = await channel.get_queue(kept.name)
        held = await got.get(timeout=5)  # unacked when the connection goes
        assert held.body == b"accepted"

        with pytest.raises(aiormq.exceptions.ConnectionNotImplemented) as caught:
            await channel.default_exchange.publish(
                aio_pika.Message(b"now"), routing_key=kept.name, immediate=True
            )
        assert str(caught.value.args[0]).startswith("NOT_IMPLEMENTED")  # the class says 540

        again = await kept.get(timeout=5, no_ack=True)
        assert (again.body, again.redelivered) == (b"accepted", True)
        assert await kept.get(fail=False) is None


@run_async
async def test_retry_with_ttl_and_dead_letters(url, names):
    """The retry pattern: a failed message waits in a TTL queue that dead-letters it
    back to the work queue, and x-death counts the rounds it went through."""
    work, wait = names("work"), names("wait")
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(
            wait,
            arguments={
                "x-message-ttl": 20,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": work,
            },
        )
        work_queue = await channel.declare_queue(
            work,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": wait},
        )
        await channel.default_exchange.publish(aio_pika.Message(b"job"), routing_key=work)
        rounds = []
        async with work_queue.iterator() as messages:
            async for message in messages:
                deaths = (message.headers or {}).get("x-death") or []
                rounds.append(sorted((d["queue"], d["reason"], d["count"]) for d in deaths))
                await message.reject(requeue=False)  # fails: off to the wait queue
                if len(rounds) == 3:
                    break
        assert rounds == [
            [],
            [(wait, "expired", 1), (work, "rejected", 1)],
            [(wait, "expired", 2), (work, "rejected", 2)],
        ]
