"""Routing tables of the four exchange types.

Each router maps a message to a set of destinations (queues or exchanges).  A
destination may be bound more than once (other keys, other arguments); routers count
bindings per destination so that unbinding one of them keeps the others, and a
message reaches each destination once.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from typing import Any

from .message import Message

__all__ = [
    "DirectRouter",
    "FanoutRouter",
    "HeadersRouter",
    "Router",
    "TopicRouter",
    "headers_match",
]

Args = Mapping[str, Any]
_EMPTY: tuple[Hashable, ...] = ()


class Router:
    """Bindings of one exchange, indexed for routing."""

    def bind(self, destination: Hashable, key: str, arguments: Args) -> None:
        raise NotImplementedError

    def unbind(self, destination: Hashable, key: str, arguments: Args) -> None:
        raise NotImplementedError

    def route(self, message: Message) -> Collection[Hashable]:
        raise NotImplementedError


def _add(counts: dict[Hashable, int], destination: Hashable) -> None:
    counts[destination] = counts.get(destination, 0) + 1


def _remove(counts: dict[Hashable, int], destination: Hashable) -> None:
    left = counts.get(destination, 0) - 1
    if left > 0:
        counts[destination] = left
    else:
        counts.pop(destination, None)


class DirectRouter(Router):
    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[str, dict[Hashable, int]] = {}

    def bind(self, destination: Hashable, key: str, arguments: Args) -> None:
        _add(self._by_key.setdefault(key, {}), destination)

    def unbind(self, destination: Hashable, key: str, arguments: Args) -> None:
        counts = self._by_key.get(key)
        if counts is not None:
            _remove(counts, destination)
            if not counts:
                del self._by_key[key]

    def route(self, message: Message) -> Collection[Hashable]:
        return self._by_key.get(message.routing_key, _EMPTY)


class FanoutRouter(Router):
    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[Hashable, int] = {}

    def bind(self, destination: Hashable, key: str, arguments: Args) -> None:
        _add(self._counts, destination)

    def unbind(self, destination: Hashable, key: str, arguments: Args) -> None:
        _remove(self._counts, destination)

    def route(self, message: Message) -> Collection[Hashable]:
        return self._counts


def split_topic(key: str) -> list[str]:
    # As RabbitMQ: the empty key has no words; otherwise empty words count ("a..b").
    return key.split(".") if key else []


class _TopicNode:
    __slots__ = ("children", "destinations")

    def __init__(self) -> None:
        self.children: dict[str, _TopicNode] = {}
        self.destinations: dict[Hashable, int] = {}


class TopicRouter(Router):
    """A trie over binding-key words; ``*`` matches one word, ``#`` zero or more."""

    __slots__ = ("_root",)

    def __init__(self) -> None:
        self._root = _TopicNode()

    def bind(self, destination: Hashable, key: str, arguments: Args) -> None:
        node = self._root
        for word in split_topic(key):
            node = node.children.setdefault(word, _TopicNode())
        _add(node.destinations, destination)

    def unbind(self, destination: Hashable, key: str, arguments: Args) -> None:
        path = [self._root]
        words = split_topic(key)
        for word in words:
            child = path[-1].children.get(word)
            if child is None:
                return
            path.append(child)
        _remove(path[-1].destinations, destination)
        for depth in range(len(words), 0, -1):  # prune empty branches
            node = path[depth]
            if node.children or node.destinations:
                break
            del path[depth - 1].children[words[depth - 1]]

    def route(self, message: Message) -> Collection[Hashable]:
        found: dict[Hashable, None] = {}
        _match(self._root, split_topic(message.routing_key), 0, found)
        return found


def _match(node: _TopicNode, words: list[str], i: int, found: dict[Hashable, None]) -> None:
    children = node.children
    if i == len(words):
        found.update(dict.fromkeys(node.destinations))
    else:
        child = children.get(words[i])
        if child is not None:
            _match(child, words, i + 1, found)
        child = children.get("*")
        if child is not None:
            _match(child, words, i + 1, found)
    hash_child = children.get("#")
    if hash_child is not None:
        for j in range(i, len(words) + 1):
            _match(hash_child, words, j, found)


def headers_match(binding: Args, headers: Mapping[str, Any] | None) -> bool:
    """RabbitMQ's headers-exchange rule for one binding.

    ``x-match`` is ``all`` (default), ``any``, ``all-with-x`` or ``any-with-x``;
    binding keys starting with ``x-`` take part only in the ``-with-x`` modes.  A
    binding value of void (None) asks only that the header be present.
    """
    mode = binding.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode("utf-8", "replace")
    with_x = mode.endswith("-with-x")
    match_any = mode.startswith("any")
    headers = headers or {}
    for key, expected in binding.items():
        if key == "x-match" or (key.startswith("x-") and not with_x):
            continue
        present = key in headers
        matched = present and (expected is None or _same_value(headers[key], expected))
        if match_any and matched:
            return True
        if not match_any and not matched:
            return False
    return not match_any


def _same_value(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bytes) and isinstance(expected, str):
        return actual == expected.encode("utf-8")
    if isinstance(actual, str) and isinstance(expected, bytes):
        return actual.encode("utf-8") == expected
    # Numbers match across integer widths (docs/compatibility.md), but not across
    # kinds: RabbitMQ never matches a boolean, an integer, a float and a decimal.
    if _kind(actual) != _kind(expected):
        return False
    return bool(actual == expected)


def _kind(value: Any) -> type:
    if isinstance(value, bool):
        return bool
    if isinstance(value, int):
        return int
    if isinstance(value, str | bytes):
        return str
    return type(value)


class HeadersRouter(Router):
    __slots__ = ("_bindings",)

    def __init__(self) -> None:
        self._bindings: list[tuple[Hashable, Args]] = []

    def bind(self, destination: Hashable, key: str, arguments: Args) -> None:
        self._bindings.append((destination, arguments))

    def unbind(self, destination: Hashable, key: str, arguments: Args) -> None:
        for i, (bound, args) in enumerate(self._bindings):
            if bound is destination and args == arguments:
                del self._bindings[i]
                return

    def route(self, message: Message) -> Collection[Hashable]:
        headers = message.properties.headers
        found: dict[Hashable, None] = {}
        for destination, args in self._bindings:
            if destination not in found and headers_match(args, headers):
                found[destination] = None
        return found
