"""Paging: deep in a durable queue, and after a restart, persistent messages wait on disk.

Only a small entry stays in memory; the message is read back from the store when its
turn comes, so a backlog larger than RAM does not live in RAM.
"""

from __future__ import annotations

from core_support import FakeProperties, RecordingSink, consume, edit_properties

from postoffice.core import Broker, Channel
from postoffice.core.queue import PAGE_OUT_DEPTH
from postoffice.store import MemoryStore

PERSISTENT = FakeProperties(delivery_mode=2)


def read_properties(raw: bytes) -> FakeProperties:
    return FakeProperties(delivery_mode=2, raw=raw)


def start(store: MemoryStore) -> tuple[Broker, Channel, RecordingSink]:
    broker = Broker(store=store, edit_properties=edit_properties, read_properties=read_properties)
    sink = RecordingSink()
    channel = broker.connect("/", "guest").open_channel(1, sink)
    return broker, channel, sink


def test_persistent_messages_deep_in_a_durable_queue_are_paged_out_and_back() -> None:
    store = MemoryStore()
    _, channel, sink = start(store)
    queue = channel.declare_queue("q", durable=True)
    assert queue is not None
    count = PAGE_OUT_DEPTH + 50
    for n in range(count):
        channel.publish("", "q", False, False, PERSISTENT, b"m%d" % n)
    in_memory = [entry.message is not None for entry in queue.messages]
    assert in_memory == [True] * PAGE_OUT_DEPTH + [False] * 50
    consume(channel, "q", "c", no_ack=True)
    assert sink.bodies() == [b"m%d" % n for n in range(count)]


def test_transient_messages_are_never_paged_out() -> None:
    _, channel, _ = start(MemoryStore())
    queue = channel.declare_queue("q", durable=True)
    assert queue is not None
    for n in range(PAGE_OUT_DEPTH + 5):
        channel.publish("", "q", False, False, FakeProperties(), b"m%d" % n)
    assert all(entry.message is not None for entry in queue.messages)


def test_a_restart_recovers_the_queue_paged_out_in_order_with_redelivered_flags() -> None:
    store = MemoryStore()
    _, channel, _ = start(store)
    channel.declare_queue("q", durable=True)
    for n in range(5):
        channel.publish("", "q", False, False, PERSISTENT, b"m%d" % n)
    got = channel.get("q", no_ack=False)  # delivered, never acked: redelivered after restart
    assert got is not None

    again, channel, sink = start(store)
    queue = again.vhosts["/"].queues["q"]
    assert [entry.message for entry in queue.messages] == [None] * 5
    consume(channel, "q", "c", no_ack=True)
    deliveries = sink.deliveries
    assert [(d.body, d.redelivered) for d in deliveries] == [
        (b"m0", True),
        (b"m1", False),
        (b"m2", False),
        (b"m3", False),
        (b"m4", False),
    ]
    assert deliveries[0].message.routing_key == "q"
