"""The four routers alone: which destinations a message reaches, and binding counts."""

from __future__ import annotations

from typing import Any

import pytest
from core_support import message
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.core.routing import (
    DirectRouter,
    FanoutRouter,
    HeadersRouter,
    Router,
    TopicRouter,
    headers_match,
)

# -- topic ---------------------------------------------------------------------------


def reference_topic_match(pattern: str, key: str) -> bool:
    """AMQP 0-9-1 topic matching, written the slow and obvious way.

    Both sides split on '.' (empty words count); the empty string has no words, as in
    RabbitMQ's ``split_topic_key``.
    """

    def words(text: str) -> list[str]:
        return text.split(".") if text else []

    def match(pat: list[str], key_words: list[str]) -> bool:
        if not pat:
            return not key_words
        head, rest = pat[0], pat[1:]
        if head == "#":
            return any(match(rest, key_words[i:]) for i in range(len(key_words) + 1))
        if not key_words:
            return False
        return (head == "*" or head == key_words[0]) and match(rest, key_words[1:])

    return match(words(pattern), words(key))


def topic_routes(pattern: str, key: str) -> bool:
    router = TopicRouter()
    router.bind("q", pattern, {})
    return "q" in router.route(message(key))


TOPIC_CASES = [
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b", "a.b.c", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.b.c", False),
    ("*", "a", True),
    ("*", "", False),
    ("*", "a.b", False),
    ("*", ".", False),
    ("*.*", ".", True),
    ("#", "", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("#", ".", True),
    ("#.#", "", True),
    ("#.#", "a", True),
    ("#.#", "a.b.c", True),
    ("a.#", "a", True),
    ("a.#", "a.b.c", True),
    ("a.#", "a.", True),
    ("a.#", "b.a", False),
    ("#.a", "a", True),
    ("#.a", "x.y.a", True),
    ("#.a", "a.x", False),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y.c", False),
    ("a.#.b.#.c", "a.b.c", True),
    ("a.#.b.#.c", "a.q.b.r.s.c", True),
    ("a.#.b.#.c", "a.q.c.r.s.b", False),
    ("a.*.#.b", "a.b", False),
    ("a.*.#.b", "a.x.b", True),
    ("a.*.#.b", "a.x.y.z.b", True),
    ("*.#", "", False),
    ("*.#", "a", True),
    ("#.*", "", False),
    ("#.*", "a.b", True),
    ("#.*.#", "a", True),
    ("#.b.*", "b.c", True),
    ("#.b.*", "a.b", False),
    ("*.b.#", "a.b", True),
    ("", "", True),
    ("", "a", False),
    ("a", "", False),
    ("a..b", "a..b", True),
    ("a..b", "a.b", False),
    ("a.*.b", "a..b", True),
    ("a.", "a", False),
    ("a.", "a.", True),
    ("a.*", "a.", True),
    (".", "", False),
    (".", ".", True),
    ("*", "#", True),
    ("a", "*", False),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), TOPIC_CASES)
def test_topic_pattern(pattern: str, key: str, expected: bool) -> None:
    assert reference_topic_match(pattern, key) is expected  # the table itself is right
    assert topic_routes(pattern, key) is expected


WORDS = st.sampled_from(["a", "b", ""])
PATTERN_WORDS = st.sampled_from(["a", "b", "", "*", "#"])
KEYS = st.lists(WORDS, max_size=5).map(".".join)
PATTERNS = st.lists(PATTERN_WORDS, max_size=5).map(".".join)


@settings(max_examples=300, deadline=None)
@given(
    patterns=st.lists(PATTERNS, min_size=1, max_size=8),
    keys=st.lists(KEYS, min_size=1, max_size=6),
    data=st.data(),
)
def test_topic_router_agrees_with_reference(
    patterns: list[str], keys: list[str], data: st.DataObject
) -> None:
    router = TopicRouter()
    bound = list(enumerate(patterns))  # destination i is bound with patterns[i]
    for destination, pattern in bound:
        router.bind(destination, pattern, {})

    def check() -> None:
        for key in keys:
            expected = {d for d, p in bound if reference_topic_match(p, key)}
            assert set(router.route(message(key))) == expected, key

    check()
    removed = data.draw(st.sets(st.sampled_from(range(len(bound)))), label="unbound")
    for destination in removed:
        router.unbind(destination, patterns[destination], {})
    bound = [(d, p) for d, p in bound if d not in removed]
    check()


