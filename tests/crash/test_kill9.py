"""Crash tests: the broker as a process, killed with SIGKILL at random moments.

Each round is one life of the broker on a data directory that every round shares, so
state accumulates as in a real broker's life (segments fill, roll, get compacted and
deleted; definitions pile up in the journal; a backlog is carried from life to life).
In a round, three publisher connections publish persistent messages with confirms to
durable queues (through a fanout exchange to two queues, or straight to a third), a
consumer connection consumes with manual acks (acking most, holding some unacked,
requeueing a few) from all of them but one of the fanout pair, which builds a backlog
of bodies its twin has acked, another connection declares and deletes durable queues,
exchanges and bindings (the journal of definitions grows and is rewritten), and the
broker is killed:

- ``timer``: after ``random.uniform(0.02, 2.0)`` s, right after a fresh durable queue,
  exchange and binding were declared (declare-ok / bind-ok received) and a few
  messages were confirmed through them;
- ``delivery``: from the consumer's thread the moment its n-th delivery arrives;
- ``confirm``: from a publisher's thread the moment the n-th confirm arrives.

Before the next start the data directory may be left as the kill left it (``plain``),
get a torn tail appended to its newest segment or journal, or a segment torn at
creation (``torn-tail``: what a crash during a write that was not yet confirmed
leaves), or the broker may be killed again during its start-up (``recovery-kill``).
Then the broker starts again and a checker drains every queue with basic.get.

What the checker holds the broker to, per message and per queue it was routed to:

1. Every confirmed message that was not acked is there, once.
2. Nothing is corrupted: the body is the one published (it carries its id, and its
   SHA-256 in a header), and every property is as published.
3. No message appears that was never published, or in a queue it was not routed to.
4. A message that any consumer saw before (in any earlier life, or earlier in this one)
   comes back with redelivered=True, whether it was left unacked or acked.
5. An ack may be lost in a crash (acks are not confirmed to the client, as in RabbitMQ),
   so an acked message may come back, as redelivered (4).  But an ack is durable once
   a publish sent after it on the same channel is confirmed: the flush that made the
   publish durable wrote the ack before it (group commit, docs/storage.md).  The
   consumer sends such a fence publish every few acks; an acked-and-fenced message
   must never come back.  This is the client-visible form of "messages acked before
   the crash do not come back".
6. Within one life nothing is delivered twice while unacked, or again after its ack.
7. A message that was missing at one restart stays missing (no resurrection).
8. Durable queues, exchanges and bindings that were declared (reply received) exist
   after the restart, with their arguments (a non-passive re-declare with the same
   arguments succeeds), including those declared just before the kill; bindings are
   probed by publishing through them with mandatory=true.  Queues and exchanges whose
   delete-ok was received stay deleted (some are deleted by the checker, with a
   backlog in them; some just before a kill).
9. After a restart each queue holds its messages in their place in line: the messages
   one channel published come in the order they were published (requeued or not).
10. The broker's log has no Traceback and no CRITICAL line; a torn tail is reported in
   the log, naming the file.  The broker never exits on its own, and starts after
   every crash.

No timing is asserted; every wait is bounded.  ``CRASH_ROUNDS`` (default 3) sets the
number of rounds, ``CRASH_SEED`` the seed that draws each round's plan (printed on
failure; thread scheduling still varies from run to run), ``CRASH_LOG_LEVEL`` the
broker's log level (default warning; info also shows compactions in the summary).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import signal
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from crashclients import (
    BASE_QUEUES,
    FANOUT,
    FENCE,
    PUBLISHERS,
    A,
    B,
    Consumer,
    Definitions,
    Plan,
    Workload,
    churner,
    plan_round,
    publisher,
    round_names,
)
from crashlib import (
    CLIENT_GONE,
    BrokerDied,
    BrokerProcess,
    Brokers,
    Model,
    close_quietly,
    error_lines,
    inspect_message,
    log_problems,
    make_message,
    place_in_line,
)
from pika.exceptions import (
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    UnroutableError,
)

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "3"))
SEED = int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(2**32))

ROUND_MESSAGES = 12  # confirmed into the queue declared just before the kill
EVENT_KILL_DEADLINE = 5.0  # a kill waiting for an event falls back to a timer
CHECK_ACK_FRACTION = 0.75  # of what the checker drains; the rest goes back, delivered
JOIN_TIMEOUT = 30.0


# -- the run ----------------------------------------------------------------------------------


class CrashRun:
    """Lives of one broker on one data directory, and the model of what it owes."""

    def __init__(self, root: Path, seed: int, brokers: Brokers) -> None:
        self.brokers = brokers
        self.root = root
        self.data_dir = root / "data"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        self.seed = seed
        self.model = Model()
        self.defs = Definitions()
        self.plans: list[str] = []
        self.error_lines = 0
        self.compactions = 0  # seen only with CRASH_LOG_LEVEL=info
        self._expect_in_log: list[str] = []

    # -- lives --

    def start(self, name: str) -> BrokerProcess:
        try:
            return self.brokers.start(self.data_dir, self.logs / f"{name}.log")
        except BrokerDied as exc:
            self.model.violation("DID NOT START", str(exc))
            raise

    def end(self, broker: BrokerProcess, code: int, expected: int, what: str) -> None:
        if code != expected:
            self.model.violation("EXIT CODE", f"{what}: exit code {code}, expected {expected}")
        text = broker.log_text()
        for line in log_problems(text):
            self.model.violation("LOG", f"{broker.log_path.name}: {line}")
        self.error_lines += len(error_lines(text))
        self.compactions += text.count("compacted ")

    def check_expected_log(self, broker: BrokerProcess) -> None:
        errors = "\n".join(error_lines(broker.log_text()))
        for name in self._expect_in_log:
            if name not in errors:
                self.model.violation(
                    "TORN TAIL NOT REPORTED", f"no ERROR line names {name} in {broker.log_path}"
                )
        self._expect_in_log.clear()

    def go(self, rounds: int) -> None:
        broker = self.start("life000")
        self.declare_base(broker)
        for number in range(rounds):
            plan = plan_round(self.seed, number)
            self.plans.append(str(plan))
            self.round(broker, plan)
            self.aftermath(plan)
            self.model.new_life()
            self.plans[-1] += f"; restart on {disk_usage(self.data_dir)}"
            broker = self.start(f"life{self.model.life:03d}")
            self.check_expected_log(broker)
            self.check(broker, CHECK_ACK_FRACTION if number + 1 < rounds else 1.0, number)
        self.end(broker, broker.terminate(), 0, "SIGTERM after the last round")

    def round(self, broker: BrokerProcess, plan: Plan) -> None:
        doomed = self.doomed(plan)
        # crash.b is left to the checker: a backlog of confirmed messages whose bodies
        # crash.a shares and acks.  So is the queue deleted in this round.
        left_alone = (B, FENCE, round_names(doomed)[0] if doomed is not None else "")
        consumed = [
            queue
            for queue in self.defs.queues
            if queue not in left_alone and not queue.startswith("crash.churn.")
        ]
        work = Workload(broker, plan, consumed, self.seed, doomed)
        if plan.trigger != "timer":
            self.declare_round(work)
        threads = [
            threading.Thread(target=publisher, args=(work, i), name=f"publisher {i}")
            for i in range(PUBLISHERS)
        ]
        threads.append(threading.Thread(target=Consumer(work).run, name="consumer"))
        threads.append(threading.Thread(target=churner, args=(work,), name="churn"))
        for thread in threads:
            thread.start()
        if plan.trigger == "timer":
            work.killed.wait(plan.delay)
            self.declare_round(work)
            work.kill("timer, right after the declarations")
        elif not work.killed.wait(EVENT_KILL_DEADLINE):
            work.kill(f"fallback timer ({plan.trigger} #{plan.nth} did not come)")
        code = broker.wait()
        work.stop.set()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
            assert not thread.is_alive(), f"{thread.name} hung after the kill ({plan})"
        self.plans[-1] += f"; killed by {work.killed_by}"
        if work.died_on_its_own:
            self.model.violation("DIED", f"broker exited by itself ({plan}): {broker.log_tail()}")
        self.end(broker, code, -9 if not work.died_on_its_own else code, "SIGKILL")
        self.apply(work)

    def doomed(self, plan: Plan) -> int | None:
        """The round whose queue and exchange this round deletes, if any.  Even rounds'
        are deleted by the checker after their kill, one in two odd ones here."""
        number = plan.number - 2
        if number % 4 == 1 and round_names(number)[0] in self.defs.queues:
            return number
        return None

    def declare_round(self, work: Workload) -> None:
        """A durable queue, exchange and binding, a few confirmed messages through them,
        and the deletion of an older round's queue and exchange."""
        queue, exchange = round_names(work.plan.number)
        events = work.log("controller")
        connection = work.broker.connect()
        try:
            channel = connection.channel()
            channel.queue_declare(queue, durable=True, arguments={"x-crash-round": 1})
            events.append(("queue", queue, {"x-crash-round": 1}))
            channel.exchange_declare(exchange, "direct", durable=True)
            events.append(("exchange", exchange, "direct"))
            channel.queue_bind(queue, exchange, "k")
            events.append(("binding", exchange, queue, "k"))
            channel.confirm_delivery()
            for n in range(ROUND_MESSAGES):
                msg_id = f"r{work.plan.number}.c-{n}"
                properties, body = make_message(msg_id)
                events.append(("publish", msg_id, (queue,)))
                channel.basic_publish(exchange, "k", body, properties, mandatory=True)
                events.append(("confirm", msg_id))
            if work.doomed is not None:
                doomed_queue, doomed_exchange = round_names(work.doomed)
                channel.queue_delete(doomed_queue)
                channel.exchange_delete(doomed_exchange)
                events.append(("deleted", work.doomed))
        except CLIENT_GONE as exc:
            if not work.killed.is_set():
                self.model.violation("DIED", f"declaring {queue}: {exc!r}")
        finally:
            close_quietly(connection)

    def apply(self, work: Workload) -> None:
        """What the clients saw, into the model: publishes first, then the consumer."""
        model, defs = self.model, self.defs
        for who, events in work.events.items():
            for event in events:
                kind = event[0]
                if kind == "queue":
                    defs.queues[event[1]] = event[2]
                    model.add_queue(event[1])
                elif kind == "exchange":
                    defs.exchanges[event[1]] = event[2]
                elif kind == "binding":
                    defs.bindings.append(event[1:])
                elif kind == "deleted":
                    self.forget_round(event[1])
                elif kind == "deleting":
                    defs.deleting.add(event[1])
                elif kind == "queue deleted":
                    defs.deleting.discard(event[1])
                    defs.delete_queue(event[1], model.life)
                    model.drop_queue(event[1])
                elif kind == "exchange deleted":
                    defs.deleting.discard(event[1])
                    defs.delete_exchange(event[1], model.life)
                elif kind == "publish":
                    model.published(event[1], event[2])
                elif kind == "confirm":
                    model.confirmed(event[1])
                elif kind == "unroutable":
                    model.violation("UNROUTABLE", f"{event[1]} ({who}): a binding is missing")
                elif kind == "nacked":
                    model.stats["nacked"] += 1
                elif kind == "client error":
                    model.violation("TEST CLIENT ERROR", event[1])
        for event in work.events.get("consumer", []):
            kind = event[0]
            if kind == "deliver":
                _, queue, msg_id, redelivered, problems = event
                model.delivered(queue, msg_id, redelivered, problems, who="consumer")
            elif kind == "ack":
                model.acked(event[1], event[2])
            elif kind == "requeue":
                model.requeued(event[1], event[2])
            elif kind == "fence":
                model.fenced()

    # -- between lives --

    def aftermath(self, plan: Plan) -> None:
        rng = random.Random(f"{self.seed}/{plan.number}/aftermath")
        if plan.aftermath == "torn-tail":
            what, damaged = tear(self.data_dir, rng)
            self.plans[-1] += f"; {what}"
            if damaged:
                self._expect_in_log.append(damaged)
        elif plan.aftermath == "recovery-kill":
            for attempt in range(rng.randint(1, 2)):
                broker = self.brokers.spawn(
                    self.data_dir, self.logs / f"life{self.model.life:03d}-start{attempt}.log"
                )
                delay = rng.uniform(0.05, 0.8)
                time.sleep(delay)
                died = broker.exited
                code = broker.kill()
                self.plans[-1] += f"; killed at start-up after {delay:.3f} s"
                if died and "address already in use" in broker.log_text().lower():
                    continue  # someone took the free port: nothing to learn from this start
                self.end(broker, code, -9, "killed during start-up")

    # -- the checks after a restart --

    def declare_base(self, broker: BrokerProcess) -> None:
        connection = broker.connect()
        try:
            channel = connection.channel()
            channel.exchange_declare(FANOUT, "fanout", durable=True)
            self.defs.exchanges[FANOUT] = "fanout"
            for queue, arguments in BASE_QUEUES.items():
                channel.queue_declare(queue, durable=True, arguments=arguments)
                self.defs.queues[queue] = arguments
                self.model.add_queue(queue)
            for queue in (A, B):
                channel.queue_bind(queue, FANOUT)
                self.defs.bindings.append((FANOUT, queue, ""))
        finally:
            close_quietly(connection)

    def check(self, broker: BrokerProcess, ack_fraction: float, last_round: int) -> None:
        rng = random.Random(f"{self.seed}/{last_round}/check")
        connection = broker.connect()
        try:
            self.check_definitions(connection)
            channel = connection.channel()
            channel.confirm_delivery()
            self.probe_bindings(channel)
            drained = {queue: self.drain(channel, queue) for queue in list(self.defs.queues)}
            self.settle(channel, drained, ack_fraction, rng)
            if last_round % 2 == 0:
                self.delete_round(connection, last_round)
        except CLIENT_GONE as exc:
            self.model.violation("DIED", f"during the check after a restart: {exc!r}")
            raise
        finally:
            close_quietly(connection)

    def check_definitions(self, connection: pika.BlockingConnection) -> None:
        """Every durable definition is there with its arguments; deleted ones stay deleted.
        What is missing is reported, then declared again so that the run goes on."""
        model, defs = self.model, self.defs
        for name in defs.deleting:  # finish what the kill interrupted
            if name in defs.queues:
                refused(connection, lambda ch, q=name: ch.queue_delete(q))
                defs.delete_queue(name, model.life)
                model.drop_queue(name)
            elif name in defs.exchanges:
                refused(connection, lambda ch, x=name: ch.exchange_delete(x))
                defs.delete_exchange(name, model.life)
        defs.deleting.clear()
        lost: set[str] = set()
        for exchange, kind in defs.exchanges.items():
            if refused(connection, lambda ch, x=exchange: ch.exchange_declare(x, passive=True)):
                model.violation("DEFINITION LOST", f"exchange {exchange}")
                lost.add(exchange)
            code = refused(
                connection, lambda ch, x=exchange, k=kind: ch.exchange_declare(x, k, durable=True)
            )
            if code:
                model.violation("DEFINITION CHANGED", f"exchange {exchange} ({code})")
        for queue, arguments in defs.queues.items():
            if refused(connection, lambda ch, q=queue: ch.queue_declare(q, passive=True)):
                model.violation("DEFINITION LOST", f"queue {queue}")
                lost.add(queue)
                model.drop_queue(queue)
                model.add_queue(queue)
            code = refused(
                connection,
                lambda ch, q=queue, a=arguments: ch.queue_declare(q, durable=True, arguments=a),
            )
            if code:
                model.violation("DEFINITION CHANGED", f"queue {queue} ({code} on re-declare)")
        for exchange, queue, key in defs.bindings:
            if exchange in lost or queue in lost:
                refused(connection, lambda ch, x=exchange, q=queue, k=key: ch.queue_bind(q, x, k))
        rng = random.Random(f"{self.seed}/{model.life}/deleted")
        for queue in defs.to_recheck(defs.deleted_queues, model.life, rng):
            if not refused(connection, lambda ch, q=queue: ch.queue_declare(q, passive=True)):
                model.violation("RESURRECTED", f"queue {queue} after its delete-ok")
                refused(connection, lambda ch, q=queue: ch.queue_delete(q))
        for exchange in defs.to_recheck(defs.deleted_exchanges, model.life, rng):
            if not refused(connection, lambda ch, x=exchange: ch.exchange_declare(x, passive=True)):
                model.violation("RESURRECTED", f"exchange {exchange} after its delete-ok")
                refused(connection, lambda ch, x=exchange: ch.exchange_delete(x))

    def probe_bindings(self, channel: Any) -> None:
        for n, ((exchange, key), queues) in enumerate(self.defs.routes().items()):
            if exchange not in self.defs.exchanges:
                continue
            msg_id = f"l{self.model.life}.probe-{n}"
            properties, body = make_message(msg_id)
            self.model.published(msg_id, tuple(q for q in queues if q in self.defs.queues))
            try:
                channel.basic_publish(exchange, key, body, properties, mandatory=True)
            except UnroutableError:
                self.model.violation("BINDING LOST", f"{exchange} -> {queues} (key {key!r})")
                continue
            self.model.confirmed(msg_id)

    def drain(self, channel: Any, queue: str) -> list[tuple[int, str, bool]]:
        """Everything the queue holds, unacked: (delivery tag, id, known to the model)."""
        got: list[tuple[int, str, bool]] = []
        seen: set[str] = set()
        ranks: dict[str, tuple[tuple[int, int], str]] = {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            msg_id, problems = inspect_message(properties, body)
            known = self.model.delivered(
                queue, msg_id, method.redelivered, problems, who="restart check"
            )
            got.append((method.delivery_tag, msg_id, known))
            seen.add(msg_id)
            placed = place_in_line(msg_id)
            if placed is not None:
                stream, rank = placed
                before = ranks.get(stream)
                if before is not None and rank < before[0]:
                    self.model.violation("ORDER", f"{queue}: {msg_id} after {before[1]}")
                ranks[stream] = (rank, msg_id)
        else:
            raise AssertionError(f"{queue} not drained in 300 s")
        self.model.drained(queue, seen)
        return got

    def settle(
        self,
        channel: Any,
        drained: dict[str, list[tuple[int, str, bool]]],
        ack_fraction: float,
        rng: random.Random,
    ) -> None:
        """Acks most of what was drained (fenced), gives the rest back by closing."""
        kept: list[tuple[str, str]] = []
        for queue, got in drained.items():
            for tag, msg_id, known in got:
                if not known:
                    channel.basic_ack(tag)
                elif rng.random() < ack_fraction and not (
                    ack_fraction < 1 and pinned(queue, msg_id)
                ):
                    channel.basic_ack(tag)
                    self.model.acked(queue, msg_id)
                else:
                    kept.append((queue, msg_id))
        msg_id = f"l{self.model.life}.fence"
        properties, body = make_message(msg_id)
        self.model.published(msg_id, (FENCE,))
        channel.basic_publish("", FENCE, body, properties, mandatory=True)
        self.model.confirmed(msg_id)
        self.model.fenced()
        channel.close()
        for queue, msg_id in kept:
            self.model.requeued(queue, msg_id)

    def delete_round(self, connection: pika.BlockingConnection, number: int) -> None:
        queue, exchange = round_names(number)
        if queue not in self.defs.queues:
            return
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)
        channel.close()
        self.forget_round(number)

    def forget_round(self, number: int) -> None:
        """Its queue and exchange were deleted (delete-ok received)."""
        queue, exchange = round_names(number)
        self.defs.delete_queue(queue, self.model.life)
        self.defs.delete_exchange(exchange, self.model.life)
        self.model.drop_queue(queue)

    # -- the report --

    def summary(self) -> str:
        stats = self.model.stats
        lines = [
            f"seed {self.seed} (CRASH_SEED), {len(self.plans)} rounds, {self.model.life + 1} lives",
            f"messages: {stats['published']} published, {stats['confirmed']} confirmed, "
            f"{stats['deliveries']} deliveries checked, {stats['checked']} found after "
            f"restarts, {stats['acked']} acked, {stats['nacked']} nacked",
            f"durable queues: {len(self.defs.queues)} kept, "
            f"{len(self.defs.deleted_queues)} deleted",
            f"ERROR lines in broker logs: {self.error_lines}, compactions logged: "
            f"{self.compactions}; logs in {self.logs}",
            *self.plans,
        ]
        return "\n".join(lines)

    def report(self) -> str:
        violations = self.model.violations
        shown = "\n".join(violations[:60])
        more = f"\n... and {len(violations) - 60} more" if len(violations) > 60 else ""
        return f"{len(violations)} violations\n{shown}{more}\n{self.summary()}"


