"""Queue features against RabbitMQ and postoffice: priorities, TTLs, dead-lettering,
length limits, quorum queues, single active consumer, consumer priorities, x-expires,
consumer timeout, message size and prefetch.

Each scenario is a plain function ``(target, names) -> observation`` run by the
``differential`` fixture (see ``interop_harness``).  TTLs are short (50-200 ms) and
waits are bounded polls: a scenario waits for the state RabbitMQ reaches and reports
what it saw.  Dead-lettered messages are read through a raw socket so that header
values keep their AMQP type tags (("l", 1) is a signed 64-bit int, ("S", ...) a long
string, ("T", ...) a timestamp); timestamps close to now read ("T", "<now>").

Where postoffice deliberately does better than RabbitMQ, a single-target test says
so in its docstring.  The consumer-timeout and max-message-size scenarios change the
running RabbitMQ's configuration and only run when ``POSTOFFICE_INTEROP_RECONFIGURE``
is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlparse, urlunparse

import pika
import pika.exceptions
import pytest
from interop_harness import (
    Names,
    Target,
    attempt,
    confirming,
    declare_ok,
    describe,
    exists,
    get_all,
    is_method,
    normalise,
    props,
    pump,
    ready_count,
    typed_headers,
)
from pika import frame as pframe
from pika import spec

from postoffice.testing import running_broker

pytestmark = pytest.mark.rabbitmq

BP = pika.BasicProperties
QUORUM = {"x-queue-type": "quorum"}


# -- helpers ---------------------------------------------------------------------------------


class _Recorder:
    """A pika consumer callback recording (consumer tag, body, redelivered, delivery tag,
    headers); with ``ack=True`` it acks each delivery at once."""

    def __init__(self, ack: bool = False) -> None:
        self.ack = ack
        self.seen: list[tuple[str, bytes, bool, int, Any]] = []

    def __call__(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.seen.append(
            (method.consumer_tag, body, method.redelivered, method.delivery_tag, properties.headers)
        )
        if self.ack:
            channel.basic_ack(method.delivery_tag)

    def by_tag(self) -> list[tuple[str, bytes, bool]]:
        return [(tag, body, redelivered) for tag, body, redelivered, _, _ in self.seen]


def _publish_all(connection: pika.BlockingConnection, q: str, messages: list[Any]) -> list[str]:
    """Publishes (body, properties) pairs in confirm mode: "ack" or "nack" for each."""
    channel = confirming(connection)
    outcomes = []
    for body, properties in messages:
        try:
            channel.basic_publish("", q, body, properties)
        except pika.exceptions.NackError:
            outcomes.append("nack")
        else:
            outcomes.append("ack")
    channel.close()
    return outcomes


def _bodies(channel: Any, q: str) -> list[bytes]:
    return [body for body, _ in get_all(channel, q)]


def _stamp(value: Any) -> Any:
    """Typed header values with timestamps within two minutes of now as ("T", "<now>")."""
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "T":
        return ("T", "<now>") if abs(value[1] - time.time()) < 120 else value
    if isinstance(value, tuple):
        return tuple(_stamp(item) for item in value)
    if isinstance(value, list):
        return [_stamp(item) for item in value]
    return value


def get_typed(t: Target, q: str) -> Any:
    """One basic.get (auto-ack) through a raw socket: "empty", how the channel closed, or
    {"get": get-ok fields, "properties": all but headers, "headers": typed, "body"}."""
    with t.raw() as raw:
        raw.open_channel(1)
        raw.method(1, spec.Basic.Get(queue=q, no_ack=True))
        answer = raw.recv()
        if answer is None or not is_method(answer, spec.Basic.GetOk):
            return "empty" if is_method(answer, spec.Basic.GetEmpty) else describe(answer)
        header = raw.recv_raw()
        assert header is not None and header[0] == 2, header
        properties = spec.BasicProperties()
        properties.decode(header[2], 12)
        size = int.from_bytes(header[2][4:12], "big")
        body = b""
        while len(body) < size:
            frame = raw.recv()
            assert isinstance(frame, pframe.Body), frame
            body += frame.fragment
        fields = dict(vars(answer.method))
        fields.pop("delivery_tag")
        other = props(properties)
        other.pop("headers", None)
        return {
            "get": fields,
            "properties": other,
            "headers": _stamp(typed_headers(header[2])),
            "body": body,
        }


def get_typed_when_ready(t: Target, connection: pika.BlockingConnection, q: str) -> Any:
    """Waits (bounded) until ``q`` has a message ready, then :func:`get_typed`."""
    ready_count(connection, q, expect=1)
    return get_typed(t, q)


def _deaths(headers: Any) -> list[tuple[str, str, int]]:
    """pika-decoded x-death as [(queue, reason, count)], most recent first."""
    return [(d["queue"], d["reason"], int(d["count"])) for d in (headers or {}).get("x-death", [])]


def _dl_queue(channel: Any, n: Names) -> tuple[str, dict[str, Any]]:
    """A queue collecting dead letters through the default exchange, and the queue
    arguments that send dead letters there."""
    dlq = n.q("dead")
    channel.queue_declare(dlq)
    return dlq, {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}


def _get_one(channel: Any, q: str, timeout: float = 2.0) -> Any:
    """basic.get until a message comes (bounded): (method, properties, body) or None."""
    deadline = time.monotonic() + timeout
    while True:
        method, properties, body = channel.basic_get(q, auto_ack=False)
        if method is not None:
            return method, properties, body
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


# -- 1. x-max-priority -------------------------------------------------------------------------

_PRIORITIES = [0, None, 3, 10, 5, 1, 7, None, 2, 6, 4, 8, 9, 255]


def _priority_messages() -> list[Any]:
    return [
        (f"m{i}-{p}".encode(), BP(priority=p) if p is not None else None)
        for i, p in enumerate(_PRIORITIES)
    ]


def priority_get_order(t: Target, n: Names) -> Any:
    """Above x-max-priority counts as the max, FIFO within a level, no priority is 0;
    the priority property is delivered as published."""
    q = n.q("prio")
    with t.session() as s:
        ch = s.channel()
        ch.queue_declare(q, arguments={"x-max-priority": 5})
        _publish_all(s.connection, q, _priority_messages())
        order = []
        while (got := ch.basic_get(q, auto_ack=True))[0] is not None:
            order.append((got[2], got[1].priority, got[0].message_count))
        return order


def test_priority_get_order(differential):
    observed = differential(priority_get_order)
    assert observed.postoffice == observed.rabbitmq


def priority_consume_and_requeue(t: Target, n: Names) -> Any:
    """A consumer with prefetch sees priority order; requeued messages go back into
    their own level; a publish while the consumer is full overtakes lower levels."""
    q = n.q("prio")
    observed: dict[str, Any] = {}
    with t.session() as s:
        ch = s.channel()
        ch.queue_declare(q, arguments={"x-max-priority": 5})
        _publish_all(s.connection, q, _priority_messages())
        got = [ch.basic_get(q, auto_ack=False) for _ in range(3)]
        observed["got"] = [body for _, _, body in got]
        ch.basic_nack(got[-1][0].delivery_tag, multiple=True, requeue=True)
        observed["ready after requeue"] = ready_count(s.connection, q, expect=len(_PRIORITIES))
        ch.basic_qos(prefetch_count=2)
        record = _Recorder()
        ch.basic_consume(q, record, consumer_tag="c")
        pump(s.connection, lambda: len(record.seen) >= 2)
        _publish_all(s.connection, q, [(b"late-5", BP(priority=5)), (b"late-1", BP(priority=1))])
        record.ack = True
        for _, _, _, tag, _ in record.seen:
            ch.basic_ack(tag)
        total = len(_PRIORITIES) + 2
        pump(s.connection, lambda: len(record.seen) >= total)
        observed["consumed"] = [(body, redelivered) for _, body, redelivered, _, _ in record.seen]
        return observed


def test_priority_consume_and_requeue(differential):
    observed = differential(priority_consume_and_requeue)
    assert observed.postoffice == observed.rabbitmq


def priority_argument_values(t: Target, n: Names) -> Any:
    cases: dict[str, Any] = {
        "0": 0,
        "1": 1,
        "255": 255,
        "256": 256,
        "-1": -1,
        "string": "5",
        "bool": True,
    }
    with t.session() as s:
        return {
            label: s.step(
                lambda ch, label=label, value=value: declare_ok(
                    ch.queue_declare(n.q("p" + label), arguments={"x-max-priority": value})
                )
            )
            for label, value in cases.items()
        }


def test_priority_argument_values(differential):
    observed = differential(priority_argument_values)
    assert observed.postoffice == observed.rabbitmq


# -- 2. TTL --------------------------------------------------------------------------------------


def queue_ttl_expiry(t: Target, n: Names) -> Any:
    """x-message-ttl: expired messages leave the queue and are never delivered; the
    smaller of queue TTL and per-message expiration wins; a message not yet expired
    keeps its expiration property."""
    q, q_long = n.q("ttl"), n.q("ttl-long")
    observed: dict[str, Any] = {}
    with t.session() as s:
        ch = s.channel()
        ch.queue_declare(q, arguments={"x-message-ttl": 100})
        ch.queue_declare(q_long, arguments={"x-message-ttl": 60_000})
        _publish_all(s.connection, q, [(b"a", None), (b"b", BP(expiration="60000"))])
        _publish_all(
            s.connection,
            q_long,
            [(b"short", BP(expiration="100")), (b"kept", BP(expiration="30000"))],
        )
        observed["ttl queue drains"] = ready_count(s.connection, q, expect=0)
        observed["ttl queue get"] = get_all(ch, q)
        time.sleep(0.3)
        kept = []
        while (got := ch.basic_get(q_long, auto_ack=True))[0] is not None:
            kept.append((got[2], props(got[1])))
        observed["long-ttl queue"] = kept
        _publish_all(s.connection, q, [(b"fresh", None)])
        observed["fresh message"] = get_all(ch, q)
        return observed


def test_queue_ttl_expiry(differential):
    observed = differential(queue_ttl_expiry)
    assert observed.postoffice == observed.rabbitmq


def ttl_not_delivered_to_late_consumer(t: Target, n: Names) -> Any:
    q = n.q("ttl")
    with t.session() as s:
        ch = s.channel()
        ch.queue_declare(q, arguments={"x-message-ttl": 100})
        _publish_all(s.connection, q, [(b"old", None), (b"old2", BP(expiration="50"))])
        ready_count(s.connection, q, expect=0)
        record = _Recorder(ack=True)
        ch.basic_consume(q, record, consumer_tag="late")
        _publish_all(s.connection, q, [(b"new", None)])
        pump(s.connection, lambda: len(record.seen) >= 1)
        pump(s.connection, lambda: False, timeout=0.2)
        return record.by_tag()


def test_ttl_not_delivered_to_late_consumer(differential):
    observed = differential(ttl_not_delivered_to_late_consumer)
    assert observed.postoffice == observed.rabbitmq


def ttl_zero(t: Target, n: Names) -> Any:
    """TTL 0 (queue or message): delivered when a consumer can take it at once,
    otherwise expired at once (dead-lettered with reason expired)."""
    q, q0 = n.q("plain"), n.q("ttl0")
    observed: dict[str, Any] = {}
    with t.session() as s:
        ch = s.channel()
        dlq, dl = _dl_queue(ch, n)
        ch.queue_declare(q, arguments=dl)
        ch.queue_declare(q0, arguments={"x-message-ttl": 0, **dl})
        _publish_all(s.connection, q, [(b"msg-ttl0, nobody", BP(expiration="0")), (b"plain", None)])
        _publish_all(s.connection, q0, [(b"queue-ttl0, nobody", None)])
        observed["ready"] = (
            ready_count(s.connection, q, expect=1),
            ready_count(s.connection, q0, expect=0),
        )
        observed["dead"] = sorted(
            (body, _deaths(p.headers))
            for body, p in _drain(ch, dlq, expect=2, connection=s.connection)
        )
        get_all(ch, q)
        record = _Recorder(ack=True)
        ch.basic_consume(q, record, consumer_tag="on-plain")
        ch.basic_consume(q0, record, consumer_tag="on-ttl0")
        _publish_all(s.connection, q, [(b"msg-ttl0, consumer", BP(expiration="0"))])
        _publish_all(s.connection, q0, [(b"queue-ttl0, consumer", None)])
        pump(s.connection, lambda: len(record.seen) >= 2)
        observed["consumed"] = sorted(record.by_tag())
        observed["dead after"] = ready_count(s.connection, dlq)
        return observed


def _drain(
    channel: Any, q: str, *, expect: int, connection: pika.BlockingConnection
) -> list[tuple[bytes, Any]]:
    """Waits (bounded) for ``expect`` ready messages, then takes all: [(body, props)]."""
    ready_count(connection, q, expect=expect)
    taken = []
    while (got := channel.basic_get(q, auto_ack=True))[0] is not None:
        taken.append((got[2], got[1]))
    return taken


def _drain_settled(
    channel: Any, q: str, connection: pika.BlockingConnection
) -> list[tuple[bytes, Any]]:
    """Takes all from ``q`` once its ready count has not changed for 0.1 s (at most 2 s):
    for dead letters whose number the scenario does not know in advance."""
    return _drain(channel, q, expect=_settled_count(connection, q), connection=connection)


def _settled_count(connection: pika.BlockingConnection, q: str) -> Any:
    """The ready count once it has not changed for 0.1 s (waiting at most 2 s)."""
    deadline = time.monotonic() + 2
    count, since = ready_count(connection, q), time.monotonic()
    while time.monotonic() - since < 0.1 and time.monotonic() < deadline:
        time.sleep(0.02)
        now = ready_count(connection, q)
        if now != count:
            count, since = now, time.monotonic()
    return count


def test_ttl_zero(differential):
    observed = differential(ttl_zero)
    assert observed.postoffice == observed.rabbitmq


_EXPIRATIONS = [
    "abc",
    "-1",
    "1.5",
    "1e3",
    "",
    " 10",
    "10 ",
    "+5000",
    "0",
    "00",
    "-0",
    "315360000000",
    "315360000001",
    "999999999999999999",
    "9999999999999999999",
    "99999999999999999999",
]


def invalid_expiration(t: Target, n: Names) -> Any:
    """basic.publish with a malformed expiration closes the channel (406, the parser's
    reason in Erlang terms); valid ones are accepted."""
    q = n.q("q")
    observed = {}
    with t.session() as s:
        s.step(lambda ch: ch.queue_declare(q))
        for value in _EXPIRATIONS:

            def publish(ch: Any, value: str = value) -> Any:
                ch.confirm_delivery()
                ch.basic_publish("", q, b"x", BP(expiration=value))
                return declare_ok(ch.queue_declare(q, passive=True))[1]

            observed[repr(value)] = s.step(publish)
            s.step(lambda ch: ch.queue_purge(q))
        return observed


def test_invalid_expiration(differential):
    observed = differential(invalid_expiration)
    assert observed.postoffice == observed.rabbitmq


# -- 3. dead-lettering ---------------------------------------------------------------------------


def dead_letter_rejected(t: Target, n: Names) -> Any:
    """reject / nack with requeue=false: the dead letter's routing, properties (expiration
    removed) and headers (x-death, x-first-death-*) with their wire types."""
    q, dlx = n.q("src"), n.x("dlx")
    observed: dict[str, Any] = {}
    with t.session() as s:
        ch = s.channel()
        ch.exchange_declare(dlx, "topic")
        dlq = n.q("dead")
        ch.queue_declare(dlq)
        ch.queue_bind(dlq, dlx, "#")
        ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
        rich = BP(
            expiration="60000",
            headers={"zz": 1, "aa": "two", "mm": [1, "x"]},
            priority=3,
            message_id="mid",
            content_type="text/plain",
            delivery_mode=2,
        )
        _publish_all(s.connection, q, [(b"rejected", rich), (b"nacked", None), (b"nacked2", None)])
        first = ch.basic_get(q)[0]
        ch.basic_reject(first.delivery_tag, requeue=False)
        observed["reject"] = get_typed_when_ready(t, s.connection, dlq)
        ch.basic_get(q)
        last = ch.basic_get(q)[0]
        ch.basic_nack(last.delivery_tag, multiple=True, requeue=False)
        dead = _drain(ch, dlq, expect=2, connection=s.connection)
        observed["nack multiple"] = [
            (body, _deaths(p.headers), sorted(p.headers)) for body, p in dead
        ]
        observed["source left"] = ready_count(s.connection, q, expect=0)
        return observed


def test_dead_letter_rejected(differential):
    observed = differential(dead_letter_rejected)
    assert observed.postoffice == observed.rabbitmq


def dead_letter_expired(t: Target, n: Names) -> Any:
    """Queue TTL and per-message TTL; x-dead-letter-routing-key replaces the routing key
    (routing-keys in x-death keeps the original, with CC but without BCC)."""
    q_msg, q_queue, dlx = n.q("msg-ttl"), n.q("queue-ttl"), n.x("dlx")
    observed: dict[str, Any] = {}
    with t.session() as s:
        ch = s.channel()
        ch.exchange_declare(dlx, "direct")
        dlq = n.q("dead")
        ch.queue_declare(dlq)
        ch.queue_bind(dlq, dlx, "rk")
        ch.queue_bind(dlq, dlx, q_msg)
        ch.queue_declare(q_msg, arguments={"x-dead-letter-exchange": dlx})
        ch.queue_declare(
            q_queue,
            arguments={
                "x-dead-letter-exchange": dlx,
                "x-dead-letter-routing-key": "rk",
                "x-message-ttl": 50,
            },
        )
        _publish_all(s.connection, q_msg, [(b"per-message", BP(expiration="50"))])
        observed["per-message"] = get_typed_when_ready(t, s.connection, dlq)
        publisher = confirming(s.connection)
        publisher.exchange_declare(n.x("in"), "direct")
        publisher.queue_bind(q_queue, n.x("in"), "a")
        publisher.queue_bind(q_queue, n.x("in"), "b")
        publisher.basic_publish(
            n.x("in"),
            "a",
            b"queue-ttl",
            BP(expiration="60000", headers={"CC": ["b", "c"], "BCC": ["d"]}),
        )
        observed["queue ttl"] = get_typed_when_ready(t, s.connection, dlq)
        observed["left"] = (
            ready_count(s.connection, q_msg, expect=0),
            ready_count(s.connection, q_queue, expect=0),
            ready_count(s.connection, dlq),
        )
        return observed


def test_dead_letter_expired(differential):
    observed = differential(dead_letter_expired)
    assert observed.postoffice == observed.rabbitmq


def dead_letter_maxlen(t: Target, n: Names) -> Any:
    q = n.q("src")
    with t.session() as s:
        ch = s.channel()
        dlq, dl = _dl_queue(ch, n)
        ch.queue_declare(q, arguments={"x-max-length": 1, **dl})
        _publish_all(s.connection, q, [(b"one", BP(expiration="60000")), (b"two", None)])
        return {
            "dead": get_typed_when_ready(t, s.connection, dlq),
            "left": _bodies(ch, q),
        }


def test_dead_letter_maxlen(differential):
    observed = differential(dead_letter_maxlen)
    assert observed.postoffice == observed.rabbitmq


def dead_letter_count_merging(t: Target, n: Names) -> Any:
    """A and B dead-letter into each other on reject: a repeated (queue, reason) bumps
    its count and moves its entry to the front; x-first-death-* never change; headers
    come back sorted by key once RabbitMQ has rewritten them.  The first x-death entry
    keeps RabbitMQ's construction order; an entry added or bumped later is sorted by
    key (and a second hop has no original-expiration: the first removed expiration)."""
    a, b = n.q("A"), n.q("B")
    observed = []
    with t.session() as s:
        ch = s.channel()
        ch.queue_declare(
            a, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": b}
        )
        ch.queue_declare(
            b, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": a}
        )
        _publish_all(s.connection, a, [(b"ping", BP(headers={"zz": 1, "aa": 2, "mm": "x"}))])
        for q in [a, b, a, b]:
            got = _get_one(ch, q)
            if got is None:
                observed.append(("nothing in", q))
                break
            method, properties, _ = got
            observed.append((q, method.routing_key, list(properties.headers)))
            ch.basic_reject(method.delivery_tag, requeue=False)
        ready_count(s.connection, a, expect=1)
        observed.append(get_typed(t, a))
        a2, b2 = n.q("A2"), n.q("B2")
        ch.queue_declare(
            a2, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": b2}
        )
        ch.queue_declare(
            b2, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": a2}
        )
        _publish_all(s.connection, a2, [(b"two hops", BP(expiration="60000"))])
        for q in [a2, b2]:
            got = _get_one(ch, q)
            if got is None:
                observed.append(("nothing in", q))
                break
            ch.basic_reject(got[0].delivery_tag, requeue=False)
        observed.append(get_typed_when_ready(t, s.connection, a2))
    return observed


def test_dead_letter_count_merging(differential):
    observed = differential(dead_letter_count_merging)
    assert observed.postoffice == observed.rabbitmq


def dead_letter_cycles(t: Target, n: Names) -> Any:
    """A cycle with no rejection in it (A expires into A) is dropped, even on the first
    dead-lettering, while other queues the DLX routes to still get the message; a cycle
    with a rejection in it (A expires into B, B rejects into A) goes on."""
    a, monitor, fan = n.q("A"), n.q("monitor"), n.x("fan")
    c, d = n.q("C"), n.q("D")
    observed: dict[str, Any] = {}
    with t.session() as s:
        ch = s.channel()
        ch.exchange_declare(fan, "fanout")
        ch.queue_declare(a, arguments={"x-dead-letter-exchange": fan, "x-message-ttl": 50})
        ch.queue_declare(monitor)
        ch.queue_bind(a, fan)
        ch.queue_bind(monitor, fan)
        _publish_all(s.connection, a, [(b"cycle", None)])
        observed["monitor"] = get_typed_when_ready(t, s.connection, monitor)
        time.sleep(0.3)
        observed["after"] = (ready_count(s.connection, a), ready_count(s.connection, monitor))

        to_d = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": d}
        ch.queue_declare(c, arguments={"x-message-ttl": 50, **to_d})
        ch.queue_declare(
            d, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": c}
        )
        _publish_all(s.connection, c, [(b"loop", None)])
        trail = []
        for _ in range(2):
            got = _get_one(ch, d)
            if got is None:
                trail.append("nothing in D")
                break
            trail.append(_deaths(got[1].headers))
            ch.basic_reject(got[0].delivery_tag, requeue=False)
        observed["reject cycle"] = trail
        observed["reject cycle, third time in D"] = get_typed_when_ready(t, s.connection, d)
        return observed


def test_dead_letter_cycles(differential):
    observed = differential(dead_letter_cycles)
    assert observed.postoffice == observed.rabbitmq


def dead_letter_to_missing_exchange(t: Target, n: Names) -> Any:
    """A DLX that does not exist: the message is dropped; a reject to itself via the
    default exchange is no cycle (it has a rejection) and comes back with count+1."""
    q, self_q = n.q("src"), n.q("self")
    with t.session() as s:
        ch = s.channel()
        ch.queue_declare(q, arguments={"x-dead-letter-exchange": n.x("missing")})
        ch.queue_declare(
            self_q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self_q}
        )
        _publish_all(s.connection, q, [(b"gone", None)])
        _publish_all(s.connection, self_q, [(b"again", None)])
        ch.basic_reject(ch.basic_get(q)[0].delivery_tag, requeue=False)
        counts = []
        for _ in range(3):
            got = _get_one(ch, self_q)
            if got is None:
                counts.append("nothing")
                break
            counts.append((_deaths(got[1].headers), got[0].redelivered))
            ch.basic_reject(got[0].delivery_tag, requeue=False)
        return {
            "missing dlx": (
                ready_count(s.connection, q, expect=0),
                exists(s.connection, "queue", q),
            ),
            "self": counts,
        }


def test_dead_letter_to_missing_exchange(differential):
    observed = differential(dead_letter_to_missing_exchange)
    assert observed.postoffice == observed.rabbitmq


def dead_letter_head_only_expiry(t: Target, n: Names) -> Any:
    """[ttl 10 s, ttl 100 ms] with a DLX: what clients end up with once the first is
    consumed (RabbitMQ only expires the second when it reaches the head; postoffice
    earlier, see test_postoffice_expires_behind_the_head, but the outcome is the same)."""
    q = n.q("src")
    with t.session() as s:
        ch = s.channel()
        dlq, dl = _dl_queue(ch, n)
        ch.queue_declare(q, arguments=dl)
        _publish_all(
            s.connection, q, [(b"long", BP(expiration="10000")), (b"short", BP(expiration="100"))]
        )
        time.sleep(0.4)
        first = get_all(ch, q)
        dead = _drain(ch, dlq, expect=1, connection=s.connection)
        return {
            "got": first,
            "dead": [(body, _deaths(p.headers)) for body, p in dead],
            "left": ready_count(s.connection, q, expect=0),
        }


def test_dead_letter_head_only_expiry(differential):
    observed = differential(dead_letter_head_only_expiry)
    assert observed.postoffice == observed.rabbitmq


def test_postoffice_expires_behind_the_head(postoffice):
    """Deliberate difference: postoffice expires a message when its TTL runs out even if
    it is not at the head of the queue.  RabbitMQ keeps [ttl 10 s, ttl 100 ms] both
    ready until the first leaves; postoffice dead-letters the second after ~100 ms."""
    n = Names(uuid.uuid4().hex[:10])
    with postoffice.session() as s:
        ch = s.channel()
        dlq, dl = _dl_queue(ch, n)
        q = n.q("src")
        ch.queue_declare(q, arguments=dl)
        _publish_all(
            s.connection, q, [(b"long", BP(expiration="10000")), (b"short", BP(expiration="100"))]
        )
        assert ready_count(s.connection, dlq, expect=1) == 1
        assert ready_count(s.connection, q) == 1
        _, properties, body = ch.basic_get(dlq, auto_ack=True)
        assert body == b"short"
        assert _deaths(properties.headers) == [(q, "expired", 1)]
        assert _bodies(ch, q) == [b"long"]


# -- 4. length limits and overflow ----------------------------------------------------------------


def _overflow_case(
    s: Any, ch: Any, q: str, dlq: str, arguments: dict[str, Any], confirm: bool
) -> Any:
    ch.queue_declare(q, arguments=arguments)
    messages = [(f"m{i}".encode() * (i + 1), None) for i in range(5)]
    if confirm:
        outcomes: Any = _publish_all(s.connection, q, messages)
    else:
        publisher = s.channel()
        for body, _ in messages:
            publisher.basic_publish("", q, body)
        outcomes = "unconfirmed"
    return {
        "publish": outcomes,
        "ready": _settled_count(s.connection, q),
        "left": _bodies(ch, q),
        "dead": [(body, _deaths(p.headers)) for body, p in _drain_settled(ch, dlq, s.connection)],
    }


_OVERFLOW_CASES: dict[str, tuple[dict[str, Any], bool]] = {
    "length 2, drop-head": ({"x-max-length": 2}, True),
    "length 2, reject-publish, confirms": (
        {"x-max-length": 2, "x-overflow": "reject-publish"},
        True,
    ),
    "length 2, reject-publish, no confirms": (
        {"x-max-length": 2, "x-overflow": "reject-publish"},
        False,
    ),
    "length 2, reject-publish-dlx, confirms": (
        {"x-max-length": 2, "x-overflow": "reject-publish-dlx"},
        True,
    ),
    "length 2, reject-publish-dlx, no confirms": (
        {"x-max-length": 2, "x-overflow": "reject-publish-dlx"},
        False,
    ),
    "length 0, drop-head": ({"x-max-length": 0}, True),
    "length 0, reject-publish": ({"x-max-length": 0, "x-overflow": "reject-publish"}, True),
}

_BYTES_CASES: dict[str, tuple[dict[str, Any], bool]] = {
    "bytes 7, drop-head": ({"x-max-length-bytes": 7}, True),
    "bytes 12, drop-head": ({"x-max-length-bytes": 12}, True),
    "bytes 7, reject-publish": ({"x-max-length-bytes": 7, "x-overflow": "reject-publish"}, True),
    "bytes 6, reject-publish-dlx": (
        {"x-max-length-bytes": 6, "x-overflow": "reject-publish-dlx"},
        True,
    ),
    "length 3 and bytes 7": ({"x-max-length": 3, "x-max-length-bytes": 7}, True),
    "length 1 and bytes 100, reject-publish": (
        {"x-max-length": 1, "x-max-length-bytes": 100, "x-overflow": "reject-publish"},
        True,
    ),
}


def _overflow(cases: dict[str, tuple[dict[str, Any], bool]]) -> Callable[[Target, Names], Any]:
    """Five messages m0 (2 bytes), m1m1 (4), ... m4m4m4m4m4 (10) into each queue."""

    def scenario(t: Target, n: Names) -> Any:
        observed = {}
        with t.session() as s:
            ch = s.channel()
            dlq, dl = _dl_queue(ch, n)
            for i, (label, (arguments, confirm)) in enumerate(cases.items()):
                observed[label] = _overflow_case(
                    s, ch, n.q(f"q{i}"), dlq, {**arguments, **dl}, confirm
                )
        return observed

    return scenario


def test_max_length_overflow(differential):
    observed = differential(_overflow(_OVERFLOW_CASES))
    assert observed.postoffice == observed.rabbitmq


def test_max_length_bytes_overflow(differential):
    observed = differential(_overflow(_BYTES_CASES))
    assert observed.postoffice == observed.rabbitmq


def max_length_counts_ready_only(t: Target, n: Names) -> Any:
    """Unacked messages do not count towards x-max-length (classic queue)."""
    q = n.q("q")
    with t.session() as s:
        ch = s.channel()
        ch.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
        _publish_all(s.connection, q, [(b"a", None), (b"b", None)])
        held = ch.basic_get(q)[0]
        outcome = _publish_all(s.connection, q, [(b"c", None), (b"d", None)])
        ch.basic_nack(held.delivery_tag, requeue=True)
        return {
            "publish while one unacked": outcome,
            "after requeue": ready_count(s.connection, q, expect=3),
            "bodies": get_all(ch, q),
        }


def test_max_length_counts_ready_only(differential):
    observed = differential(max_length_counts_ready_only)
    assert observed.postoffice == observed.rabbitmq


# -- 5. quorum queues: x-delivery-limit -----------------------------------------------------------


def quorum_delivery_limit(t: Target, n: Names) -> Any:
    """nack requeue=true on a quorum queue with x-delivery-limit 2: x-delivery-count on
    each delivery (0 on the first get), the requeued message comes back first, and past
    the limit it is dead-lettered with reason delivery_limit."""
    q = n.q("qq")
    observed: dict[str, Any] = {}
    with t.session() as s:
        ch = s.channel()
        dlq, dl = _dl_queue(ch, n)
        ch.queue_declare(q, durable=True, arguments={**QUORUM, "x-delivery-limit": 2, **dl})
        _publish_all(s.connection, q, [(b"a", BP(headers={"k": "v"})), (b"b", None)])
        observed["first get"] = get_typed_when_ready(t, s.connection, q)
        trail = []
        for _ in range(3):
            got = _get_one(ch, q)
            if got is None:
                trail.append("empty")
                break
            method, properties, body = got
            trail.append((body, method.redelivered, properties.headers, method.message_count))
            ch.basic_nack(method.delivery_tag, requeue=True)
        observed["gets"] = trail
        observed["dead"] = get_typed_when_ready(t, s.connection, dlq)
        observed["left"] = (ready_count(s.connection, q, expect=0), ch.basic_get(q)[0])
        return observed


def test_quorum_delivery_limit(differential):
    observed = differential(quorum_delivery_limit)
    assert observed.postoffice == observed.rabbitmq


def quorum_delivery_count_on_consume(t: Target, n: Names) -> Any:
    """x-delivery-count as a consumer sees it: channel close requeues (counts), and a
    delivery limit of 0 dead-letters on the first return."""
    q, q0 = n.q("qq"), n.q("qq0")
    observed: dict[str, Any] = {}
    with t.session() as s:
        ch = s.channel()
        dlq, dl = _dl_queue(ch, n)
        ch.queue_declare(q, durable=True, arguments={**QUORUM, "x-delivery-limit": 5})
        ch.queue_declare(q0, durable=True, arguments={**QUORUM, "x-delivery-limit": 0, **dl})
        _publish_all(s.connection, q, [(b"m", None)])
        _publish_all(s.connection, q0, [(b"zero", None)])
        seen = []
        for _ in range(3):
            consumer = s.channel()
            record = _Recorder()
            consumer.basic_consume(q, record, consumer_tag="c")
            pump(s.connection, lambda record=record: len(record.seen) >= 1)
            seen += [
                (body, redelivered, headers) for _, body, redelivered, _, headers in record.seen
            ]
            consumer.close()
        observed["consumed, channel closed each time"] = seen
        got = _get_one(ch, q0)
        observed["limit 0, first get"] = got[1].headers if got else None
        if got:
            ch.basic_nack(got[0].delivery_tag, requeue=True)
        dead = _drain(ch, dlq, expect=1, connection=s.connection)
        observed["limit 0, dead"] = [(body, _deaths(p.headers)) for body, p in dead]
        return observed


def test_quorum_delivery_count_on_consume(differential):
    observed = differential(quorum_delivery_count_on_consume)
    assert observed.postoffice == observed.rabbitmq


def test_postoffice_delivery_limit_on_classic_queue(postoffice):
    """Deliberate difference: postoffice honours x-delivery-limit on classic queues too
    (RabbitMQ 3.10 refuses the argument there: 406 "invalid arg 'x-delivery-limit' for
    queue '...' in vhost '/' of queue type rabbit_classic_queue")."""
    n = Names(uuid.uuid4().hex[:10])
    with postoffice.session() as s:
        ch = s.channel()
        dlq, dl = _dl_queue(ch, n)
        q = n.q("classic")
        ch.queue_declare(q, arguments={"x-delivery-limit": 1, **dl})
        _publish_all(s.connection, q, [(b"m", None)])
        counts = []
        for _ in range(2):
            method, properties, _ = _get_one(ch, q)
            counts.append((properties.headers or {}).get("x-delivery-count"))
            ch.basic_nack(method.delivery_tag, requeue=True)
        assert counts == [0, 1]
        assert ready_count(s.connection, dlq, expect=1) == 1
        _, properties, body = ch.basic_get(dlq, auto_ack=True)
        assert body == b"m"
        assert _deaths(properties.headers) == [(q, "delivery_limit", 1)]
        assert ready_count(s.connection, q) == 0


# -- 6. quorum queue declaration rules ---------------------------------------------------------


def quorum_declaration_rules(t: Target, n: Names) -> Any:
    """Which flags and arguments a quorum queue refuses (x-delivery-limit on a classic
    queue is left out: see test_postoffice_delivery_limit_on_classic_queue)."""
    durable = {"durable": True}
    cases: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "non-durable": ({}, QUORUM),
        "exclusive": ({"durable": True, "exclusive": True}, QUORUM),
        "auto-delete": ({"durable": True, "auto_delete": True}, QUORUM),
        "exclusive, non-durable": ({"exclusive": True}, QUORUM),
        "auto-delete, non-durable": ({"auto_delete": True}, QUORUM),
        "exclusive, auto-delete": (
            {"durable": True, "exclusive": True, "auto_delete": True},
            QUORUM,
        ),
        "x-max-priority": (durable, {**QUORUM, "x-max-priority": 5}),
        "x-max-priority, non-durable": ({}, {**QUORUM, "x-max-priority": 5}),
        "x-queue-mode lazy": (durable, {**QUORUM, "x-queue-mode": "lazy"}),
        "x-queue-mode default": (durable, {**QUORUM, "x-queue-mode": "default"}),
        "drop-head": (durable, {**QUORUM, "x-overflow": "drop-head"}),
        "reject-publish": (durable, {**QUORUM, "x-overflow": "reject-publish"}),
        "reject-publish-dlx": (durable, {**QUORUM, "x-overflow": "reject-publish-dlx"}),
        "x-message-ttl": (durable, {**QUORUM, "x-message-ttl": 1000}),
        "x-expires": (durable, {**QUORUM, "x-expires": 60_000}),
        "x-max-length-bytes": (durable, {**QUORUM, "x-max-length-bytes": 10}),
        "x-delivery-limit -1": (durable, {**QUORUM, "x-delivery-limit": -1}),
        "x-delivery-limit string": (durable, {**QUORUM, "x-delivery-limit": "a"}),
        "x-single-active-consumer": (durable, {**QUORUM, "x-single-active-consumer": True}),
        "x-dead-letter-strategy": (durable, {**QUORUM, "x-dead-letter-strategy": "at-least-once"}),
    }
    with t.session() as s:
        observed = {}
        for i, (label, (options, arguments)) in enumerate(cases.items()):
            q = n.q(f"qq{i}")
            observed[label] = s.step(
                lambda ch, q=q, options=options, arguments=arguments: declare_ok(
                    ch.queue_declare(q, arguments=arguments, **options)
                )
            )
        return observed


