"""De-duplication (rabbitmq-message-deduplication): the exchange's window, its TTLs,
its size, its persistence through restarts, and queue-level de-duplication."""

from __future__ import annotations

import ast
from typing import Any

import pytest
from core_support import FakeProperties, RecordingSink, consume, edit_properties, message

from postoffice.core import Broker, Channel, ManualClock
from postoffice.core.dedup import (
    DeduplicatingExchange,
    QueueDeduplication,
    decode_key,
    encode_key,
)
from postoffice.core.vhost import INTERNAL_QUEUE_PREFIX, VHost
from postoffice.errors import PreconditionFailed
from postoffice.store import MemoryStore

DEDUP = "x-message-deduplication"


NO_KEY = object()


def read_properties(raw: bytes) -> FakeProperties:
    """Properties read back from the store: ``raw`` holds the headers' repr."""
    return FakeProperties(headers=ast.literal_eval(raw.decode()), delivery_mode=2, raw=raw)


class Life:
    """One broker life on a store, with a manual clock and one channel."""

    def __init__(self, store: MemoryStore, clock: ManualClock) -> None:
        self.store = store
        self.clock = clock
        self.broker = Broker(
            store=store,
            clock=clock,
            edit_properties=edit_properties,
            read_properties=read_properties,
        )
        self.sink = RecordingSink()
        connection = self.broker.connect("/", "guest")
        self.channel: Channel = connection.open_channel(1, self.sink)

    @property
    def vhost(self) -> VHost:
        return self.broker.vhosts["/"]

    def exchange(self, name: str = "dx", *, durable: bool = False, **arguments: Any) -> None:
        arguments.setdefault("x-cache-size", 10)
        self.vhost.declare_exchange(name, DEDUP, durable=durable, arguments=arguments)

    def queue(self, name: str = "q", exchange: str = "dx", **options: Any) -> None:
        self.channel.declare_queue(name, **options)
        if exchange:
            self.vhost.bind_queue(name, exchange, "", None, self.channel.connection)

    def publish(
        self,
        key: Any = NO_KEY,
        *,
        exchange: str = "dx",
        routing_key: str = "rk",
        mandatory: bool = False,
        persistent: bool = False,
        expiration: str | None = None,
        **headers: Any,
    ) -> None:
        if key is not NO_KEY:
            headers["x-deduplication-header"] = key
        table = {k.replace("_", "-"): v for k, v in headers.items()} or None
        properties = FakeProperties(
            headers=table,
            delivery_mode=2 if persistent else None,
            expiration=expiration,
            raw=repr(table).encode(),
        )
        self.channel.publish(exchange, routing_key, mandatory, False, properties, b"m")

    def depth(self, queue: str = "q") -> int:
        return self.vhost.queues[queue].message_count

    def advance(self, ms: int) -> None:
        self.clock.advance(ms / 1000)
        self.broker.timers.run_due()

    def behaviour(self, name: str = "dx") -> DeduplicatingExchange:
        behaviour = self.vhost.exchanges[name].behaviour
        assert isinstance(behaviour, DeduplicatingExchange)
        return behaviour


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def life(clock: ManualClock) -> Life:
    return Life(MemoryStore(), clock)


def stored_keys(store: MemoryStore, exchange: str = "dx") -> list[tuple[int, int, int]]:
    return list(store.index("/", f"{INTERNAL_QUEUE_PREFIX}dedup.{exchange}"))


# -- declaring -----------------------------------------------------------------------


def declare_error(arguments: dict[str, Any]) -> str:
    with pytest.raises(PreconditionFailed) as raised:
        DeduplicatingExchange.check_arguments(arguments, "exchange 'dx' in vhost '/'")
    return raised.value.text


def test_the_cache_size_is_mandatory_with_the_plugins_text() -> None:
    # Elixir line continuations leave the next line's indentation in the text.
    expected = (
        "Missing or invalid argument,           'x-cache-size' must be an integer greater than 0"
    )
    assert declare_error({}) == expected
    assert declare_error({"x-cache-size": 0}) == expected
    assert declare_error({"x-cache-size": -3}) == expected
    assert declare_error({"x-cache-size": 2.5}) == expected
    assert declare_error({"x-cache-size": True}) == expected


def test_a_cache_size_string_must_be_an_integer() -> None:
    assert declare_error({"x-cache-size": "foo"}) == (
        "Missing or invalid argument,                       "
        "'x-cache-size' must be an integer greater than 0"
    )
    DeduplicatingExchange.check_arguments({"x-cache-size": "10"}, "x")


