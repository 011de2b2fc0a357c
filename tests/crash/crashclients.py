"""The clients of a crash round (see test_kill9.py): publishers, a consumer, a churner of
definitions, and what the broker is owed in definitions.  Every client thread logs what
it saw as events; the test turns them into the model once the broker is dead."""

from __future__ import annotations

import itertools
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
from crashlib import CLIENT_GONE, BrokerProcess, close_quietly, inspect_message, make_message
from pika.exceptions import NackError, UnroutableError

FANOUT = "crash.fanout"
A, B, DIRECT, FENCE = "crash.a", "crash.b", "crash.direct", "crash.fence"
BASE_QUEUES: dict[str, dict[str, Any]] = {
    A: {"x-crash-note": "fanout a"},
    B: {},
    DIRECT: {"x-crash-note": "direct", "x-crash-number": 7},
    FENCE: {},
}

PUBLISHERS = 3
PREFETCH = 100
HOLD = 40  # unacked deliveries a consumer keeps before acking the oldest
NACK, ACK = 0.03, 0.67  # the rest of the deliveries are held
FENCE_EVERY = 25  # acks between two fence publishes
CHURN_KEEP = 100  # one in this many churned queues is kept


# -- the plan of a round ------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    number: int
    trigger: str  # timer | delivery | confirm
    delay: float
    nth: int
    aftermath: str  # plain | torn-tail | recovery-kill

    def __str__(self) -> str:
        when = f"{self.delay:.3f} s" if self.trigger == "timer" else f"#{self.nth}"
        return f"round {self.number}: kill on {self.trigger} {when}, then {self.aftermath}"


def plan_round(seed: int, number: int) -> Plan:
    rng = random.Random(f"{seed}/{number}")
    triggers = ("timer", "delivery", "confirm")
    aftermaths = ("plain", "torn-tail", "recovery-kill")
    if number < 3:  # the short CI run covers each kind once
        trigger, aftermath = triggers[number], aftermaths[number]
    else:
        trigger = rng.choice(triggers)
        aftermath = rng.choices(aftermaths, weights=(2, 1, 1))[0]
    return Plan(
        number,
        trigger,
        delay=rng.uniform(0.02, 2.0),
        nth=int(2 ** rng.uniform(0, 11)),  # 1 to 2047, the small ones as likely as the large
        aftermath=aftermath,
    )


# -- durable definitions the broker owes us -------------------------------------------------