def test_quorum_declaration_rules(differential):
    observed = differential(quorum_declaration_rules)
    assert observed.postoffice == observed.rabbitmq


# -- 7. single active consumer ----------------------------------------------------------------


def single_active_consumer(t: Target, n: Names) -> Any:
    """Only the first consumer gets messages; when its channel closes with unacked
    messages the second takes over and gets the requeued ones first, in order."""
    q = n.q("sac")
    observed: dict[str, Any] = {}
    with t.session() as s:
        ch = s.channel()
        ch.queue_declare(q, arguments={"x-single-active-consumer": True})
        first, second = s.channel(), s.channel()
        first.basic_qos(prefetch_count=2)
        second.basic_qos(prefetch_count=3)
        record = _Recorder()
        first.basic_consume(q, record, consumer_tag="first")
        second.basic_consume(q, record, consumer_tag="second")
        observed["declare-ok"] = declare_ok(ch.queue_declare(q, passive=True))[1:]
        _publish_all(s.connection, q, [(f"m{i}".encode(), None) for i in range(5)])
        pump(s.connection, lambda: len(record.seen) >= 2)
        pump(s.connection, lambda: False, timeout=0.2)
        observed["before"] = record.by_tag()
        del record.seen[:]
        first.close()
        pump(s.connection, lambda: len(record.seen) >= 3)
        pump(s.connection, lambda: False, timeout=0.2)
        observed["after close"] = record.by_tag()
        observed["left"] = ready_count(s.connection, q, expect=2)
        return observed