def test_the_cache_ttl_and_persistence_are_checked_with_the_plugins_texts() -> None:
    size = {"x-cache-size": 5}
    assert declare_error({**size, "x-cache-ttl": 0}) == (
        "Invalid argument,              'x-cache-ttl' must be an integer greater than 0"
    )
    assert declare_error({**size, "x-cache-ttl": "bar"}) == (
        "Invalid argument,                       'x-cache-ttl' must be an integer greater than 0"
    )
    assert declare_error({**size, "x-cache-persistence": "ram"}) == (
        "Invalid argument,              'x-cache-persistence' must be either 'disk' or 'memory'"
    )
    for persistence in ("disk", "memory"):
        arguments = {**size, "x-cache-ttl": "1000", "x-cache-persistence": persistence}
        DeduplicatingExchange.check_arguments(arguments, "x")


def test_a_bad_declare_is_refused_by_the_vhost(life: Life) -> None:
    with pytest.raises(PreconditionFailed):
        life.vhost.declare_exchange("dx", DEDUP, arguments={"x-cache-ttl": 10})
    assert "dx" not in life.vhost.exchanges


# -- the window ----------------------------------------------------------------------


def test_it_routes_like_fanout_whatever_the_routing_key(life: Life) -> None:
    life.exchange()
    life.channel.declare_queue("q")
    life.vhost.bind_queue("q", "dx", "only-this-key", None, life.channel.connection)
    life.publish("a", routing_key="another-key")
    assert life.depth() == 1


def test_a_duplicate_inside_the_window_is_dropped(life: Life) -> None:
    life.exchange(**{"x-cache-ttl": 10_000})
    life.queue()
    for _ in range(5):
        life.publish("deduplicate-this")
    assert life.depth() == 1
    life.publish("deduplicate-that")
    life.publish()  # no header: never a duplicate
    life.publish()
    assert life.depth() == 4


def test_keys_compare_as_the_plugins_erlang_terms(life: Life) -> None:
    life.exchange()
    life.queue()
    life.publish("k")
    life.publish(b"k")  # a byte array with the same bytes: the same key
    assert life.depth() == 1
    life.publish(1)
    life.publish(True)  # a boolean is never an integer
    life.publish(1.0)  # nor is a float
    assert life.depth() == 4
    life.publish(None)  # void is a key of its own
    life.publish(None)
    assert life.depth() == 5


def test_keys_round_trip_through_their_encoding() -> None:
    for value in ("text", "ünï", b"\xff\x00", 0, -(2**63), 2**64, 1.5, True, False, None):
        assert decode_key(encode_key(value)) == value
    assert encode_key("k") == encode_key(b"k")
    assert encode_key(1) != encode_key(1.0) != encode_key(True)
    assert encode_key([1, {"a": "b"}]) == encode_key([1, {"a": b"b"}])


def test_duplicates_are_confirmed_with_an_ack(life: Life) -> None:
    life.exchange()
    life.queue()
    life.channel.select_confirm()
    life.publish("a")
    life.publish("a")
    assert life.sink.events == [("confirm", 1, True), ("confirm", 2, True)]


def test_a_mandatory_duplicate_is_returned_as_unroutable_as_in_the_plugin(life: Life) -> None:
    life.exchange()
    life.queue()
    life.channel.select_confirm()
    life.publish("a", mandatory=True)
    life.publish("a", mandatory=True)
    assert [event[:3] for event in life.sink.events] == [
        ("confirm", 1, True),
        ("returned", 312, "NO_ROUTE"),
        ("confirm", 2, True),
    ]


def test_a_duplicate_goes_to_the_alternate_exchange(life: Life) -> None:
    life.vhost.declare_exchange("ae", "fanout")
    life.exchange(**{"alternate-exchange": "ae"})
    life.queue()
    life.queue("dupes", exchange="ae")
    life.publish("a")
    life.publish("a")
    assert (life.depth(), life.depth("dupes")) == (1, 1)


def test_a_key_expires_after_the_exchange_ttl(life: Life) -> None:
    life.exchange(**{"x-cache-ttl": 1000})
    life.queue()
    life.publish("a")
    life.advance(999)
    life.publish("a")  # a duplicate does not extend the window
    assert life.depth() == 1
    life.advance(1)
    life.publish("a")
    assert life.depth() == 2


