"""One suite, every engine: what the Store interface promises, restart included.

A "restart" builds a new store on the same data (a DiskStore on the same directory);
a MemoryStore is its own data, so it restarts as itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from postoffice.store import (
    BindingRecord,
    Definitions,
    DiskStore,
    ExchangeRecord,
    MemoryStore,
    QueueRecord,
    RecoveredMessage,
    Store,
)


class Engine:
    """A store and the means to restart it."""

    def __init__(self, make: Callable[[], Store], reopens: bool) -> None:
        self._make = make
        self._reopens = reopens
        self.store = make()

    def reopen(self) -> Store:
        if self._reopens:
            self.store.close()
            self.store = self._make()
        return self.store

    def close(self) -> None:
        self.store.close()


@pytest.fixture(params=["memory", "disk"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "memory":
        memory = MemoryStore()
        made = Engine(lambda: memory, reopens=False)
    else:
        made = Engine(lambda: DiskStore(tmp_path / "data", segment_size=64 * 1024), reopens=True)
    yield made
    made.close()


def declare(store: Store, *names: str, vhost: str = "/") -> None:
    for name in names:
        store.put(QueueRecord(vhost, name))


def bodies(store: Store, queue: str, vhost: str = "/") -> list[bytes]:
    return [m.body for m in store.messages(vhost, queue)]


# -- definitions -----------------------------------------------------------------------


def test_empty_store_recovers_nothing(engine: Engine) -> None:
    assert engine.store.recover() == Definitions()
    assert engine.reopen().recover() == Definitions()


def test_definitions_survive_a_restart_by_kind(engine: Engine) -> None:
    store = engine.store
    binding = BindingRecord("/", "x", "q", True, "k", (("a", 1),))
    queue = QueueRecord("/", "q", arguments={"x-max-length": 5})
    exchange = ExchangeRecord("/", "x", "topic", auto_delete=True, internal=True)
    for record in (binding, queue, exchange):
        store.put(record)
    recovered = engine.reopen().recover()
    assert recovered.exchanges == [exchange]
    assert recovered.queues == [queue]
    assert recovered.bindings == [binding]
    assert recovered.queues[0].arguments == {"x-max-length": 5}


def test_put_replaces_by_key_in_place_and_delete_removes(engine: Engine) -> None:
    store = engine.store
    store.put(QueueRecord("/", "a"))
    store.put(QueueRecord("/", "q", arguments={"v": 1}))
    store.put(QueueRecord("/", "z"))
    store.put(QueueRecord("/", "q", auto_delete=True, arguments={"v": 2}))
    store.delete(QueueRecord("/", "z"))
    store.delete(QueueRecord("/", "never-there"))
    queues = engine.reopen().recover().queues
    assert [(q.name, q.auto_delete, q.arguments) for q in queues] == [
        ("a", False, {}),
        ("q", True, {"v": 2}),
    ]


def test_deleted_then_redeclared_goes_to_the_end(engine: Engine) -> None:
    store = engine.store
    declare(store, "a", "b")
    store.delete(QueueRecord("/", "a"))
    declare(store, "a")
    assert [q.name for q in engine.reopen().recover().queues] == ["b", "a"]


def test_bindings_differing_only_in_arguments_are_distinct(engine: Engine) -> None:
    store = engine.store
    first = BindingRecord("/", "x", "q", True, "k", (("a", 1),))
    second = BindingRecord("/", "x", "q", True, "k", (("a", 2),))
    store.put(first)
    store.put(second)
    store.delete(first)
    assert engine.reopen().recover().bindings == [second]


def test_every_argument_type_comes_back_equal(engine: Engine) -> None:
    arguments: dict[str, Any] = {
        "none": None,
        "yes": True,
        "no": False,
        "int": -(2**70),
        "small": 7,
        "float": 1.5,
        "decimal": Decimal("-12.345"),
        "str": "été ☃",
        "bytes": b"\x00\xff",
        "when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "list": [1, "two", [3.0], {"four": 4}],
        "table": {"nested": {"deeper": [None]}},
    }
    frozen = (("a", ("array", (1, 2))), ("t", ("table", (("k", "v"),))))
    store = engine.store
    store.put(ExchangeRecord("/v", "x", "headers", arguments=arguments))
    store.put(BindingRecord("/v", "x", "q", True, "", frozen))
    recovered = engine.reopen().recover()
    assert recovered.exchanges[0].arguments == arguments
    assert recovered.bindings[0].arguments == frozen
    assert recovered.bindings[0].key == BindingRecord("/v", "x", "q", True, "", frozen).key


# -- messages --------------------------------------------------------------------------


def test_a_message_comes_back_byte_for_byte(engine: Engine) -> None:
    store = engine.store
    declare(store, "q")
    properties = b"\x90\x00\x0atext/plain\x02"
    message_id = store.publish("/", ["q"], "amq.direct", "rk é", properties, b"body")
    assert store.read(message_id)[2:] == (properties, b"body")
    store = engine.reopen()
    assert list(store.messages("/", "q")) == [
        RecoveredMessage(message_id, "amq.direct", "rk é", properties, b"body", False, 0)
    ]
    assert store.read(message_id)[2:] == (properties, b"body")


def test_order_is_kept_through_settles_and_restarts(engine: Engine) -> None:
    store = engine.store
    declare(store, "q")
    ids = [store.publish("/", ["q"], "", "q", b"", b"%d" % i) for i in range(300)]
    store.settle("/", "q", ids[::3])
    store = engine.reopen()
    kept = [i for i in range(300) if i % 3]
    assert bodies(store, "q") == [b"%d" % i for i in kept]
    assert [m.message_id for m in store.messages("/", "q")] == [ids[i] for i in kept]
    more = [store.publish("/", ["q"], "", "q", b"", b"more%d" % i) for i in range(3)]
    store.settle("/", "q", [ids[1], more[1]])
    store = engine.reopen()
    assert bodies(store, "q") == [b"%d" % i for i in kept[1:]] + [b"more0", b"more2"]


def test_ids_keep_increasing_across_restarts(engine: Engine) -> None:
    store = engine.store
    declare(store, "q")
    first = store.publish("/", ["q"], "", "q", b"", b"a")
    store.settle("/", "q", [first])
    second = engine.reopen().publish("/", ["q"], "", "q", b"", b"b")
    assert second > first
    third = engine.reopen().publish("/", ["q"], "", "q", b"", b"c")
    assert third > second
    assert [m.message_id for m in engine.store.messages("/", "q")] == [second, third]


def test_a_message_for_several_queues_is_settled_by_each(engine: Engine) -> None:
    store = engine.store
    declare(store, "a", "b", "c")
    message_id = store.publish("/", ["a", "b", "c"], "fan", "", b"p", b"shared")
    store.settle("/", "a", [message_id])
    assert store.read(message_id)[2:] == (b"p", b"shared")
    store = engine.reopen()
    assert bodies(store, "a") == []
    assert bodies(store, "b") == [b"shared"]
    assert bodies(store, "c") == [b"shared"]
    store.settle("/", "b", [message_id])
    store.delivered("/", "c", [message_id])
    store = engine.reopen()
    assert [(m.body, m.delivery_count) for m in store.messages("/", "c")] == [(b"shared", 1)]
    store.settle("/", "c", [message_id])
    with pytest.raises(KeyError):
        store.read(message_id)
    store = engine.reopen()
    assert bodies(store, "b") == bodies(store, "c") == []


def test_delivery_counts_survive_restarts(engine: Engine) -> None:
    store = engine.store
    declare(store, "q")
    one, two, three = (store.publish("/", ["q"], "", "q", b"", b"%d" % i) for i in range(3))
    store.delivered("/", "q", [one, two])
    store.delivered("/", "q", [one])
    store = engine.reopen()
    assert [(m.redelivered, m.delivery_count) for m in store.messages("/", "q")] == [
        (True, 2),
        (True, 1),
        (False, 0),
    ]
    store.delivered("/", "q", [one, three])
    store = engine.reopen()
    assert [m.delivery_count for m in store.messages("/", "q")] == [3, 1, 1]


def test_unknown_ids_and_queues_are_ignored(engine: Engine) -> None:
    store = engine.store
    declare(store, "q")
    message_id = store.publish("/", ["q"], "", "q", b"", b"x")
    store.settle("/", "q", [message_id + 100])
    store.settle("/", "nowhere", [message_id])
    store.delivered("/", "nowhere", [message_id])
    store.delivered("/", "q", [message_id + 100])
    store.settle("/", "q", [message_id])
    store.settle("/", "q", [message_id])  # twice
    store.delivered("/", "q", [message_id])  # after its settle
    assert list(store.messages("/", "nowhere")) == []
    with pytest.raises(KeyError):
        store.read(message_id + 100)
    assert bodies(engine.reopen(), "q") == []


def test_a_publish_to_no_queue_stores_nothing(engine: Engine) -> None:
    store = engine.store
    declare(store, "q")
    message_id = store.publish("/", [], "x", "", b"", b"lost")
    with pytest.raises(KeyError):
        store.read(message_id)
    assert bodies(engine.reopen(), "q") == []


def test_vhosts_keep_their_queues_apart(engine: Engine) -> None:
    store = engine.store
    declare(store, "q", vhost="/")
    declare(store, "q", vhost="other")
    store.publish("/", ["q"], "", "q", b"", b"root")
    store.publish("other", ["q"], "", "q", b"", b"other")
    store = engine.reopen()
    assert bodies(store, "q", "/") == [b"root"]
    assert bodies(store, "q", "other") == [b"other"]


def test_deleting_a_queue_drops_its_messages(engine: Engine) -> None:
    store = engine.store
    declare(store, "q", "keep")
    old = store.publish("/", ["q", "keep"], "", "", b"", b"old")
    store.delete(QueueRecord("/", "q"))
    assert store.read(old)[2:] == (b"", b"old")  # "keep" still holds it
    declare(store, "q")
    store.publish("/", ["q"], "", "q", b"", b"new")
    assert bodies(store, "q") == [b"new"]
    store = engine.reopen()
    assert bodies(store, "q") == [b"new"]
    assert bodies(store, "keep") == [b"old"]


def test_large_bodies_round_trip(engine: Engine) -> None:
    store = engine.store
    declare(store, "q")
    big = bytes(range(256)) * 4096  # 1 MiB, past a segment
    store.publish("/", ["q"], "", "q", b"p", big)
    store.publish("/", ["q"], "", "q", b"p", b"small")
    assert bodies(engine.reopen(), "q") == [big, b"small"]


def test_sync_runs_callbacks_in_order_once_durable(engine: Engine) -> None:
    store = engine.store
    calls: list[str] = []
    woken: list[bool] = []
    store.wakeup = lambda: woken.append(True)
    declare(store, "q")
    store.publish("/", ["q"], "", "q", b"", b"x")
    store.sync(lambda: calls.append("a"))
    store.sync(lambda: (calls.append("b"), store.sync(lambda: calls.append("c"))))
    # Either the callbacks ran already, or the server was asked to flush.
    assert calls[:2] == ["a", "b"] or woken
    store.flush()
    if "c" not in calls:
        assert woken
        store.flush()
    assert calls == ["a", "b", "c"]
    store.flush()
    assert calls == ["a", "b", "c"]


def test_a_sync_with_nothing_pending_runs_soon(engine: Engine) -> None:
    store = engine.store
    store.flush()
    calls: list[int] = []
    store.sync(lambda: calls.append(1))
    store.flush()
    assert calls == [1]


def test_index_lists_ids_and_delivery_counts_in_order_without_bodies(engine: Engine) -> None:
    store = engine.store
    declare(store, "q")
    first = store.publish("/", ["q"], "ex", "rk.1", b"p1", b"one")
    second = store.publish("/", ["q"], "", "rk.2", b"p2", b"two")
    third = store.publish("/", ["q"], "", "rk.3", b"p3", b"three")
    store.delivered("/", "q", [second])
    store.settle("/", "q", [first])
    store.flush()
    store = engine.reopen()
    assert list(store.index("/", "q")) == [(second, 1, 0), (third, 0, 0)]
    assert store.read(second) == ("", "rk.2", b"p2", b"two")
    assert list(store.index("/", "missing")) == []


# -- time_ms ---------------------------------------------------------------------------

SOON = 1_700_000_000_000  # a time_ms in epoch milliseconds, as the broker passes them


def timed(store: Store, queue: str, vhost: str = "/") -> list[tuple[int, int]]:
    """(message id, time_ms) of the queue's messages, by index(), checked against messages()."""
    listed = [(m, e) for m, _, e in store.index(vhost, queue)]
    assert [(m.message_id, m.time_ms) for m in store.messages(vhost, queue)] == listed
    return listed