def test_single_active_consumer(differential):
    observed = differential(single_active_consumer)
    assert observed.postoffice == observed.rabbitmq


def single_active_consumer_cancel(t: Target, n: Names) -> Any:
    """basic.cancel of the active consumer while it holds an unacked message: RabbitMQ
    3.10 activates no other consumer (not even once that message is acked) until the
    cancelled consumer's channel closes; then the next consumer in line takes over."""
    q = n.q("sac")
    observed: dict[str, Any] = {}
    with t.session() as s:
        ch = s.channel()
        ch.queue_declare(q, arguments={"x-single-active-consumer": True})
        first, other = s.channel(), s.channel()
        first.basic_qos(prefetch_count=1)
        other.basic_qos(prefetch_count=1)
        record = _Recorder()
        first.basic_consume(q, record, consumer_tag="one")
        other.basic_consume(q, record, consumer_tag="two")
        other.basic_consume(q, record, consumer_tag="three")
        _publish_all(s.connection, q, [(f"m{i}".encode(), None) for i in range(4)])

        def settle(label: str, count: int) -> None:
            pump(s.connection, lambda: len(record.seen) >= count)
            pump(s.connection, lambda: False, timeout=0.2)
            observed[label] = record.by_tag()

        settle("before", 1)
        first.basic_cancel("one")
        settle("after cancelling one, its message unacked", 1)
        first.basic_ack(record.seen[0][3])
        settle("after acking one's message", 1)
        first.close()
        settle("after closing one's channel", 2)
        other.basic_cancel("two")
        settle("after cancelling two, its message unacked", 2)
        other.close()
        observed["ready"] = ready_count(s.connection, q, expect=3)
        return observed