def test_the_message_ttl_header_overrides_the_exchange_ttl(life: Life) -> None:
    life.exchange(**{"x-cache-ttl": 10_000})
    life.queue()
    life.publish("a", x_cache_ttl=500)
    life.advance(500)
    life.publish("a")
    assert life.depth() == 2
    life.advance(9_999)
    life.publish("a")  # the second one took the exchange's TTL
    assert life.depth() == 2


def test_without_a_ttl_a_key_stays_until_evicted(life: Life) -> None:
    life.exchange(**{"x-cache-size": 2})
    life.queue()
    life.publish("a")
    life.advance(10**9)
    life.publish("a")
    assert life.depth() == 1


def test_a_full_cache_evicts_its_oldest_key(life: Life) -> None:
    life.exchange(**{"x-cache-size": 2, "x-cache-ttl": 10_000})
    life.queue()
    life.publish("a")
    life.publish("b")
    life.publish("c")  # evicts a
    life.publish("b")
    life.publish("a")
    assert life.depth() == 4
    assert len(life.behaviour().keys) == 2


def test_a_full_cache_drops_expired_keys_before_live_ones(life: Life) -> None:
    life.exchange(**{"x-cache-size": 2, "x-cache-ttl": 10_000})
    life.queue()
    life.publish("a")
    life.publish("b", x_cache_ttl=100)
    life.clock.advance(0.2)  # no timer run: the sweep happens on insert
    life.publish("c")
    life.publish("a")
    assert life.depth() == 3


def test_the_plugins_overflow_scenario(life: Life) -> None:
    life.exchange(**{"x-cache-size": 1, "x-cache-ttl": 10_000})
    life.queue()
    for key in ("this", "that", "this"):
        life.publish(key)
    assert life.depth() == 3


def test_expired_keys_are_swept_by_one_timer(life: Life) -> None:
    timers = len(life.broker.timers)
    life.exchange(**{"x-cache-ttl": 1000})
    life.queue()
    for key in range(5):
        life.publish(key)
        life.advance(10)
    behaviour = life.behaviour()
    assert len(life.broker.timers) == timers + 1
    life.advance(2000)
    assert behaviour.keys == {}
    assert len(life.broker.timers) == timers


def test_memory_stays_bounded_under_eviction(life: Life) -> None:
    life.exchange(**{"x-cache-size": 3, "x-cache-ttl": 3_600_000})
    life.queue()
    for key in range(1000):
        life.publish(key)
    behaviour = life.behaviour()
    assert len(behaviour.keys) == 3
    assert len(behaviour._expiries) <= 2 * 3 + 65


def test_deleting_the_exchange_lets_go_of_its_window(life: Life) -> None:
    timers = len(life.broker.timers)
    life.exchange(durable=True, **{"x-cache-persistence": "disk", "x-cache-ttl": 1000})
    life.queue()
    life.publish("a")
    assert len(stored_keys(life.store)) == 1
    life.vhost.delete_exchange("dx")
    assert stored_keys(life.store) == []
    assert len(life.broker.timers) == timers
    life.exchange(durable=True, **{"x-cache-persistence": "disk"})
    life.queue()
    life.publish("a")
    assert life.depth() == 2


# -- persistence ---------------------------------------------------------------------


def test_a_disk_window_survives_a_restart(clock: ManualClock) -> None:
    store = MemoryStore()
    first = Life(store, clock)
    first.exchange(durable=True, **{"x-cache-persistence": "disk", "x-cache-ttl": 60_000})
    first.queue()
    first.publish("a")
    first.publish(b"\xff")
    first.publish(7)
    first.publish("short", x_cache_ttl=100)
    assert len(stored_keys(store)) == 4

    clock.advance(1)
    second = Life(store, clock)
    second.queue()
    for key in ("a", b"\xff", 7):
        second.publish(key)
    second.publish("short")  # expired while the broker was down
    assert second.depth() == 1
    assert len(stored_keys(store)) == 4  # the expired one settled, the new one stored
    second.advance(60_000)
    assert stored_keys(store) == []


def test_a_restart_keeps_the_window_in_age_order_and_size(clock: ManualClock) -> None:
    store = MemoryStore()
    first = Life(store, clock)
    first.exchange(durable=True, **{"x-cache-persistence": "disk", "x-cache-size": 2})
    first.queue()
    first.publish("a")
    first.publish("b")
    first.publish("c")  # evicts a, and settles its record
    assert len(stored_keys(store)) == 2

    second = Life(store, clock)
    second.queue()
    second.publish("c")
    second.publish("d")  # evicts b, the oldest
    second.publish("b")
    assert second.depth() == 2


