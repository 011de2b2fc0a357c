"""Declare, delete, bind and route: the rules of a vhost, with RabbitMQ's codes and texts."""

from __future__ import annotations

import re
from typing import Any

import pytest
from core_support import consume, make_broker, message, open_channel, publish

from postoffice.core import Broker, Channel, Queue
from postoffice.errors import (
    AccessRefused,
    AMQPError,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)

LOCKED = (
    "cannot obtain exclusive access to locked queue '{}' in vhost '/'. It could be "
    "originally declared on another connection or the exclusive property value does not "
    "match that of the original declaration."
)


@pytest.fixture
def broker() -> Broker:
    return make_broker()


@pytest.fixture
def channel(broker: Broker) -> Channel:
    return open_channel(broker)[0]


def raises(error: type[AMQPError], text: str) -> Any:
    return pytest.raises(error, match=f"^{re.escape(text)}$")


def bind(
    channel: Channel, queue: Queue, exchange: str, key: str, arguments: dict[str, Any] | None
) -> None:
    channel.vhost.bind_queue(queue.name, exchange, key, arguments, channel.connection)


def unbind(
    channel: Channel, queue: Queue, exchange: str, key: str, arguments: dict[str, Any] | None
) -> None:
    channel.vhost.unbind_queue(queue.name, exchange, key, arguments, channel.connection)


def routed(
    channel: Channel, exchange: str, key: str = "", headers: dict[str, Any] | None = None
) -> list[str]:
    vhost = channel.vhost
    msg = message(key, headers, exchange=exchange)
    return sorted(q.name for q in vhost.route(vhost.exchanges[exchange], msg))


def queue(channel: Channel, name: str, **options: Any) -> Queue:
    declared = channel.declare_queue(name, **options)
    assert declared is not None
    return declared


# -- exchanges: declare --------------------------------------------------------------


def test_exchange_redeclare_equivalent_returns_the_same_exchange(channel: Channel) -> None:
    vhost = channel.vhost
    first = vhost.declare_exchange(
        "x", "topic", durable=True, arguments={"alternate-exchange": "ae"}
    )
    again = vhost.declare_exchange(
        "x", "topic", durable=True, arguments={"alternate-exchange": "ae", "x-other": 1}
    )
    assert again is first


@pytest.mark.parametrize(
    ("field", "changes", "received", "current"),
    [
        ("type", {"type": "fanout"}, "fanout", "direct"),
        ("durable", {"durable": True}, "true", "false"),
        ("auto_delete", {"auto_delete": True}, "true", "false"),
        ("internal", {"internal": True}, "true", "false"),
    ],
)
def test_exchange_inequivalent_field(
    channel: Channel, field: str, changes: dict[str, object], received: str, current: str
) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("x", "direct")
    options: dict[str, Any] = {"type": "direct", **changes}
    with raises(
        PreconditionFailed,
        f"inequivalent arg '{field}' for exchange 'x' in vhost '/': "
        f"received '{received}' but current is '{current}'",
    ):
        vhost.declare_exchange("x", **options)