def test_single_active_consumer_cancel(differential):
    """Deliberate difference: once the cancelled active consumer's message is acked,
    postoffice hands over to the next consumer; RabbitMQ 3.10 waits until the
    cancelled consumer's channel closes (docs/compatibility.md). Everything else is
    the same."""
    observed = differential(single_active_consumer_cancel)
    stage = "after acking one's message"
    assert observed.rabbitmq[stage] == [("one", b"m0", False)]
    assert observed.postoffice[stage] == [("one", b"m0", False), ("two", b"m1", False)]
    later = "after closing one's channel"
    assert observed.rabbitmq[later][-1] == ("two", b"m1", False)
    rest = {k: v for k, v in observed.rabbitmq.items() if k not in (stage, later)}
    assert {k: v for k, v in observed.postoffice.items() if k not in (stage, later)} == rest


# -- 8. consumer priorities ---------------------------------------------------------------------


def consumer_priorities_with_prefetch(t: Target, n: Names) -> Any:
    """The highest-priority consumer with room gets each message; lower ones only when
    higher ones are full; acking makes room again for the higher one."""
    q = n.q("q")
    observed: dict[str, Any] = {}
    with t.session() as s:
        ch = s.channel()
        ch.queue_declare(q)
        ch.basic_qos(prefetch_count=2)
        record = _Recorder()
        ch.basic_consume(q, record, consumer_tag="low", arguments={"x-priority": 1})
        ch.basic_consume(q, record, consumer_tag="high", arguments={"x-priority": 5})
        ch.basic_consume(q, record, consumer_tag="none")
        ch.basic_consume(q, record, consumer_tag="negative", arguments={"x-priority": -3})
        _publish_all(s.connection, q, [(f"m{i}".encode(), None) for i in range(9)])
        pump(s.connection, lambda: len(record.seen) >= 8)
        pump(s.connection, lambda: False, timeout=0.2)
        observed["first round"] = record.by_tag()
        high = [tag for consumer, _, _, tag, _ in record.seen if consumer == "high"]
        ch.basic_ack(high[-1], multiple=False)
        ch.basic_ack(high[0], multiple=False)
        _publish_all(s.connection, q, [(b"late", None)])
        pump(s.connection, lambda: len(record.seen) >= 10)
        pump(s.connection, lambda: False, timeout=0.2)
        observed["after acking high"] = record.by_tag()[8:]
        return observed