@dataclass
class Definitions:
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)
    exchanges: dict[str, str] = field(default_factory=dict)
    bindings: list[tuple[str, str, str]] = field(default_factory=list)
    deleted_queues: dict[str, int] = field(default_factory=dict)  # name -> life deleted in
    deleted_exchanges: dict[str, int] = field(default_factory=dict)
    # Deletes sent without a delete-ok when the broker was killed: either outcome is right.
    deleting: set[str] = field(default_factory=set)

    def delete_queue(self, name: str, life: int) -> None:
        del self.queues[name]
        self.bindings = [b for b in self.bindings if b[1] != name]
        self.deleted_queues[name] = life

    def delete_exchange(self, name: str, life: int) -> None:
        del self.exchanges[name]
        self.bindings = [b for b in self.bindings if b[0] != name]
        self.deleted_exchanges[name] = life

    def to_recheck(self, deleted: dict[str, int], life: int, rng: random.Random) -> list[str]:
        """Deleted in the life that just ended, and a sample of the older ones."""
        recent = [name for name, when in deleted.items() if when >= life - 1]
        older = [name for name, when in deleted.items() if when < life - 1]
        return recent + rng.sample(older, min(len(older), 50))

    def routes(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """(exchange, routing key) -> the queues bound with it."""
        found: dict[tuple[str, str], tuple[str, ...]] = {}
        for exchange, queue, key in self.bindings:
            found[(exchange, key)] = (*found.get((exchange, key), ()), queue)
        return found


def round_names(number: int) -> tuple[str, str]:
    return f"crash.round{number}", f"crash.round{number}.x"


# -- one round's clients --------------------------------------------------------------------


class Workload:
    """The clients of one life and the kill; every client thread logs what it saw."""

    def __init__(
        self,
        broker: BrokerProcess,
        plan: Plan,
        consumed: list[str],
        seed: int,
        doomed: int | None,
    ) -> None:
        self.broker = broker
        self.plan = plan
        self.consumed = consumed
        self.doomed = doomed  # the round whose queue and exchange get deleted
        self.seed = f"{seed}/{plan.number}"
        self.stop = threading.Event()
        self.killed = threading.Event()
        self.killed_by = ""
        self.died_on_its_own = False
        self.events: dict[str, list[tuple[Any, ...]]] = {}
        self._lock = threading.Lock()
        self._confirms = 0

    def log(self, who: str) -> list[tuple[Any, ...]]:
        return self.events.setdefault(who, [])

    def kill(self, why: str) -> None:
        with self._lock:
            if self.killed.is_set():
                return
            self.died_on_its_own = self.broker.exited
            self.broker.send_kill()
            self.killed_by = why
            self.killed.set()

    def confirmed_one(self) -> None:
        with self._lock:
            self._confirms += 1
            nth = self._confirms
        if self.plan.trigger == "confirm" and nth == self.plan.nth:
            self.kill(f"confirm #{nth}")


def publisher(work: Workload, index: int) -> None:
    events = work.log(f"publisher {index}")
    rng = random.Random(f"{work.seed}/publisher{index}")
    try:
        connection = work.broker.connect()
    except CLIENT_GONE:
        return
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for n in itertools.count():
            if work.stop.is_set():
                return
            msg_id = f"r{work.plan.number}.p{index}-{n}"
            queues: tuple[str, ...]
            if rng.random() < 0.5:
                exchange, key, queues = FANOUT, "", (A, B)
            else:
                exchange, key, queues = "", DIRECT, (DIRECT,)
            properties, body = make_message(msg_id)
            events.append(("publish", msg_id, queues))
            try:
                channel.basic_publish(exchange, key, body, properties, mandatory=True)
            except UnroutableError:
                events.append(("unroutable", msg_id))
                continue
            except NackError:
                events.append(("nacked", msg_id))
                continue
            events.append(("confirm", msg_id))
            work.confirmed_one()
    except CLIENT_GONE:
        pass
    except Exception as exc:  # a bug in this test, not in the broker
        events.append(("client error", f"publisher {index}: {exc!r}"))
    finally:
        close_quietly(connection)


class Consumer:
    """Consumes on one channel with manual acks: acks most, holds some, requeues a few."""

    def __init__(self, work: Workload) -> None:
        self.work = work
        self.events = work.log("consumer")
        self.rng = random.Random(f"{work.seed}/consumer")
        self.held: deque[tuple[int, str, str]] = deque()
        self.deliveries = 0
        self.unfenced = 0
        self.fences = 0

    def run(self) -> None:
        try:
            connection = self.work.broker.connect()
        except CLIENT_GONE:
            return
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=PREFETCH)
            channel.confirm_delivery()
            for queue in self.work.consumed:
                channel.basic_consume(queue, self.on_message, consumer_tag=f"crash:{queue}")
            while not self.work.stop.is_set():
                connection.process_data_events(time_limit=0.05)
                if self.unfenced >= FENCE_EVERY:
                    self.fence(channel)
        except CLIENT_GONE:
            pass
        except Exception as exc:
            self.events.append(("client error", f"consumer: {exc!r}"))
        finally:
            close_quietly(connection)

    def on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        queue = method.consumer_tag.removeprefix("crash:")
        msg_id, problems = inspect_message(properties, body)
        self.events.append(("deliver", queue, msg_id, method.redelivered, problems))
        self.deliveries += 1
        if self.work.plan.trigger == "delivery" and self.deliveries == self.work.plan.nth:
            self.work.kill(f"delivery #{self.deliveries}")
            return
        draw = self.rng.random()
        if draw < NACK:
            self.events.append(("requeue", queue, msg_id))
            channel.basic_nack(method.delivery_tag, requeue=True)
        elif draw < NACK + ACK:
            self.ack(channel, method.delivery_tag, queue, msg_id)
        else:
            self.held.append((method.delivery_tag, queue, msg_id))
            if len(self.held) > HOLD:
                self.ack(channel, *self.held.popleft())

    def ack(self, channel: Any, tag: int, queue: str, msg_id: str) -> None:
        self.events.append(("ack", queue, msg_id))
        channel.basic_ack(tag)
        self.unfenced += 1

    def fence(self, channel: Any) -> None:
        msg_id = f"r{self.work.plan.number}.fence-{self.fences}"
        self.fences += 1
        properties, body = make_message(msg_id)
        self.events.append(("publish", msg_id, (FENCE,)))
        channel.basic_publish("", FENCE, body, properties, mandatory=True)
        self.events.append(("confirm", msg_id))
        self.events.append(("fence",))
        self.unfenced = 0