def test_a_memory_window_does_not_survive_a_restart(clock: ManualClock) -> None:
    store = MemoryStore()
    first = Life(store, clock)
    first.exchange(durable=True)
    first.queue()
    first.publish("a")
    assert stored_keys(store) == []
    second = Life(store, clock)
    second.queue()
    second.publish("a")
    assert second.depth() == 1


def test_a_transient_exchange_keeps_its_window_in_memory(life: Life) -> None:
    life.exchange(**{"x-cache-persistence": "disk"})
    life.queue()
    life.publish("a")
    life.publish("a")
    assert life.depth() == 1
    assert stored_keys(life.store) == []


# -- queue level ---------------------------------------------------------------------


def test_queue_deduplication_admits_a_key_once_until_released() -> None:
    dedup = QueueDeduplication({DEDUP: True})
    first = message(headers={"x-deduplication-header": "k"})
    again = message(headers={"x-deduplication-header": b"k"})
    assert dedup.admit(first)
    assert not dedup.admit(again)
    assert dedup.admit(message(headers={}))
    dedup.release(first)
    assert dedup.admit(again)


def test_a_queue_key_lapses_with_its_message_ttl(clock: ManualClock) -> None:
    dedup = QueueDeduplication({DEDUP: True, "x-message-ttl": 1000}, clock)
    keyed = {"x-deduplication-header": "k"}
    assert dedup.admit(message(headers=keyed))
    clock.advance(0.999)
    assert not dedup.admit(message(headers=keyed))
    clock.advance(0.001)
    assert dedup.admit(message(headers=keyed))
    own_ttl = message(headers={"x-deduplication-header": "m"})
    own_ttl.properties = FakeProperties(headers=own_ttl.properties.headers, expiration="50")
    assert dedup.admit(own_ttl)
    clock.advance(0.05)
    assert dedup.admit(own_ttl)


def test_queue_deduplication_is_turned_on_as_the_plugin_reads_the_argument() -> None:
    assert QueueDeduplication.wanted({DEDUP: True})
    assert not QueueDeduplication.wanted({DEDUP: False})
    assert not QueueDeduplication.wanted({})


def test_a_queue_drops_duplicates_of_messages_in_line(life: Life) -> None:
    life.queue(exchange="", arguments={DEDUP: True})
    life.channel.select_confirm()
    for _ in range(3):
        life.publish("k", exchange="", routing_key="q")
    assert life.depth() == 1
    assert [event[:2] for event in life.sink.events] == [("confirm", n) for n in (1, 2, 3)]


def test_a_queue_key_is_free_again_once_the_message_left(life: Life) -> None:
    life.queue(exchange="", arguments={DEDUP: True})
    life.publish("k", exchange="", routing_key="q")
    consume(life.channel, "q", "c", no_ack=True)
    life.publish("k", exchange="", routing_key="q")
    assert life.sink.bodies() == [b"m", b"m"]


def test_a_purge_frees_every_queue_key(life: Life) -> None:
    life.queue(exchange="", arguments={DEDUP: True})
    life.publish("a", exchange="", routing_key="q")
    life.publish("b", exchange="", routing_key="q")
    life.vhost.queues["q"].purge()
    life.publish("a", exchange="", routing_key="q")
    life.publish("b", exchange="", routing_key="q")
    assert life.depth() == 2


def test_an_expired_message_frees_its_queue_key(life: Life) -> None:
    life.queue(exchange="", arguments={DEDUP: True, "x-message-ttl": 1000})
    life.publish("k", exchange="", routing_key="q")
    life.advance(1000)
    assert life.depth() == 0
    life.publish("k", exchange="", routing_key="q")
    assert life.depth() == 1


def test_a_restarted_queue_rebuilds_its_keys_from_its_messages(clock: ManualClock) -> None:
    store = MemoryStore()
    first = Life(store, clock)
    first.queue(exchange="", durable=True, arguments={DEDUP: True})
    first.publish("k", exchange="", routing_key="q", persistent=True)

    second = Life(store, clock)
    second.publish("k", exchange="", routing_key="q", persistent=True)
    assert second.depth() == 1
    consume(second.channel, "q", "c", no_ack=True)
    assert second.sink.bodies() == [b"m"]
    second.publish("k", exchange="", routing_key="q", persistent=True)
    assert second.sink.bodies() == [b"m", b"m"]  # the key left with the message