def test_consumer_priorities_with_prefetch(differential):
    observed = differential(consumer_priorities_with_prefetch)
    assert observed.postoffice == observed.rabbitmq


def consumer_priority_argument(t: Target, n: Names) -> Any:
    q = n.q("q")
    cases: dict[str, Any] = {"string": "x", "bool": True, "huge": 2**40, "negative": -5}
    with t.session() as s:
        s.step(lambda ch: ch.queue_declare(q))
        return {
            label: s.step(
                lambda ch, value=value: ch.basic_consume(
                    q, lambda *_: None, consumer_tag="c", arguments={"x-priority": value}
                )
            )
            for label, value in cases.items()
        }


def test_consumer_priority_argument(differential):
    observed = differential(consumer_priority_argument)
    assert observed.postoffice == observed.rabbitmq


# -- 9. x-expires --------------------------------------------------------------------------------


def _passive(connection: pika.BlockingConnection, q: str) -> tuple[Any, ...]:
    channel = connection.channel()
    outcome = attempt(lambda: declare_ok(channel.queue_declare(q, passive=True)))
    if channel.is_open:
        channel.close()
    return outcome


def _gone_after_idle(connection: pika.BlockingConnection, q: str, idle: float) -> Any:
    """Checks (passive declare) every ``idle`` s, up to 3 s; each check uses the queue."""
    deadline = time.monotonic() + 3
    while True:
        time.sleep(idle)
        outcome = _passive(connection, q)
        if outcome[0] != "ok" or time.monotonic() > deadline:
            return outcome if outcome[0] != "ok" else "still there"