def churner(work: Workload) -> None:
    """Declares durable queues, exchanges and bindings and deletes most of them again, so
    that the definitions journal grows and gets rewritten; a kill lands among them."""
    events = work.log("churn")
    try:
        connection = work.broker.connect()
    except CLIENT_GONE:
        return
    try:
        channel = connection.channel()
        for n in itertools.count():
            if work.stop.is_set():
                return
            queue = f"crash.churn.r{work.plan.number}-{n}"
            exchange = f"{queue}.x"
            arguments = {"x-churn": n, "x-note": "churn"}
            channel.queue_declare(queue, durable=True, arguments=arguments)
            events.append(("queue", queue, arguments))
            channel.exchange_declare(exchange, "topic", durable=True)
            events.append(("exchange", exchange, "topic"))
            channel.queue_bind(queue, exchange, "churn.#")
            events.append(("binding", exchange, queue, "churn.#"))
            if n % CHURN_KEEP:
                events.append(("deleting", exchange))  # a kill now may or may not undo it
                channel.exchange_delete(exchange)
                events.append(("exchange deleted", exchange))
                events.append(("deleting", queue))
                channel.queue_delete(queue)
                events.append(("queue deleted", queue))
    except CLIENT_GONE:
        pass
    except Exception as exc:
        events.append(("client error", f"churn: {exc!r}"))
    finally:
        close_quietly(connection)


# -- clients of the feature crash tests (test_kill9_features.py) ----------------------------

# (exchange, routing key, message id, properties, body, note for the model); None: stop.
Outgoing = tuple[str, str, str, pika.BasicProperties, bytes, Any]


def plan_feature_round(seed: int, number: int, triggers: tuple[str, ...]) -> Plan:
    rng = random.Random(f"{seed}/{number}/features")
    trigger = triggers[number] if number < len(triggers) else rng.choice(triggers)
    if number < 2:  # the short run covers both aftermaths
        aftermath = ("plain", "recovery-kill")[number]
    else:
        aftermath = rng.choices(("plain", "recovery-kill"), weights=(3, 1))[0]
    return Plan(
        number,
        trigger,
        delay=rng.uniform(0.05, 1.5),
        nth=int(2 ** rng.uniform(0, 9)),
        aftermath=aftermath,
    )


def publish_until_stopped(
    work: Workload, who: str, outgoing: Callable[[int], Outgoing | None]
) -> None:
    """Publishes with confirms and mandatory=true until the broker dies, the round stops
    or ``outgoing`` has nothing more; logs publish (before sending), confirm, nacked and
    unroutable events."""
    events = work.log(who)
    try:
        connection = work.broker.connect()
    except CLIENT_GONE:
        return
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for n in itertools.count():
            if work.stop.is_set():
                return
            message = outgoing(n)
            if message is None:
                return
            exchange, key, msg_id, properties, body, note = message
            events.append(("publish", msg_id, note))
            try:
                channel.basic_publish(exchange, key, body, properties, mandatory=True)
            except UnroutableError:
                events.append(("unroutable", msg_id))
                continue
            except NackError:
                events.append(("nacked", msg_id))
                continue
            events.append(("confirm", msg_id))
            work.confirmed_one()
    except CLIENT_GONE:
        pass
    except Exception as exc:  # a bug in this test, not in the broker
        events.append(("client error", f"{who}: {exc!r}"))
    finally:
        close_quietly(connection)


def consume_until_stopped(
    work: Workload, queue: str, on_message: Callable[[Any, Any, Any, bytes], None]
) -> None:
    """Consumes ``queue`` with manual acks; ``on_message`` settles each delivery."""
    try:
        connection = work.broker.connect()
    except CLIENT_GONE:
        return
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=PREFETCH)
        channel.basic_consume(queue, on_message)
        while not work.stop.is_set():
            connection.process_data_events(time_limit=0.05)
    except CLIENT_GONE:
        pass
    except Exception as exc:
        work.log("consumer").append(("client error", f"consumer: {exc!r}"))
    finally:
        close_quietly(connection)