def test_expires_is_0_unless_given(engine: Engine) -> None:
    store = engine.store
    declare(store, "q", "r")
    one = store.publish("/", ["q"], "", "q", b"", b"one")
    two = store.publish("/", ["q", "r"], "", "q", b"", b"two")
    assert timed(store, "q") == [(one, 0), (two, 0)]
    store = engine.reopen()
    assert timed(store, "q") == [(one, 0), (two, 0)]
    assert timed(store, "r") == [(two, 0)]


def test_expires_comes_back_with_its_message(engine: Engine) -> None:
    store = engine.store
    declare(store, "q")
    big = bytes(range(256)) * 40  # past the disk store's small-body path
    times = [SOON, 0, SOON + 1, SOON + 1, 0, 2**62, 0, SOON]
    contents = [(b"p%d" % i, b"%d" % i + big * (i % 2)) for i in range(len(times))]
    ids = [
        store.publish("/", ["q"], "ex", "rk", properties, body, time_ms)
        for (properties, body), time_ms in zip(contents, times, strict=True)
    ]
    assert timed(store, "q") == list(zip(ids, times, strict=True))
    store.delivered("/", "q", ids[:2])
    store.settle("/", "q", [ids[2], ids[4]])
    kept = [0, 1, 3, 5, 6, 7]
    store = engine.reopen()
    assert timed(store, "q") == [(ids[i], times[i]) for i in kept]
    assert [m.delivery_count for m in store.messages("/", "q")] == [1, 1, 0, 0, 0, 0]
    for i in kept:
        assert store.read(ids[i]) == ("ex", "rk", *contents[i])
    later = store.publish("/", ["q"], "", "q", b"", b"later", SOON + 5)
    store = engine.reopen()
    assert timed(store, "q") == [*((ids[i], times[i]) for i in kept), (later, SOON + 5)]