def queue_expires(t: Target, n: Names) -> Any:
    """x-expires: an unused queue is deleted; a passive declare counts as use; a queue
    with a consumer does not expire; once the consumer leaves the clock starts again."""
    idle, kept, consumed = n.q("idle"), n.q("kept"), n.q("consumed")
    observed: dict[str, Any] = {}
    with t.session() as s:
        ch = s.channel()
        ch.queue_declare(idle, arguments={"x-expires": 200})
        ch.queue_declare(consumed, arguments={"x-expires": 200})
        ch.basic_consume(consumed, lambda *_: None, consumer_tag="c")
        _publish_all(s.connection, idle, [(b"m", None)])
        observed["idle queue"] = _gone_after_idle(s.connection, idle, 0.5)
        ch.queue_declare(kept, arguments={"x-expires": 300})
        probes = []
        for _ in range(6):
            time.sleep(0.1)
            probes.append(exists(s.connection, "queue", kept))
        observed["kept alive by passive declares"] = probes
        observed["consumed, after 0.5 s"] = exists(s.connection, "queue", consumed)
        ch.basic_cancel("c")
        observed["consumer cancelled"] = _gone_after_idle(s.connection, consumed, 0.5)
        return observed


def test_queue_expires(differential):
    observed = differential(queue_expires)
    assert observed.postoffice == observed.rabbitmq