def test_topic_destination_bound_by_two_matching_patterns_is_routed_once() -> None:
    router = TopicRouter()
    router.bind("q", "a.*", {})
    router.bind("q", "*.b", {})
    router.bind("q", "#", {})
    assert list(router.route(message("a.b"))) == ["q"]


def test_topic_unbind_one_pattern_keeps_the_other() -> None:
    router = TopicRouter()
    router.bind("q", "a.*", {})
    router.bind("q", "a.#", {})
    router.unbind("q", "a.*", {})
    assert set(router.route(message("a.b"))) == {"q"}
    router.unbind("q", "a.#", {})
    assert set(router.route(message("a.b"))) == set()


def test_topic_unbind_prefix_pattern_keeps_longer_one() -> None:
    router = TopicRouter()
    router.bind("q1", "a", {})
    router.bind("q2", "a.b", {})
    router.unbind("q1", "a", {})
    assert set(router.route(message("a"))) == set()
    assert set(router.route(message("a.b"))) == {"q2"}


def test_topic_unbind_of_unknown_pattern_is_harmless() -> None:
    router = TopicRouter()
    router.bind("q", "a.b", {})
    router.unbind("q", "a.c", {})
    router.unbind("q", "a.b.c", {})
    router.unbind("other", "a.b", {})
    assert set(router.route(message("a.b"))) == {"q"}


# -- direct and fanout ---------------------------------------------------------------


def test_direct_routes_by_exact_key() -> None:
    router = DirectRouter()
    router.bind("q1", "k", {})
    router.bind("q2", "k", {})
    router.bind("q3", "other", {})
    assert set(router.route(message("k"))) == {"q1", "q2"}
    assert set(router.route(message("K"))) == set()
    assert set(router.route(message(""))) == set()


def test_direct_same_destination_two_keys_unbind_one_keeps_other() -> None:
    router = DirectRouter()
    router.bind("q", "a", {})
    router.bind("q", "b", {})
    router.unbind("q", "a", {})
    assert set(router.route(message("a"))) == set()
    assert set(router.route(message("b"))) == {"q"}


@pytest.mark.parametrize("router_type", [DirectRouter, FanoutRouter, TopicRouter])
def test_same_key_bound_twice_needs_two_unbinds(router_type: type[Router]) -> None:
    # Two bindings that differ only in arguments reach the router with the same key.
    router = router_type()
    router.bind("q", "k", {"x": 1})
    router.bind("q", "k", {"x": 2})
    router.unbind("q", "k", {"x": 1})
    assert list(router.route(message("k"))) == ["q"]
    router.unbind("q", "k", {"x": 2})
    assert list(router.route(message("k"))) == []


def test_fanout_ignores_key_and_routes_each_destination_once() -> None:
    router = FanoutRouter()
    router.bind("q1", "a", {})
    router.bind("q1", "b", {})
    router.bind("q2", "", {})
    routed = list(router.route(message("anything")))
    assert sorted(routed) == ["q1", "q2"]
    router.unbind("q1", "a", {})
    assert sorted(router.route(message("z"))) == ["q1", "q2"]
    router.unbind("q1", "b", {})
    assert sorted(router.route(message("z"))) == ["q2"]


def test_fanout_unbind_of_unbound_destination_is_harmless() -> None:
    router = FanoutRouter()
    router.bind("q", "", {})
    router.unbind("other", "", {})
    assert list(router.route(message())) == ["q"]


# -- headers -------------------------------------------------------------------------