def disk_usage(data_dir: Path) -> str:
    segments = list((data_dir / "messages").glob("*.seg"))
    size = sum(path.stat().st_size for path in segments)
    journal = data_dir / "definitions.log"
    journal_size = journal.stat().st_size if journal.exists() else 0
    return f"{len(segments)} segments, {size / 2**20:.1f} MiB, journal {journal_size // 1024} KiB"


def pinned(queue: str, msg_id: str) -> bool:
    """One in eight messages in crash.b stays until the last check: old segments keep a
    few live messages among many acked ones, which is what compaction is for."""
    return queue == B and zlib.crc32(msg_id.encode()) % 8 == 0


def refused(connection: pika.BlockingConnection, declare: Any) -> int:
    """Runs a method on a fresh channel: 0 if it was accepted, else the reply code."""
    channel = connection.channel()
    try:
        declare(channel)
    except ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    channel.close()
    return 0


def tear(data_dir: Path, rng: random.Random) -> tuple[str, str]:
    """Leaves what a crash in the middle of an unconfirmed write leaves: a torn record
    after the last complete one, or a segment torn at creation (shorter than its header).
    Returns what it did, and the name of the file the broker must report cutting."""
    segments = sorted((data_dir / "messages").glob("*.seg"))
    journal = data_dir / "definitions.log"
    how = rng.choice(("partial frame", "zeros", "garbage", "new segment"))
    if how == "new segment" and segments:
        newest = segments[-1]
        torn = newest.with_name(f"{int(newest.stem) + 1:010d}.seg")
        torn.write_bytes(newest.read_bytes()[: rng.randrange(1, 24)])
        return f"torn new segment {torn.name}", ""
    target = journal if rng.random() < 0.3 or not segments else segments[-1]
    if how == "partial frame":
        length = rng.randrange(16, 4096)
        tail = length.to_bytes(4, "little") + rng.randbytes(4 + rng.randrange(0, length))
    elif how == "zeros":
        tail = bytes(rng.randrange(1, 4096))
    else:
        tail = rng.randbytes(rng.randrange(1, 64))
    with open(target, "ab") as file:
        file.write(tail)
    return f"{how} ({len(tail)} bytes) appended to {target.name}", target.name