def test_exchange_inequivalent_alternate_exchange_added(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae1"})
    with raises(
        PreconditionFailed,
        "inequivalent arg 'alternate-exchange' for exchange 'x' in vhost '/': received none "
        "but current is the value 'ae1' of type 'longstr'",
    ):
        vhost.declare_exchange("x", "direct")


def test_exchange_inequivalent_alternate_exchange_changed_is_refused(channel: Channel) -> None:
    vhost = channel.vhost
    x = vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae1"})
    with pytest.raises(PreconditionFailed):
        vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae2"})
    assert x.alternate == "ae1"


def test_exchange_inequivalent_alternate_exchange_changed_text(channel: Channel) -> None:
    # rabbit_misc:assert_args_equivalence: two present values of one type class are
    # shown bare ("received 'ae2' but current is 'ae1'").
    vhost = channel.vhost
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae1"})
    with raises(
        PreconditionFailed,
        "inequivalent arg 'alternate-exchange' for exchange 'x' in vhost '/': "
        "received 'ae2' but current is 'ae1'",
    ):
        vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae2"})


def test_exchange_reserved_prefix(channel: Channel) -> None:
    with raises(AccessRefused, "exchange name 'amq.mine' contains reserved prefix 'amq.*'"):
        channel.vhost.declare_exchange("amq.mine", "direct")
    assert "amq.mine" not in channel.vhost.exchanges


def test_standard_exchange_redeclared_equivalently_is_fine(channel: Channel) -> None:
    vhost = channel.vhost
    assert (
        vhost.declare_exchange("amq.topic", "topic", durable=True) is vhost.exchanges["amq.topic"]
    )
    with raises(
        PreconditionFailed,
        "inequivalent arg 'type' for exchange 'amq.topic' in vhost '/': "
        "received 'direct' but current is 'topic'",
    ):
        vhost.declare_exchange("amq.topic", "direct", durable=True)


@pytest.mark.parametrize("passive", [False, True])
def test_default_exchange_cannot_be_declared(channel: Channel, passive: bool) -> None:
    with raises(AccessRefused, "operation not permitted on the default exchange"):
        channel.vhost.declare_exchange("", "direct", passive=passive)


def test_passive_exchange_declare(channel: Channel) -> None:
    vhost = channel.vhost
    with raises(NotFound, "no exchange 'nope' in vhost '/'"):
        vhost.declare_exchange("nope", "direct", passive=True)
    made = vhost.declare_exchange("x", "fanout")
    # passive skips the equivalence checks, type included
    assert vhost.declare_exchange("x", "direct", passive=True, durable=True) is made
    assert "nope" not in vhost.exchanges


def test_unknown_exchange_type_is_refused(channel: Channel) -> None:
    with pytest.raises(PreconditionFailed):
        channel.vhost.declare_exchange("x", "no-such-type")
    assert "x" not in channel.vhost.exchanges


def test_unknown_exchange_type_text(channel: Channel) -> None:
    # rabbit_exchange:check_type
    with raises(PreconditionFailed, "unknown exchange type 'no-such-type'"):
        channel.vhost.declare_exchange("x", "no-such-type")


# -- exchanges: delete ---------------------------------------------------------------


def test_delete_exchange(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("x", "direct")
    vhost.delete_exchange("x")
    assert "x" not in vhost.exchanges
    vhost.delete_exchange("x")  # a missing exchange deletes fine


def test_delete_default_exchange_refused(channel: Channel) -> None:
    with raises(AccessRefused, "operation not permitted on the default exchange"):
        channel.vhost.delete_exchange("")
    assert "" in channel.vhost.exchanges


def test_delete_standard_exchange_refused(channel: Channel) -> None:
    with raises(AccessRefused, "deletion of system exchange 'amq.direct' in vhost '/' not allowed"):
        channel.vhost.delete_exchange("amq.direct")
    assert "amq.direct" in channel.vhost.exchanges


def test_delete_any_amq_exchange_refused_even_when_missing(channel: Channel) -> None:
    # rabbit_channel:check_exchange_deletion matches every "amq." name before the lookup.
    with raises(AccessRefused, "deletion of system exchange 'amq.nope' in vhost '/' not allowed"):
        channel.vhost.delete_exchange("amq.nope")


def test_delete_exchange_if_unused(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("x", "direct")
    vhost.declare_exchange("dest", "fanout")
    q = queue(channel, "q")
    bind(channel, q, "x", "k", None)
    with raises(PreconditionFailed, "exchange 'x' in vhost '/' in use"):
        vhost.delete_exchange("x", if_unused=True)
    assert "x" in vhost.exchanges
    # Bindings to an exchange (as destination) do not make it "used".
    vhost.bind_exchange("dest", "x", "k", None)
    vhost.delete_exchange("dest", if_unused=True)
    assert "dest" not in vhost.exchanges
    unbind(channel, q, "x", "k", None)
    vhost.delete_exchange("x", if_unused=True)
    assert "x" not in vhost.exchanges


def test_deleting_an_exchange_removes_bindings_both_ways(channel: Channel) -> None:
    vhost = channel.vhost
    for name in ("src", "mid"):
        vhost.declare_exchange(name, "fanout")
    q = queue(channel, "q")
    vhost.bind_exchange("mid", "src", "", None)
    bind(channel, q, "mid", "", None)
    vhost.delete_exchange("mid")
    assert vhost.exchanges["src"].bindings == {}
    assert routed(channel, "src") == []
    # A new exchange of the same name starts with no bindings.
    vhost.declare_exchange("mid", "fanout")
    assert vhost.exchanges["mid"].bindings == {}
    assert routed(channel, "src") == []


# -- queues: declare -----------------------------------------------------------------


def test_server_named_queue(channel: Channel) -> None:
    first = queue(channel, "")
    second = queue(channel, "")
    assert re.fullmatch(r"amq\.gen-[A-Za-z0-9_-]{22}", first.name)
    assert first.name != second.name
    assert channel.vhost.queues[first.name] is first


def test_queue_reserved_prefix(channel: Channel) -> None:
    with raises(AccessRefused, "queue name 'amq.q' contains reserved prefix 'amq.*'"):
        channel.declare_queue("amq.q")


def test_queue_redeclare_equivalent(channel: Channel) -> None:
    first = queue(channel, "q", durable=True, arguments={"x-max-length": 10, "x-custom": 1})
    again = queue(channel, "q", durable=True, arguments={"x-max-length": 10, "x-custom": 2})
    assert again is first


@pytest.mark.parametrize("field", ["durable", "auto_delete"])
def test_queue_inequivalent_flag(channel: Channel, field: str) -> None:
    channel.declare_queue("q")
    with raises(
        PreconditionFailed,
        f"inequivalent arg '{field}' for queue 'q' in vhost '/': "
        "received 'true' but current is 'false'",
    ):
        channel.declare_queue("q", **{field: True})


def test_queue_inequivalent_argument_added(channel: Channel) -> None:
    channel.declare_queue("q")
    with pytest.raises(PreconditionFailed) as caught:
        channel.declare_queue("q", arguments={"x-message-ttl": 1000})
    text = caught.value.text
    assert text.startswith(
        "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': "
        "received the value '1000' of type '"
    )
    assert text.endswith("' but current is none")


def test_queue_inequivalent_argument_changed_is_refused(channel: Channel) -> None:
    q = queue(channel, "q", arguments={"x-max-length": 10})
    with pytest.raises(PreconditionFailed):
        channel.declare_queue("q", arguments={"x-max-length": 20})
    assert q.arguments == {"x-max-length": 10}


def test_queue_inequivalent_argument_changed_text(channel: Channel) -> None:
    channel.declare_queue("q", arguments={"x-max-length": 10})
    with raises(
        PreconditionFailed,
        "inequivalent arg 'x-max-length' for queue 'q' in vhost '/': "
        "received '20' but current is '10'",
    ):
        channel.declare_queue("q", arguments={"x-max-length": 20})


def test_queue_argument_bool_is_not_equivalent_to_int(channel: Channel) -> None:
    # rabbit_misc:assert_args_equivalence compares type classes: bool is not int.
    channel.declare_queue("q", arguments={"x-single-active-consumer": True})
    with raises(
        PreconditionFailed,
        "inequivalent arg 'x-single-active-consumer' for queue 'q' in vhost '/': "
        "received '1' but current is 'true'",
    ):
        channel.declare_queue("q", arguments={"x-single-active-consumer": 1})


def test_queue_type_classic_is_equivalent_to_no_type(channel: Channel) -> None:
    # rabbit_misc:assert_field_equivalence special-cases x-queue-type classic vs none
    # (rabbitmq-common#341): clients that name the default type must not fail.
    first = queue(channel, "q")
    assert queue(channel, "q", arguments={"x-queue-type": "classic"}) is first
    second = queue(channel, "q2", arguments={"x-queue-type": "classic"})
    assert queue(channel, "q2") is second


def test_passive_queue_declare(channel: Channel) -> None:
    with raises(NotFound, "no queue 'nope' in vhost '/'"):
        channel.declare_queue("nope", passive=True)
    made = queue(channel, "q")
    assert channel.declare_queue("q", passive=True, durable=True) is made


# -- queues: exclusive ---------------------------------------------------------------


def test_exclusive_queue_locked_for_other_connections(broker: Broker) -> None:
    owner, _ = open_channel(broker)
    other, _ = open_channel(broker)
    q = queue(owner, "q", exclusive=True)
    locked = LOCKED.format("q")
    with raises(ResourceLocked, locked):
        other.declare_queue("q", exclusive=True)
    with raises(ResourceLocked, locked):
        other.declare_queue("q")
    with raises(ResourceLocked, locked):
        other.declare_queue("q", passive=True)
    with raises(ResourceLocked, locked):
        other.consume("q", "c")
    with raises(ResourceLocked, locked):
        other.get("q", no_ack=True)
    with raises(ResourceLocked, locked):
        other.delete_queue("q", if_unused=False, if_empty=False)
    assert broker.vhosts["/"].queues["q"] is q
    # Another channel of the owning connection is fine.
    sibling = owner.connection.open_channel(2, owner.sink)
    assert sibling.declare_queue("q", exclusive=True) is q


def test_exclusive_flag_mismatch_on_same_connection_is_locked(channel: Channel) -> None:
    queue(channel, "plain")
    queue(channel, "mine", exclusive=True)
    with raises(ResourceLocked, LOCKED.format("plain")):
        channel.declare_queue("plain", exclusive=True)
    with raises(ResourceLocked, LOCKED.format("mine")):
        channel.declare_queue("mine")


def test_exclusive_check_comes_before_field_checks(channel: Channel) -> None:
    # rabbit_amqqueue:perform_full_equivalence_checks: check_exclusive_access(strict)
    # runs before durable/auto_delete are compared.
    queue(channel, "q", durable=True)
    with raises(ResourceLocked, LOCKED.format("q")):
        channel.declare_queue("q", exclusive=True)


def test_exclusive_queues_go_when_their_connection_closes(broker: Broker) -> None:
    owner, _ = open_channel(broker)
    other, _ = open_channel(broker)
    vhost = broker.vhosts["/"]
    vhost.declare_exchange("x", "fanout")
    mine = queue(owner, "mine", exclusive=True)
    theirs = queue(other, "theirs", exclusive=True)
    shared = queue(owner, "shared")
    bind(owner, mine, "x", "", None)
    owner.connection.close_channel(1)
    assert "mine" in vhost.queues  # closing a channel is not closing the connection
    owner.connection.close()
    assert mine.deleted
    assert "mine" not in vhost.queues
    assert vhost.queues["theirs"] is theirs
    assert vhost.queues["shared"] is shared
    assert vhost.exchanges["x"].bindings == {}
    assert owner.connection not in broker.connections


# -- queues: last declared -----------------------------------------------------------


def test_empty_queue_name_means_last_declared(channel: Channel) -> None:
    q = queue(channel, "")
    assert channel.queue("") is q
    publish(channel, "", q.name, b"m")
    got = channel.get("", no_ack=True)
    assert got is not None and got[1].message.body == b"m"
    tag = channel.consume("", "c")
    assert q.consumers[0].tag == tag
    channel.cancel(tag)
    assert channel.delete_queue("", if_unused=False, if_empty=False) == 0
    assert q.deleted


def test_last_declared_is_per_channel(broker: Broker) -> None:
    first, _ = open_channel(broker)
    second, _ = open_channel(broker, 2, first.connection)
    queue(first, "q")
    with raises(NotFound, "no previously declared queue"):
        second.queue("")
    with raises(NotFound, "no previously declared queue"):
        second.consume("", "c")
    with raises(NotFound, "no previously declared queue"):
        second.get("", no_ack=True)
    with raises(NotFound, "no previously declared queue"):
        second.delete_queue("", if_unused=False, if_empty=False)


def test_passive_declare_of_empty_name_is_not_a_shortcut(channel: Channel) -> None:
    # rabbit_channel expands "" only for basic.get/consume, queue.delete/purge/bind/unbind.
    queue(channel, "q")
    with raises(NotFound, "no queue '' in vhost '/'"):
        channel.declare_queue("", passive=True)


# -- queues: delete ------------------------------------------------------------------


def test_delete_queue_if_unused_and_if_empty(channel: Channel) -> None:
    q = queue(channel, "q")
    tag = consume(channel, "q", "c")
    with raises(PreconditionFailed, "queue 'q' in vhost '/' in use"):
        channel.delete_queue("q", if_unused=True, if_empty=False)
    channel.cancel(tag)
    publish(channel, "", "q", b"m")
    with pytest.raises(PreconditionFailed):
        channel.delete_queue("q", if_unused=True, if_empty=True)
    assert not q.deleted
    assert channel.delete_queue("q", if_unused=True, if_empty=False) == 1
    assert q.deleted
    assert channel.delete_queue("q", if_unused=False, if_empty=False) == 0  # missing is fine


def test_delete_queue_if_empty_text(channel: Channel) -> None:
    # rabbit_amqqueue:delete_with: precondition_failed("~ts not empty", ...)
    queue(channel, "q")
    publish(channel, "", "q", b"m")
    with raises(PreconditionFailed, "queue 'q' in vhost '/' not empty"):
        channel.delete_queue("q", if_unused=False, if_empty=True)


def test_queue_deletion_cancels_consumers_and_deletes_bindings(broker: Broker) -> None:
    channel, sink = open_channel(broker)
    other, other_sink = open_channel(broker)
    vhost = channel.vhost
    vhost.declare_exchange("x", "direct")
    q = queue(channel, "q")
    bind(channel, q, "x", "a", None)
    bind(channel, q, "x", "b", None)
    consume(channel, "q", "c1")
    consume(other, "q", "c2")
    assert channel.delete_queue("q", if_unused=False, if_empty=False) == 0
    assert ("cancelled", "c1") in sink.events
    assert ("cancelled", "c2") in other_sink.events
    assert channel.consumers == {}
    assert other.consumers == {}
    assert vhost.exchanges["x"].bindings == {}
    # The same name again is a new queue with no bindings.
    fresh = queue(channel, "q")
    assert fresh is not q
    assert routed(channel, "x", "a") == []
    assert vhost.exchanges["x"].bindings == {}


# -- auto-delete ---------------------------------------------------------------------


def test_auto_delete_queue_waits_for_a_first_consumer(channel: Channel) -> None:
    q = queue(channel, "q", auto_delete=True)
    publish(channel, "", "q", b"m")
    assert channel.get("q", no_ack=True) is not None
    channel.cancel("never-registered")
    assert channel.vhost.queues["q"] is q


def test_auto_delete_queue_goes_with_its_last_consumer(broker: Broker) -> None:
    channel, _ = open_channel(broker)
    other, _ = open_channel(broker)
    vhost = channel.vhost
    vhost.declare_exchange("x", "fanout")
    q = queue(channel, "q", auto_delete=True)
    bind(channel, q, "x", "", None)
    consume(channel, "q", "c1")
    consume(other, "q", "c2")
    channel.cancel("c1")
    assert vhost.queues["q"] is q
    other.cancel("c2")
    assert q.deleted
    assert "q" not in vhost.queues
    assert vhost.exchanges["x"].bindings == {}


def test_auto_delete_queue_goes_when_consumer_channel_closes(channel: Channel) -> None:
    q = queue(channel, "q", auto_delete=True)
    consume(channel, "q", "c")
    channel.connection.close_channel(channel.number)
    assert q.deleted


def test_auto_delete_exchange_goes_with_its_last_binding(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("ad", "direct", auto_delete=True)
    q = queue(channel, "q")
    bind(channel, q, "ad", "a", None)
    bind(channel, q, "ad", "b", None)
    unbind(channel, q, "ad", "a", None)
    assert "ad" in vhost.exchanges
    unbind(channel, q, "ad", "b", None)
    assert "ad" not in vhost.exchanges


def test_auto_delete_exchange_never_bound_stays(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("ad", "direct", auto_delete=True)
    q = queue(channel, "q")
    unbind(channel, q, "ad", "k", None)  # unbinding nothing deletes nothing
    assert "ad" in vhost.exchanges


def test_auto_delete_exchange_goes_when_bound_queue_is_deleted(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("ad", "fanout", auto_delete=True)
    q = queue(channel, "q", auto_delete=True)
    bind(channel, q, "ad", "", None)
    consume(channel, "q", "c")
    channel.cancel("c")  # queue goes, then its binding, then the exchange
    assert "q" not in vhost.queues
    assert "ad" not in vhost.exchanges


def test_auto_delete_exchange_goes_when_destination_exchange_is_deleted(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("ad", "fanout", auto_delete=True)
    vhost.declare_exchange("dest", "fanout")
    vhost.bind_exchange("dest", "ad", "", None)
    vhost.delete_exchange("dest")
    assert "ad" not in vhost.exchanges


def test_auto_delete_exchange_as_destination_only_stays(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("src", "fanout")
    vhost.declare_exchange("ad", "fanout", auto_delete=True)
    vhost.bind_exchange("ad", "src", "", None)
    vhost.unbind_exchange("ad", "src", "", None)
    assert "ad" in vhost.exchanges


# -- bindings ------------------------------------------------------------------------


def test_bind_to_default_exchange_refused(channel: Channel) -> None:
    q = queue(channel, "q")
    with raises(AccessRefused, "operation not permitted on the default exchange"):
        bind(channel, q, "", "q", None)
    with raises(AccessRefused, "operation not permitted on the default exchange"):
        unbind(channel, q, "", "q", None)
    channel.vhost.declare_exchange("x", "direct")
    with raises(AccessRefused, "operation not permitted on the default exchange"):
        channel.vhost.bind_exchange("x", "", "", None)
    with raises(AccessRefused, "operation not permitted on the default exchange"):
        channel.vhost.bind_exchange("", "x", "", None)


def test_bind_to_missing_exchange(channel: Channel) -> None:
    q = queue(channel, "q")
    with raises(NotFound, "no exchange 'nope' in vhost '/'"):
        bind(channel, q, "nope", "", None)
    channel.vhost.declare_exchange("x", "direct")
    with raises(NotFound, "no exchange 'nope' in vhost '/'"):
        channel.vhost.bind_exchange("nope", "x", "", None)
    with raises(NotFound, "no exchange 'nope' in vhost '/'"):
        channel.vhost.bind_exchange("x", "nope", "", None)


def test_same_binding_twice_is_one_binding(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("x", "direct")
    q = queue(channel, "q")
    bind(channel, q, "x", "k", {"a": 1})
    bind(channel, q, "x", "k", {"a": 1})
    assert len(vhost.exchanges["x"].bindings) == 1
    unbind(channel, q, "x", "k", {"a": 1})
    assert routed(channel, "x", "k") == []


@pytest.mark.parametrize(
    ("type_", "first", "second", "key"),
    [
        ("direct", ("k", {"a": 1}), ("k", {"a": 2}), "k"),
        ("fanout", ("one", None), ("two", None), "any"),
        ("topic", ("a.*", None), ("#.b", None), "a.b"),
    ],
)
def test_unbinding_one_of_two_bindings_keeps_the_other(
    channel: Channel,
    type_: str,
    first: tuple[str, dict[str, int] | None],
    second: tuple[str, dict[str, int] | None],
    key: str,
) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("x", type_)
    q = queue(channel, "q")
    bind(channel, q, "x", *first)
    bind(channel, q, "x", *second)
    assert routed(channel, "x", key) == ["q"]
    unbind(channel, q, "x", *first)
    assert routed(channel, "x", key) == ["q"]
    unbind(channel, q, "x", *second)
    assert routed(channel, "x", key) == []


def test_headers_exchange_unbind_one_of_two_keeps_the_other(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("h", "headers")
    q = queue(channel, "q")
    bind(channel, q, "h", "", {"x-match": "any", "a": 1})
    bind(channel, q, "h", "", {"x-match": "any", "b": 2})
    unbind(channel, q, "h", "", {"x-match": "any", "a": 1})
    assert routed(channel, "h", headers={"a": 1}) == []
    assert routed(channel, "h", headers={"b": 2}) == ["q"]


# -- routing through exchanges -------------------------------------------------------


def test_default_exchange_routes_by_queue_name(channel: Channel) -> None:
    queue(channel, "q")
    assert routed(channel, "", "q") == ["q"]
    assert routed(channel, "", "nope") == []


def test_exchange_to_exchange(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("src", "direct")
    vhost.declare_exchange("dst", "topic")
    q = queue(channel, "q")
    vhost.bind_exchange("dst", "src", "a.b", None)
    bind(channel, q, "dst", "a.*", None)
    assert routed(channel, "src", "a.b") == ["q"]
    assert routed(channel, "src", "a.c") == []  # src's own binding does not match
    vhost.unbind_exchange("dst", "src", "a.b", None)
    assert routed(channel, "src", "a.b") == []


def test_exchange_cycles_end_and_each_queue_gets_the_message_once(channel: Channel) -> None:
    vhost = channel.vhost
    for name in ("a", "b", "c"):
        vhost.declare_exchange(name, "fanout")
    vhost.bind_exchange("b", "a", "", None)
    vhost.bind_exchange("c", "b", "", None)
    vhost.bind_exchange("a", "c", "", None)
    vhost.bind_exchange("a", "a", "", None)
    qa, qc = queue(channel, "qa"), queue(channel, "qc")
    bind(channel, qa, "a", "", None)
    bind(channel, qc, "c", "", None)
    bind(channel, qc, "a", "", None)
    assert routed(channel, "b") == ["qa", "qc"]
    publish(channel, "b", "")
    assert (qa.message_count, qc.message_count) == (1, 1)


def test_a_message_reaches_each_queue_once(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("t", "topic")
    vhost.declare_exchange("left", "fanout")
    vhost.declare_exchange("right", "fanout")
    q = queue(channel, "q")
    bind(channel, q, "t", "a.*", None)
    bind(channel, q, "t", "*.b", None)
    bind(channel, q, "t", "#", None)
    vhost.bind_exchange("left", "t", "a.b", None)
    vhost.bind_exchange("right", "t", "#", None)
    bind(channel, q, "left", "", None)
    bind(channel, q, "right", "", None)
    publish(channel, "t", "a.b", b"once")
    assert q.message_count == 1


def test_internal_exchange(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("front", "fanout")
    vhost.declare_exchange("inner", "fanout", internal=True)
    q = queue(channel, "q")
    vhost.bind_exchange("inner", "front", "", None)
    bind(channel, q, "inner", "", None)
    with raises(AccessRefused, "cannot publish to internal exchange 'inner' in vhost '/'"):
        publish(channel, "inner", "")
    publish(channel, "front", "")
    assert q.message_count == 1


def test_publish_to_missing_exchange(channel: Channel) -> None:
    with raises(NotFound, "no exchange 'nope' in vhost '/'"):
        publish(channel, "nope", "")


# -- alternate exchanges -------------------------------------------------------------


def test_alternate_exchange_takes_unroutable_messages(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("ae", "fanout")
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae"})
    q, spill = queue(channel, "q"), queue(channel, "spill")
    bind(channel, q, "x", "k", None)
    bind(channel, spill, "ae", "", None)
    assert routed(channel, "x", "k") == ["q"]
    assert routed(channel, "x", "other") == ["spill"]


def test_alternate_exchange_chain_and_loop(channel: Channel) -> None:
    vhost = channel.vhost
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae1"})
    vhost.declare_exchange("ae1", "direct", arguments={"alternate-exchange": b"ae2"})
    vhost.declare_exchange("ae2", "fanout")
    last = queue(channel, "last")
    bind(channel, last, "ae2", "", None)
    assert routed(channel, "x", "k") == ["last"]
    unbind(channel, last, "ae2", "", None)
    vhost.declare_exchange("loop1", "direct", arguments={"alternate-exchange": "loop2"})
    vhost.declare_exchange("loop2", "direct", arguments={"alternate-exchange": "loop1"})
    assert routed(channel, "loop1", "k") == []
    vhost.declare_exchange("dangling", "direct", arguments={"alternate-exchange": "missing"})
    assert routed(channel, "dangling", "k") == []


def test_alternate_exchange_used_only_when_the_exchange_itself_routes_nowhere(
    channel: Channel,
) -> None:
    # rabbit_exchange:route1/process_alternate: the AE is consulted when the exchange's
    # own route result is empty.  Here x routes to exchange y (which has no queues),
    # so the message is unroutable, not alternate-routed.
    vhost = channel.vhost
    vhost.declare_exchange("ae", "fanout")
    vhost.declare_exchange("y", "fanout")
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae"})
    spill = queue(channel, "spill")
    bind(channel, spill, "ae", "", None)
    vhost.bind_exchange("y", "x", "k", None)
    assert routed(channel, "x", "k") == []


def test_mandatory_message_taken_by_alternate_exchange_is_not_returned(broker: Broker) -> None:
    channel, sink = open_channel(broker)
    vhost = channel.vhost
    vhost.declare_exchange("ae", "fanout")
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae"})
    spill = queue(channel, "spill")
    bind(channel, spill, "ae", "", None)
    publish(channel, "x", "k", mandatory=True)
    assert sink.events == []
    assert spill.message_count == 1