# -- 12. global and per-consumer prefetch at once ------------------------------------------------


def _prefetch_split(s: Any, q: str, qos: list[tuple[int, bool]]) -> list[str]:
    """Two consumers on one channel after the given basic.qos calls: who got what."""
    channel = s.channel()
    for count, is_global in qos:
        channel.basic_qos(prefetch_count=count, global_qos=is_global)
    record = _Recorder()
    channel.basic_consume(q, record, consumer_tag="a")
    channel.basic_consume(q, record, consumer_tag="b")
    pump(s.connection, lambda: False, timeout=0.2)
    channel.close()
    ready_count(s.connection, q, expect=10)
    return [tag for tag, _, _ in record.by_tag()]


def prefetch_global_and_per_consumer(t: Target, n: Names) -> Any:
    """basic.qos global=false after global=true lifts the channel-wide limit (RabbitMQ
    unlimits it so that per-consumer prefetch overrides a default); global after
    per-consumer keeps both limits."""
    q = n.q("q")
    cases = {
        "global 3 then per-consumer 2": [(3, True), (2, False)],
        "per-consumer 2 then global 3": [(2, False), (3, True)],
        "per-consumer 3 then global 2": [(3, False), (2, True)],
        "per-consumer 4 then global 6": [(4, False), (6, True)],
        "per-consumer 1 then global 1": [(1, False), (1, True)],
        "global 3 only": [(3, True)],
        "global 3, per-consumer 2, global 3 again": [(3, True), (2, False), (3, True)],
        "per-consumer 2, global 3, global 0": [(2, False), (3, True), (0, True)],
    }
    with t.session() as s:
        s.step(lambda ch: ch.queue_declare(q))
        _publish_all(s.connection, q, [(f"m{i}".encode(), None) for i in range(10)])
        return {label: _prefetch_split(s, q, qos) for label, qos in cases.items()}