def test_a_message_for_several_queues_keeps_one_expires_for_all(engine: Engine) -> None:
    store = engine.store
    declare(store, "a", "b", "c")
    shared = store.publish("/", ["a", "b", "c"], "fan", "", b"p", b"shared", SOON)
    plain = store.publish("/", ["a", "b"], "fan", "", b"p", b"plain")
    store.settle("/", "a", [shared])
    store.delivered("/", "b", [shared])
    store = engine.reopen()
    assert timed(store, "a") == [(plain, 0)]
    assert timed(store, "b") == [(shared, SOON), (plain, 0)]
    assert timed(store, "c") == [(shared, SOON)]
    assert [m.delivery_count for m in store.messages("/", "b")] == [1, 0]
    store.settle("/", "b", [shared])
    store = engine.reopen()
    assert timed(store, "c") == [(shared, SOON)]
    assert store.read(shared) == ("fan", "", b"p", b"shared")


def test_expires_survives_compaction(engine: Engine) -> None:
    """Old messages pinning many mostly-settled segments get rewritten by the disk store
    (its segments are 64 KiB here): the copies keep their time_ms."""
    store = engine.store
    declare(store, "slow", "other", "fast")
    slow: list[tuple[int, int]] = []
    for round_ in range(400):
        if round_ % 10 == 0:
            time_ms = SOON + round_ if round_ % 20 else 0
            queues = ["slow", "other"] if round_ % 30 == 0 else ["slow"]
            slow.append((store.publish("/", queues, "", "", b"p", bytes(100), time_ms), time_ms))
        fast = [store.publish("/", ["fast"], "", "", b"p", bytes(1000)) for _ in range(5)]
        store.settle("/", "fast", fast)
        store.flush()
    store.delivered("/", "other", [slow[0][0]])
    store.flush()
    if isinstance(store, DiskStore):  # the segment of the first messages was compacted away
        assert not (store.path / "messages" / "0000000001.seg").exists()
    assert timed(store, "slow") == slow
    store = engine.reopen()
    assert timed(store, "slow") == slow
    assert timed(store, "other") == [slow[i] for i in range(0, len(slow), 3)]
    assert [m.delivery_count for m in store.messages("/", "other")][:2] == [1, 0]