HEADERS_CASES: list[tuple[dict[str, Any], dict[str, Any] | None, bool]] = [
    # all (explicit and default)
    ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 3}, True),
    ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1}, False),
    ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "y"}, False),
    ({"a": 1, "b": "x"}, {"a": 1, "b": "x"}, True),
    ({"a": 1, "b": "x"}, {"a": 1, "b": "y"}, False),
    ({"x-match": "all"}, {}, True),
    ({"x-match": "all"}, None, True),
    ({}, None, True),
    ({"a": 1}, None, False),
    # any
    ({"x-match": "any", "a": 1, "b": "x"}, {"b": "x"}, True),
    ({"x-match": "any", "a": 1, "b": "x"}, {"a": 2, "b": "y"}, False),
    ({"x-match": "any", "a": 1, "b": "x"}, {"a": 2}, False),
    ({"x-match": "any", "a": 1}, None, False),
    ({"x-match": "any"}, {"a": 1}, False),
    # x- keys of the binding are ignored without -with-x, headers' x- keys too
    ({"x-match": "all", "x-k": "v", "a": 1}, {"a": 1}, True),
    ({"x-match": "any", "x-k": "v"}, {"x-k": "v"}, False),
    ({"x-match": "all", "a": 1}, {"a": 1, "x-k": "v"}, True),
    # -with-x: x- keys take part; x-match itself never does
    ({"x-match": "all-with-x", "x-k": "v"}, {"x-k": "v"}, True),
    ({"x-match": "all-with-x", "x-k": "v", "a": 1}, {"x-k": "v", "a": 1}, True),
    ({"x-match": "all-with-x", "x-k": "v", "a": 1}, {"a": 1}, False),
    ({"x-match": "all-with-x", "x-k": "v"}, {"x-k": "w"}, False),
    ({"x-match": "any-with-x", "x-k": "v", "a": 1}, {"x-k": "v"}, True),
    ({"x-match": "any-with-x", "x-k": "v", "a": 1}, {"a": 1}, True),
    ({"x-match": "any-with-x", "x-k": "v", "a": 1}, {"x-k": "w", "a": 2}, False),
    ({"x-match": "any-with-x", "x-k": "v"}, {}, False),
    ({"x-match": "any-with-x", "a": 1}, {"x-match": "any-with-x"}, False),
    # void binding values ask only for presence
    ({"a": None}, {"a": "anything"}, True),
    ({"a": None}, {"a": None}, True),
    ({"a": None}, {"b": 1}, False),
    ({"x-match": "any", "a": None, "b": 1}, {"a": 0}, True),
    # bool is not int (RabbitMQ compares Erlang terms: true /= 1)
    ({"a": True}, {"a": True}, True),
    ({"a": True}, {"a": 1}, False),
    ({"a": 1}, {"a": True}, False),
    ({"a": False}, {"a": 0}, False),
    ({"a": 0}, {"a": False}, False),
    # longstr arrives as str or bytes
    ({"a": "v"}, {"a": b"v"}, True),
    ({"a": b"v"}, {"a": "v"}, True),
    ({"a": "v"}, {"a": b"w"}, False),
    # x-match itself may arrive as bytes
    ({"x-match": b"any", "a": 1, "b": 2}, {"b": 2}, True),
]


@pytest.mark.parametrize(("binding", "headers", "expected"), HEADERS_CASES)
def test_headers_match(
    binding: dict[str, Any], headers: dict[str, Any] | None, expected: bool
) -> None:
    assert headers_match(binding, headers) is expected


def test_headers_all_with_x_does_not_compare_x_match_against_the_headers() -> None:
    # RabbitMQ's rabbit_exchange_type_headers "always deletes binding x-match".
    binding = {"x-match": "all-with-x", "a": 1}
    assert headers_match(binding, {"a": 1}) is True


def test_headers_router_routes_destination_bound_twice_once_and_unbinds_one() -> None:
    router = HeadersRouter()
    first = {"x-match": "any", "a": 1}
    second = {"x-match": "any", "b": 2}
    router.bind("q", "", first)
    router.bind("q", "", second)
    router.bind("q2", "", {"c": 3})
    assert list(router.route(message(headers={"a": 1, "b": 2}))) == ["q"]
    router.unbind("q", "", second)
    assert list(router.route(message(headers={"b": 2}))) == []
    assert list(router.route(message(headers={"a": 1}))) == ["q"]
    assert list(router.route(message(headers={"c": 3}))) == ["q2"]
    router.unbind("q", "", second)  # no longer bound: nothing changes
    assert list(router.route(message(headers={"a": 1}))) == ["q"]
