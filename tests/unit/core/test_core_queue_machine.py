"""One queue and one channel driven by random operation sequences, checked against a model.

The model keeps, for every message published (message ``i`` has body ``b"i"`` and is
the queue's ``i``-th entry), where it is: waiting in the queue, delivered and unacked
under a delivery tag, or gone (acked, dropped, or delivered without ack).  Every
delivery the sink sees must take the first waiting message in publish order, carry
the next delivery tag, say redelivered exactly when the message was delivered before,
and respect prefetch; after every step, the queue and the channel must hold what the
model holds, and nothing may wait while a consumer could take it.
"""

from __future__ import annotations

from dataclasses import dataclass

from core_support import RecordingSink, make_broker, publish
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from postoffice.core import Channel, Queue


@dataclass
class ModelConsumer:
    tag: str
    no_ack: bool
    prefetch: int
    unacked: int = 0


@dataclass
class Outstanding:
    message: int
    consumer: str | None  # None for basic.get


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.broker = make_broker()
        self.connection = self.broker.connect("/", "guest")
        self.channel_number = 0
        self._open_channel()
        queue = self.channel.declare_queue("q")
        assert queue is not None
        self.queue: Queue = queue
        self.published = 0
        self.waiting: set[int] = set()
        self.delivered_before: set[int] = set()
        self.gone: set[int] = set()
        self.consumer_names = 0

    def _open_channel(self) -> None:
        self.channel_number += 1
        self.sink = RecordingSink()
        self.channel: Channel = self.connection.open_channel(self.channel_number, self.sink)
        self.seen_events = 0
        self.next_tag = 1
        self.outstanding: dict[int, Outstanding] = {}
        self.consumers: dict[str, ModelConsumer] = {}
        self.prefetch = 0
        self.global_prefetch = 0
        self.flow_active = True
        self.connection.set_writable(True)
        self.writable = True

    # -- the model's view of readiness --------------------------------------------------

    def _consumer_unacked_total(self) -> int:
        return sum(1 for o in self.outstanding.values() if o.consumer is not None)

    def _ready(self, consumer: ModelConsumer) -> bool:
        if not (self.flow_active and self.writable):
            return False
        if consumer.no_ack:
            return True
        if consumer.prefetch and consumer.unacked >= consumer.prefetch:
            return False
        return not self.global_prefetch or self._consumer_unacked_total() < self.global_prefetch

    # -- checking what the channel sent -----------------------------------------------

    def _absorb_events(self) -> None:
        events = self.sink.events[self.seen_events :]
        self.seen_events = len(self.sink.events)
        for event in events:
            assert event[0] == "deliver", event
            delivery = event[1]
            message = int(delivery.body)
            assert self.waiting, f"delivered {message} while nothing waits"
            assert message == min(self.waiting), (message, sorted(self.waiting))
            assert delivery.delivery_tag == self.next_tag
            assert delivery.redelivered == (message in self.delivered_before)
            consumer = self.consumers.get(delivery.consumer_tag)
            assert consumer is not None, f"delivery to unknown consumer {delivery.consumer_tag}"
            assert self._ready(consumer), f"delivery to a consumer that was not ready: {consumer}"
            self.next_tag += 1
            self.waiting.discard(message)
            self.delivered_before.add(message)
            if consumer.no_ack:
                self.gone.add(message)
            else:
                consumer.unacked += 1
                self.outstanding[delivery.delivery_tag] = Outstanding(message, consumer.tag)

    def _settle(self, tags: list[int], requeue: bool) -> None:
        for tag in tags:
            record = self.outstanding.pop(tag)
            if record.consumer is not None and record.consumer in self.consumers:
                self.consumers[record.consumer].unacked -= 1
            if requeue:
                self.waiting.add(record.message)
            else:
                self.gone.add(record.message)

    def _pick(self, index: int) -> int:
        tags = sorted(self.outstanding)
        return tags[index % len(tags)]

    # -- rules --------------------------------------------------------------------------

    @rule(count=st.integers(1, 3))
    def publish(self, count: int) -> None:
        for _ in range(count):
            message = self.published
            self.published += 1
            self.waiting.add(message)
            publish(self.channel, "", "q", str(message).encode())
            self._absorb_events()

    @rule(prefetch=st.integers(0, 3), global_=st.booleans())
    def qos(self, prefetch: int, global_: bool) -> None:
        self.channel.qos(0, prefetch, global_)
        if global_:
            self.global_prefetch = prefetch
        else:
            self.prefetch = prefetch
            self.global_prefetch = 0  # as RabbitMQ: a per-consumer limit lifts the global one
        self._absorb_events()

    @precondition(lambda self: len(self.consumers) < 3)
    @rule(no_ack=st.booleans())
    def consume(self, no_ack: bool) -> None:
        tag = f"c{self.consumer_names}"
        self.consumer_names += 1
        self.channel.consume("q", tag, no_ack=no_ack)
        self.consumers[tag] = ModelConsumer(tag, no_ack, self.prefetch)
        self.channel.start(tag)
        self._absorb_events()

    @precondition(lambda self: bool(self.consumers))
    @rule(index=st.integers(0, 10))
    def cancel(self, index: int) -> None:
        tag = sorted(self.consumers)[index % len(self.consumers)]
        self.channel.cancel(tag)
        del self.consumers[tag]
        self._absorb_events()

    @precondition(lambda self: bool(self.outstanding))
    @rule(index=st.integers(0, 10), multiple=st.booleans())
    def ack(self, index: int, multiple: bool) -> None:
        tag = self._pick(index)
        self.channel.ack(tag, multiple)
        self._settle(
            [t for t in sorted(self.outstanding) if t == tag or (multiple and t < tag)], False
        )
        self._absorb_events()

    @precondition(lambda self: bool(self.outstanding))
    @rule(index=st.integers(0, 10), multiple=st.booleans(), requeue=st.booleans())
    def nack(self, index: int, multiple: bool, requeue: bool) -> None:
        tag = self._pick(index)
        self.channel.nack(tag, multiple, requeue)
        tags = [t for t in sorted(self.outstanding) if t == tag or (multiple and t < tag)]
        self._settle(tags, requeue)
        self._absorb_events()

    @precondition(lambda self: bool(self.outstanding))
    @rule(index=st.integers(0, 10), requeue=st.booleans())
    def reject(self, index: int, requeue: bool) -> None:
        tag = self._pick(index)
        self.channel.reject(tag, requeue)
        self._settle([tag], requeue)
        self._absorb_events()

    @rule()
    def ack_all(self) -> None:
        self.channel.ack(0, True)
        self._settle(sorted(self.outstanding), False)
        self._absorb_events()

    @rule(no_ack=st.booleans())
    def get(self, no_ack: bool) -> None:
        result = self.channel.get("q", no_ack)
        if not self.waiting:
            assert result is None
            return
        assert result is not None
        tag, entry, _, left = result
        message = int(entry.message.body)
        assert message == min(self.waiting)
        assert tag == self.next_tag
        assert entry.redelivered == (message in self.delivered_before)
        assert left == len(self.waiting) - 1
        self.next_tag += 1
        self.waiting.discard(message)
        self.delivered_before.add(message)
        if no_ack:
            self.gone.add(message)
        else:
            self.outstanding[tag] = Outstanding(message, None)
        self._absorb_events()

    @rule()
    def recover(self) -> None:
        self.channel.recover(True)
        self._settle(sorted(self.outstanding), True)
        self._absorb_events()

    @rule(active=st.booleans())
    def flow(self, active: bool) -> None:
        self.channel.flow(active)
        self.flow_active = active
        self._absorb_events()

    @rule(writable=st.booleans())
    def set_writable(self, writable: bool) -> None:
        self.connection.set_writable(writable)
        self.writable = writable
        self._absorb_events()

    @rule()
    def close_channel(self) -> None:
        old = self.outstanding
        self.connection.close_channel(self.channel_number)
        self._open_channel()
        for record in old.values():
            self.waiting.add(record.message)
        self._absorb_events()

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def queue_holds_the_waiting_messages_in_order(self) -> None:
        bodies = [int(entry.message.body) for entry in self.queue.messages]
        assert bodies == sorted(self.waiting)
        seqs = [entry.seq for entry in self.queue.messages]
        assert seqs == bodies

    @invariant()
    def channel_holds_the_outstanding_deliveries(self) -> None:
        unacked = {tag: int(record[0].message.body) for tag, record in self.channel.unacked.items()}
        assert unacked == {tag: o.message for tag, o in self.outstanding.items()}

    @invariant()
    def every_message_is_in_exactly_one_place(self) -> None:
        places = [self.waiting, {o.message for o in self.outstanding.values()}, self.gone]
        assert sum(len(p) for p in places) == self.published
        assert set().union(*places) == set(range(self.published))

    @invariant()
    def nothing_waits_while_a_consumer_could_take_it(self) -> None:
        if self.waiting:
            assert not any(self._ready(c) for c in self.consumers.values())

    @invariant()
    def queue_knows_the_consumers(self) -> None:
        assert sorted(c.tag for c in self.queue.consumers) == sorted(self.consumers)


QueueMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestQueueMachine = QueueMachine.TestCase