def test_prefetch_global_and_per_consumer(differential):
    observed = differential(prefetch_global_and_per_consumer)
    assert observed.postoffice == observed.rabbitmq


# -- 10, 11. consumer timeout and max message size (reconfigure RabbitMQ) ----------------------

_RECONFIGURE = "POSTOFFICE_INTEROP_RECONFIGURE"


def _rabbitmq_env(key: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "eval", f"application:get_env(rabbit, {key})."],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _set_rabbitmq_env(key: str, value: str) -> None:
    subprocess.run(
        ["rabbitmqctl", "eval", f"application:set_env(rabbit, {key}, {value})."],
        check=True,
        capture_output=True,
    )


@contextlib.contextmanager
def _rabbitmq_configured(**values: int) -> Iterator[None]:
    """Sets rabbit application env keys for the block, restoring what was there (never
    unset: RabbitMQ's channels crash at start when e.g. channel_tick_interval is gone)."""
    if not os.environ.get(_RECONFIGURE):
        pytest.skip(f"changes the shared RabbitMQ's configuration; set {_RECONFIGURE}=1")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl not on PATH")
    before = {}
    for key in values:
        current = _rabbitmq_env(key)
        assert current.startswith("{ok,") and current.endswith("}"), (key, current)
        before[key] = current[len("{ok,") : -1]
    try:
        for key, value in values.items():
            _set_rabbitmq_env(key, str(value))
        yield
    finally:
        for key, value in before.items():
            _set_rabbitmq_env(key, value)


def _differential_with(
    rabbitmq: Target, scenario: Callable[[Target, Names], Any], **settings: Any
) -> tuple[Any, Any]:
    """The ``differential`` fixture's run, with a postoffice configured by ``settings``."""
    token = uuid.uuid4().hex[:10]
    names = Names(token)
    try:
        from_rabbit = scenario(rabbitmq, names)
    finally:
        names.cleanup(rabbitmq)
    with running_broker(
        default_user=rabbitmq.user,
        default_pass=rabbitmq.password,
        default_vhost=rabbitmq.vhost,
        **settings,
    ) as broker:
        netloc = f"{quote(rabbitmq.user, safe='')}:{quote(rabbitmq.password, safe='')}"
        url = urlunparse(
            urlparse(rabbitmq.url)._replace(netloc=f"{netloc}@127.0.0.1:{broker.port}")
        )
        try:
            from_postoffice = scenario(Target("postoffice", url), Names(token))
        except Exception as exc:
            from_postoffice = ("scenario raised", type(exc).__name__, str(exc))
    prefix = f"podiff-{token}-"
    return normalise(from_rabbit, prefix), normalise(from_postoffice, prefix)


def consumer_timeout(t: Target, n: Names) -> Any:
    """A delivery (consumed or got) not acked within consumer_timeout closes its channel
    with 406; the message is requeued.  RabbitMQ checks on its channel tick."""
    q = n.q("q")
    observed: dict[str, Any] = {}
    with t.session() as s:
        s.step(lambda ch: ch.queue_declare(q))
        _publish_all(s.connection, q, [(b"slow", None)])
    with t.raw(timeout=10) as raw:
        raw.open_channel(1)
        raw.method(1, spec.Basic.Consume(queue=q, consumer_tag="slow"))
        observed["consumer"] = raw.until_closed()
        raw.method(1, spec.Channel.CloseOk())
        raw.open_channel(2)
        raw.method(2, spec.Basic.Get(queue=q))
        observed["get"] = raw.until_closed()
    return observed


def test_consumer_timeout(rabbitmq):
    with _rabbitmq_configured(consumer_timeout=1000, channel_tick_interval=500):
        rabbit, office = _differential_with(rabbitmq, consumer_timeout, consumer_timeout=1000)
    assert office == rabbit


def max_message_size(t: Target, n: Names) -> Any:
    q = n.q("q")
    with t.session() as s:
        s.step(lambda ch: ch.queue_declare(q))
        observed: dict[Any, Any] = {
            size: s.step(
                lambda ch, size=size: (ch.confirm_delivery(), ch.basic_publish("", q, b"x" * size))
            )
            for size in (1024, 1025, 200_000)
        }
        observed["ready"] = ready_count(s.connection, q, expect=1)
        return observed


def test_max_message_size(rabbitmq):
    with _rabbitmq_configured(max_message_size=1024):
        rabbit, office = _differential_with(rabbitmq, max_message_size, max_message_size=1024)
    assert office == rabbit