# -- the tests ----------------------------------------------------------------------------


@pytest.fixture
def brokers() -> Iterator[Brokers]:
    started = Brokers()
    yield started
    started.close()


@pytest.mark.timeout(120 + 60 * ROUNDS)
def test_kill9_rounds_lose_no_confirmed_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, brokers: Brokers
) -> None:
    caplog.set_level(logging.CRITICAL, logger="pika")  # the 404s of passive declares
    run = CrashRun(tmp_path, SEED, brokers)
    try:
        run.go(ROUNDS)
    except (BrokerDied, AssertionError) as exc:
        raise AssertionError(f"{exc}\n{run.report()}") from exc
    finally:
        print(run.summary())
    assert not run.model.violations, run.report()


def test_sigterm_is_a_clean_shutdown_that_keeps_everything(
    tmp_path: Path, brokers: Brokers
) -> None:
    """SIGTERM: clients get 320 CONNECTION_FORCED, the broker exits 0, and the next start
    has every confirmed message unacked before it, in line, redelivered exactly when it was
    delivered; transient messages and queues are gone."""
    data = tmp_path / "data"
    broker = brokers.start(data, tmp_path / "life0.log")
    publishing, consuming, idle = broker.connect(), broker.connect(), broker.connect()
    channel = publishing.channel()
    channel.queue_declare("clean.q", durable=True)
    channel.queue_declare("clean.transient")
    channel.exchange_declare("clean.x", "topic", durable=True)
    channel.queue_bind("clean.q", "clean.x", "clean.#")
    channel.confirm_delivery()
    ids = [f"clean-{n}" for n in range(300)]
    for msg_id in ids:
        properties, body = make_message(msg_id)
        channel.basic_publish("clean.x", "clean.msg", body, properties, mandatory=True)
    channel.basic_publish("", "clean.q", b"transient", pika.BasicProperties(delivery_mode=1))

    deliveries = consume_some(consuming, "clean.q", 50)
    assert [msg_id for msg_id, _, _ in deliveries] == ids[:50]
    consumer_channel = deliveries[0][2]
    for _, tag, _ in deliveries[:20]:
        consumer_channel.basic_ack(tag)
    consumer_channel.queue_declare("clean.q", passive=True)  # the acks are processed

    broker.process.send_signal(signal.SIGTERM)
    for connection in (publishing, consuming, idle):
        code, text = closed_by_broker(connection)
        assert (code, text.split(" ")[0]) == (320, "CONNECTION_FORCED"), text
    assert broker.wait() == 0
    assert log_problems(broker.log_text()) == []
    assert error_lines(broker.log_text()) == []

    broker = brokers.start(data, tmp_path / "life1.log")
    connection = broker.connect()
    try:
        channel = connection.channel()
        got = []
        while True:
            method, properties, body = channel.basic_get("clean.q", auto_ack=True)
            if method is None:
                break
            msg_id, problems = inspect_message(properties, body)
            assert problems == [], (msg_id, problems)
            got.append((msg_id, method.redelivered))
        assert got == [(msg_id, n < 30) for n, msg_id in enumerate(ids[20:])]
        assert refused(connection, lambda ch: ch.queue_declare("clean.transient", passive=True))
        channel.confirm_delivery()
        properties, body = make_message("clean-probe")
        channel.basic_publish("clean.x", "clean.probe", body, properties, mandatory=True)
    finally:
        close_quietly(connection)
    assert broker.terminate() == 0
    assert log_problems(broker.log_text()) == []
    assert error_lines(broker.log_text()) == []


