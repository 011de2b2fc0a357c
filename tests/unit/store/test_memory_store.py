"""MemoryStore alone, and a Broker restarted on the same store (what durability promises)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from postoffice.core import Broker, Message, VHost
from postoffice.store import (
    BindingRecord,
    Definitions,
    ExchangeRecord,
    MemoryStore,
    QueueRecord,
)


@dataclass(frozen=True)
class Props:
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    reply_to: str | None = None
    user_id: str | None = None
    raw: bytes = b""
    inspect_on_publish: bool = False


def routed(
    vhost: VHost, exchange: str, key: str = "", headers: dict[str, Any] | None = None
) -> list[str]:
    message = Message(exchange, key, Props(headers=headers), b"")
    return sorted(q.name for q in vhost.route(vhost.exchanges[exchange], message))


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def restart(store: MemoryStore) -> VHost:
    return Broker(store=store).vhosts["/"]


# -- the store alone -----------------------------------------------------------------


def test_empty_store_recovers_nothing(store: MemoryStore) -> None:
    assert store.recover() == Definitions()


def test_records_come_back_by_kind(store: MemoryStore) -> None:
    binding = BindingRecord("/", "x", "q", True, "k", (("a", 1),))
    queue = QueueRecord("/", "q", arguments={"x-max-length": 5})
    exchange = ExchangeRecord("/", "x", "topic", auto_delete=True, internal=True)
    for record in (binding, queue, exchange):
        store.put(record)
    recovered = store.recover()
    assert recovered.exchanges == [exchange]
    assert recovered.queues == [queue]
    assert recovered.bindings == [binding]
    assert recovered.queues[0].arguments == {"x-max-length": 5}


def test_put_replaces_by_key_and_delete_removes(store: MemoryStore) -> None:
    store.put(QueueRecord("/", "q", arguments={"v": 1}))
    store.put(QueueRecord("/", "q", auto_delete=True, arguments={"v": 2}))
    store.put(QueueRecord("/other", "q"))
    queues = store.recover().queues
    assert len(queues) == 2
    assert [(q.auto_delete, q.arguments) for q in queues if q.vhost == "/"] == [(True, {"v": 2})]
    store.delete(QueueRecord("/", "q"))
    store.delete(QueueRecord("/", "never-there"))
    assert [q.vhost for q in store.recover().queues] == ["/other"]


def test_bindings_differing_only_in_arguments_are_distinct(store: MemoryStore) -> None:
    first = BindingRecord("/", "x", "q", True, "k", (("a", 1),))
    second = BindingRecord("/", "x", "q", True, "k", (("a", 2),))
    store.put(first)
    store.put(second)
    store.delete(first)
    assert store.recover().bindings == [second]


def test_sync_calls_back_at_once(store: MemoryStore) -> None:
    calls: list[int] = []
    store.sync(lambda: calls.append(1))
    assert calls == [1]
    store.close()


# -- a broker restarted on the store -------------------------------------------------


def test_durable_definitions_survive_a_restart(store: MemoryStore) -> None:
    broker = Broker(store=store)
    vhost = broker.vhosts["/"]
    owner = broker.connect("/", "guest")
    vhost.declare_exchange(
        "dx", "topic", durable=True, internal=True, arguments={"alternate-exchange": "ae"}
    )
    vhost.declare_exchange("ae", "fanout", durable=True)
    vhost.declare_exchange("hx", "headers", durable=True, auto_delete=True)
    dq = vhost.declare_queue("dq", owner=owner, durable=True, arguments={"x-max-length": 7})
    adq = vhost.declare_queue("adq", owner=owner, durable=True, auto_delete=True)
    spill = vhost.declare_queue("spill", owner=owner, durable=True)
    vhost.bind_queue(dq.name, "dx", "a.*", None, owner)
    vhost.bind_queue(adq.name, "hx", "", {"x-match": "any", "k": "v"}, owner)
    vhost.bind_queue(spill.name, "ae", "", None, owner)
    vhost.bind_queue(dq.name, "amq.direct", "std", None, owner)
    vhost.declare_exchange("front", "direct", durable=True)
    vhost.bind_exchange("dx", "front", "f", None)

    again = restart(store)
    dx = again.exchanges["dx"]
    assert (dx.type, dx.durable, dx.internal, dx.alternate) == ("topic", True, True, "ae")
    assert dx.arguments == {"alternate-exchange": "ae"}
    assert again.exchanges["hx"].auto_delete
    q = again.queues["dq"]
    assert (q.durable, q.auto_delete, q.exclusive, q.arguments) == (
        True,
        False,
        False,
        {"x-max-length": 7},
    )
    assert again.queues["adq"].auto_delete
    assert routed(again, "dx", "a.b") == ["dq"]
    assert routed(again, "dx", "b.b") == ["spill"]  # via the alternate exchange
    assert routed(again, "hx", headers={"k": "v"}) == ["adq"]
    assert routed(again, "amq.direct", "std") == ["dq"]
    assert routed(again, "front", "f") == ["spill"]  # front -> dx, which routes a nowhere key to ae
    # Recovered definitions are equivalent to what a client declares again.
    again.declare_exchange(
        "dx", "topic", durable=True, internal=True, arguments={"alternate-exchange": "ae"}
    )
    again_owner = object()
    again.declare_queue("dq", owner=again_owner, durable=True, arguments={"x-max-length": 7})


def test_transient_and_exclusive_definitions_do_not_survive(store: MemoryStore) -> None:
    broker = Broker(store=store)
    vhost = broker.vhosts["/"]
    owner = broker.connect("/", "guest")
    vhost.declare_exchange("tx", "fanout")
    vhost.declare_exchange("dx", "fanout", durable=True)
    tq = vhost.declare_queue("tq", owner=owner)
    dq = vhost.declare_queue("dq", owner=owner, durable=True)
    xq = vhost.declare_queue("xq", owner=owner, durable=True, exclusive=True)
    vhost.bind_queue(dq.name, "tx", "", None, owner)  # transient source
    vhost.bind_queue(tq.name, "dx", "", None, owner)  # transient destination
    vhost.bind_queue(xq.name, "dx", "", None, owner)  # exclusive destination
    vhost.bind_exchange("tx", "dx", "", None)  # transient exchange destination

    again = restart(store)
    assert "tx" not in again.exchanges
    assert set(again.queues) == {"dq"}
    assert routed(again, "dx") == []
    assert again.exchanges["dx"].bindings == {}
    assert store.recover().bindings == []


def test_deleted_definitions_do_not_survive(store: MemoryStore) -> None:
    broker = Broker(store=store)
    vhost = broker.vhosts["/"]
    owner = broker.connect("/", "guest")
    vhost.declare_exchange("gone", "fanout", durable=True)
    vhost.declare_exchange("kept", "direct", durable=True)
    gone_q = vhost.declare_queue("gone-q", owner=owner, durable=True)
    kept_q = vhost.declare_queue("kept-q", owner=owner, durable=True)
    vhost.bind_queue(kept_q.name, "kept", "unbound", None, owner)
    vhost.bind_queue(kept_q.name, "kept", "stays", None, owner)
    vhost.bind_queue(gone_q.name, "kept", "with-queue", None, owner)
    vhost.unbind_queue(kept_q.name, "kept", "unbound", None, owner)
    vhost.delete_queue("gone-q", owner=owner)
    vhost.delete_exchange("gone")

    again = restart(store)
    assert "gone" not in again.exchanges
    assert set(again.queues) == {"kept-q"}
    assert routed(again, "kept", "unbound") == []
    assert routed(again, "kept", "with-queue") == []
    assert routed(again, "kept", "stays") == ["kept-q"]


def test_auto_deleted_exchange_does_not_survive(store: MemoryStore) -> None:
    broker = Broker(store=store)
    vhost = broker.vhosts["/"]
    owner = broker.connect("/", "guest")
    vhost.declare_exchange("ad", "fanout", durable=True, auto_delete=True)
    q = vhost.declare_queue("q", owner=owner, durable=True)
    vhost.bind_queue(q.name, "ad", "", None, owner)
    vhost.unbind_queue(q.name, "ad", "", None, owner)
    assert "ad" not in restart(store).exchanges


def test_deleting_a_durable_exchange_forgets_its_bindings(store: MemoryStore) -> None:
    broker = Broker(store=store)
    vhost = broker.vhosts["/"]
    owner = broker.connect("/", "guest")
    vhost.declare_exchange("x", "direct", durable=True)
    vhost.declare_exchange("dest", "fanout", durable=True)
    q = vhost.declare_queue("q", owner=owner, durable=True)
    vhost.bind_queue(q.name, "x", "k", None, owner)
    vhost.bind_exchange("dest", "x", "k", None)
    vhost.delete_exchange("x")
    assert store.recover().bindings == []


def test_a_deleted_exchanges_bindings_do_not_come_back_with_its_name(store: MemoryStore) -> None:
    broker = Broker(store=store)
    vhost = broker.vhosts["/"]
    owner = broker.connect("/", "guest")
    vhost.declare_exchange("x", "direct", durable=True)
    q = vhost.declare_queue("q", owner=owner, durable=True)
    vhost.bind_queue(q.name, "x", "k", None, owner)
    vhost.delete_exchange("x")
    vhost.declare_exchange("x", "direct", durable=True)  # a new exchange, no bindings
    assert routed(vhost, "x", "k") == []
    assert routed(restart(store), "x", "k") == []


def test_definitions_in_other_vhosts_are_recovered_there(store: MemoryStore) -> None:
    store.put(ExchangeRecord("/other", "ox", "fanout"))
    store.put(QueueRecord("/other", "oq"))
    store.put(BindingRecord("/other", "ox", "oq", True, "", ()))
    broker = Broker(store=store)
    other = broker.vhosts["/other"]
    assert routed(other, "ox") == ["oq"]
    assert "ox" not in broker.vhosts["/"].exchanges