Delivery = tuple[str, int, Any]  # message id, delivery tag, channel


def consume_some(connection: pika.BlockingConnection, queue: str, count: int) -> list[Delivery]:
    """Consumes ``count`` deliveries with prefetch ``count``, then cancels: (id, tag, channel)."""
    channel = connection.channel()
    channel.basic_qos(prefetch_count=count)
    got: list[Delivery] = []
    channel.basic_consume(
        queue,
        lambda ch, method, properties, body: got.append(
            (inspect_message(properties, body)[0], method.delivery_tag, ch)
        ),
        consumer_tag="some",
    )
    deadline = time.monotonic() + 30
    while len(got) < count and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.1)
    channel.basic_cancel("some")
    assert len(got) == count, f"{len(got)} deliveries of {count}"
    return got


def closed_by_broker(connection: pika.BlockingConnection) -> tuple[int, str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            connection.process_data_events(time_limit=0.1)
        except ConnectionClosedByBroker as exc:
            return exc.reply_code, exc.reply_text
    raise AssertionError("the broker did not close the connection within 30 s")


def test_second_broker_on_the_same_data_dir_refuses_to_start(
    tmp_path: Path, brokers: Brokers
) -> None:
    data = tmp_path / "data"
    first = brokers.start(data, tmp_path / "first.log")
    connection = first.connect()
    try:
        channel = connection.channel()
        channel.queue_declare("lock.q", durable=True)
        channel.confirm_delivery()
        properties, body = make_message("lock-1")
        channel.basic_publish("", "lock.q", body, properties, mandatory=True)
        before = snapshot(data)

        second = brokers.spawn(data, tmp_path / "second.log")
        code = second.wait(60)
        said = second.log_text()
        assert code != 0, said
        assert str(data) in said, said
        assert re.search(r"in use|locked", said, re.IGNORECASE), said
        assert "Traceback" not in said, said
        assert snapshot(data) == before, "the refused broker changed the data directory"

        method, properties, body = channel.basic_get("lock.q", auto_ack=True)
        assert method is not None, "the first broker lost its message"
        assert inspect_message(properties, body) == ("lock-1", [])
    finally:
        close_quietly(connection)
    assert first.terminate() == 0
    assert log_problems(first.log_text()) == []


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
