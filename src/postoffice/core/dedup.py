"""De-duplication, as the RabbitMQ plugin rabbitmq-message-deduplication (noxdafox) does it.

Two independent features, both keyed by the ``x-deduplication-header`` message header
(a message without it is never a duplicate):

Exchange level: :class:`DeduplicatingExchange`, the exchange type
``x-message-deduplication``.  It remembers the keys it has routed, for ``x-cache-ttl``
milliseconds (the exchange argument, or the message's own ``x-cache-ttl`` header,
which wins; with neither, for ever), at most ``x-cache-size`` of them.  A message whose
key it remembers is not routed: as in the plugin, where the exchange's ``route``
returns no queue, the broker treats it as unroutable, so it goes to the alternate
exchange if there is one, a ``mandatory`` publisher gets basic.return 312 NO_ROUTE,
and a confirming publisher gets basic.ack.  A key that is seen again does not get a
longer life.  Messages route like a fanout exchange: to every binding, whatever the
routing key (the plugin routes with ``rabbit_router:match_routing_key(X, ['_'])``).

* The cache is full when it holds ``x-cache-size`` keys: expired keys go first, then
  the oldest key (the plugin drops Mnesia's "first" key, an unspecified one).
* ``x-cache-persistence: disk`` on a durable exchange keeps the window across restarts
  and crashes: each key is a tiny message in the store queue
  ``vhost.internal_queue("dedup", exchange)``, with its expiry (epoch ms, 0 for none) as
  the message time and :func:`encode_key`'s bytes as its body, settled when the key
  expires or is evicted and read back when the exchange is restored.  A publish that
  wrote a key, or hit a key of a durable window, is confirmed only once the store has
  synced: an ack means the key is on disk.
* Expiry is checked on every lookup (a key is gone at its expiry, to the millisecond);
  one timer, armed for the earliest expiry and then at most once a second, sweeps
  expired keys out of memory and out of the store.

Queue level: :class:`QueueDeduplication`, for a queue declared with
``x-message-deduplication``.  A message whose key belongs to a message in the queue is
a duplicate.  The key is the queue's until the message leaves it (the plugin removes
it on ack, on a no-ack delivery, on reject, when the message is dropped or purged) or
until the message's TTL (``expiration`` property, else the queue's ``x-message-ttl``)
has passed.  :class:`~postoffice.core.ruled.RuledQueue` calls :meth:`admit` and
:meth:`release`; what it does with a duplicate is its business.

Keys compare as the plugin's Mnesia table compares Erlang terms: a string and a byte
array with the same bytes are one key, as are integers of any width (and a timestamp
with its seconds); a float is never an integer, nor a boolean an integer; a void value
is a key of its own.  Arrays and tables (which crash the plugin) are keys too.

Declare-time errors reproduce the plugin's ``validate/1`` texts byte for byte, with the
run of spaces that its Elixir line continuations leave inside them.
See docs/compatibility.md ("De-duplication and exactly-once publishing") for every
difference from the plugin.
"""

from __future__ import annotations

import calendar
import heapq
import re
import struct
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..errors import PreconditionFailed
from ..store import QueueRecord
from .arguments import MAX_EXPIRY_MS, int_argument, text_argument
from .deadletter import parse_expiration

if TYPE_CHECKING:
    from .clock import Clock
    from .exchange import Exchange
    from .message import Message
    from .queue import Queue
    from .timers import Timer
    from .vhost import VHost

__all__ = [
    "CACHE_TTL_HEADER",
    "DEDUP_HEADER",
    "DeduplicatingExchange",
    "QueueDeduplication",
    "decode_key",
    "encode_key",
    "message_key",
]

DEDUP_HEADER = "x-deduplication-header"
CACHE_TTL_HEADER = "x-cache-ttl"

# The plugin's texts (rabbit_message_deduplication_exchange.ex, validate/1).  Each is
# an Elixir string continued on the next source line with a backslash, which keeps
# that line's indentation: hence the runs of spaces, which differ between branches.
SIZE_ERROR = (
    "Missing or invalid argument, " + " " * 10 + "'x-cache-size' must be an integer greater than 0"
)
SIZE_STRING_ERROR = (
    "Missing or invalid argument, " + " " * 22 + "'x-cache-size' must be an integer greater than 0"
)
TTL_ERROR = "Invalid argument, " + " " * 13 + "'x-cache-ttl' must be an integer greater than 0"
TTL_STRING_ERROR = (
    "Invalid argument, " + " " * 22 + "'x-cache-ttl' must be an integer greater than 0"
)
PERSISTENCE_ERROR = (
    "Invalid argument, " + " " * 13 + "'x-cache-persistence' must be either 'disk' or 'memory'"
)

# Version byte in front of a key stored as a message body.
_KEY_FORMAT = b"\x01"
# After a sweep, the next one waits at least this long (ms): under a steady stream of
# keys a sweep per key would cost more than the keys.  Lookups check expiry themselves.
_SWEEP_SPACING_MS = 1000
_INTEGER = re.compile(r"[+-]?[0-9]+")
_FRAME = struct.Struct(">I")


# -- keys --------------------------------------------------------------------------


def message_key(message: Message) -> bytes | None:
    """The message's de-duplication key, or None when it has no ``x-deduplication-header``."""
    headers = message.properties.headers
    if not headers or DEDUP_HEADER not in headers:
        return None
    return encode_key(headers[DEDUP_HEADER])


def encode_key(value: Any) -> bytes:
    """A header value as bytes that are equal exactly when the plugin's keys are equal.

    A tag and a payload: ``S`` text or bytes, ``l`` integer (timestamps too), ``d``
    float, ``t`` boolean, ``D`` decimal, ``V`` void, ``A`` array and ``F`` table of
    length-framed items.
    """
    if value is None:
        return b"V"
    if isinstance(value, bool):
        return b"t1" if value else b"t0"
    if isinstance(value, int):
        return b"l%d" % value
    if isinstance(value, float):
        return b"d" + repr(value).encode()
    if isinstance(value, str):
        return b"S" + value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes | bytearray | memoryview):
        return b"S" + bytes(value)
    if isinstance(value, Decimal):
        return b"D" + str(value).encode()
    if isinstance(value, datetime):
        return b"l%d" % calendar.timegm(value.utctimetuple())
    if isinstance(value, list | tuple):
        return b"A" + b"".join(_framed(encode_key(item)) for item in value)
    if isinstance(value, Mapping):
        items = sorted((encode_key(k), encode_key(v)) for k, v in value.items())
        return b"F" + b"".join(_framed(k) + _framed(v) for k, v in items)
    return b"?" + repr(value).encode()


def decode_key(key: bytes) -> Any:
    """The value :func:`encode_key` made ``key`` from, for texts, bytes, numbers, booleans
    and void (strings come back as str when they are UTF-8); the key itself otherwise."""
    tag, payload = key[:1], key[1:]
    if tag == b"S":
        try:
            return payload.decode()
        except UnicodeDecodeError:
            return payload
    if tag == b"l":
        return int(payload)
    if tag == b"d":
        return float(payload)
    if tag == b"t":
        return payload == b"1"
    if tag == b"V":
        return None
    return key


def _framed(data: bytes) -> bytes:
    return _FRAME.pack(len(data)) + data


# -- arguments ---------------------------------------------------------------------


def _check_number(value: Any, error: str, string_error: str) -> None:
    """The plugin's rule: a positive integer of any width, or a string of an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value > 0:
            return
        raise PreconditionFailed(error)
    text = text_argument(value)
    if text is None:
        raise PreconditionFailed(error)
    if not _INTEGER.fullmatch(text) or int(text) <= 0:
        raise PreconditionFailed(string_error)


def _number(value: Any) -> int | None:
    """A checked ``x-cache-size`` or ``x-cache-ttl`` as an int (the plugin's
    ``rabbit_argument(..., type: :number)``), None when absent or unreadable."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = text_argument(value)
    if text is not None and _INTEGER.fullmatch(text):
        return int(text)
    return None


def _header_ttl(message: Message) -> float | None:
    """The message's ``x-cache-ttl`` header in ms; None when absent or not a number (the
    plugin fails the publish on those)."""
    headers = message.properties.headers
    value = headers.get(CACHE_TTL_HEADER) if headers else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None


# -- queue level -------------------------------------------------------------------


class QueueDeduplication:
    """The keys of the messages in a queue (``x-message-deduplication``).

    With a ``clock``, a key also lapses at its message's TTL, as in the plugin (whose
    queue cache entries expire with the message's ``expiration``, else the queue's
    ``x-message-ttl``), even while the message waits for an ack.
    """

    __slots__ = ("_clock", "_ttl", "keys")

    @staticmethod
    def wanted(arguments: Mapping[str, Any]) -> bool:
        # As the plugin reads it: any value but false (or none) turns it on.
        value = arguments.get("x-message-deduplication")
        return value is not None and value is not False

    def __init__(self, arguments: Mapping[str, Any], clock: Clock | None = None) -> None:
        # key -> when it lapses (epoch seconds), or None for never.
        self.keys: dict[bytes, float | None] = {}
        ttl = arguments.get("x-message-ttl")
        self._ttl = int_argument(ttl)
        self._clock = clock

    def admit(self, message: Message) -> bool:
        """False when ``message`` duplicates one in the queue; otherwise its key (if any)
        is the queue's from now on."""
        key = message_key(message)
        if key is None:
            return True
        keys = self.keys
        if key in keys:
            lapses = keys[key]
            if lapses is None or self._clock is None or lapses > self._clock.time():
                return False
        keys[key] = self._lapses(message)
        return True

    def release(self, message: Message) -> None:
        """``message`` left the queue: its key may come again."""
        key = message_key(message)
        if key is not None:
            self.keys.pop(key, None)

    def __len__(self) -> int:
        return len(self.keys)

    def _lapses(self, message: Message) -> float | None:
        if self._clock is None:
            return None
        ttl = self._ttl
        expiration = message.properties.expiration
        if expiration is not None:
            ttl = parse_expiration(expiration)  # the plugin: the message's TTL wins
        return None if ttl is None else self._clock.time() + ttl / 1000


# -- exchange level ----------------------------------------------------------------


class _Key:
    """A remembered key: when it expires (epoch ms, 0 for never) and its store message."""

    __slots__ = ("expiry", "store_id")

    def __init__(self, expiry: int, store_id: int) -> None:
        self.expiry = expiry
        self.store_id = store_id


class DeduplicatingExchange:
    """The behaviour of an ``x-message-deduplication`` exchange (see the module docstring)."""

    @staticmethod
    def check_arguments(arguments: Mapping[str, Any], what: str) -> None:
        """406 with the plugin's texts, checked in the plugin's order."""
        _check_number(arguments.get("x-cache-size"), SIZE_ERROR, SIZE_STRING_ERROR)
        if "x-cache-ttl" in arguments:
            _check_number(arguments["x-cache-ttl"], TTL_ERROR, TTL_STRING_ERROR)
        if "x-cache-persistence" in arguments and arguments["x-cache-persistence"] not in (
            "disk",
            "memory",
        ):
            raise PreconditionFailed(PERSISTENCE_ERROR)

    @staticmethod
    def routing_type(arguments: Mapping[str, Any]) -> str:
        return "fanout"

    def __init__(self, vhost: VHost, exchange: Exchange) -> None:
        self.vhost = vhost
        self.exchange = exchange
        arguments = exchange.arguments
        # Checked at declare; a record from an older broker could hold anything.
        self.size = max(1, _number(arguments.get("x-cache-size")) or 1)
        self.ttl = _number(arguments.get("x-cache-ttl"))  # ms, or None
        persistent = exchange.durable and arguments.get("x-cache-persistence") == "disk"
        self.record: QueueRecord | None = (
            vhost.internal_queue("dedup", exchange) if persistent else None
        )
        self._record_put = False
        # Insertion order is age order: the first key is the one evicted.
        self.keys: dict[bytes, _Key] = {}
        # (expiry, tiebreak, key, entry) of keys that expire; stale ones skipped.
        self._expiries: list[tuple[int, int, bytes, _Key]] = []
        self._pushed = 0
        self._timer: Timer | None = None
        self._timer_at = 0  # epoch ms the timer is armed for
        if self.record is not None:
            self._recover(self.record)

    # -- publishing ----------------------------------------------------------------

    def publish(self, message: Message, queues: list[Queue], expiring: bool) -> int | None:
        key = message_key(message)
        if key is None:
            return None
        from .vhost import STORED  # vhost imports this module (through plugins)

        durable = STORED if self.record is not None else 0
        now = self._now()
        known = self.keys.get(key)
        if known is not None:
            if not known.expiry or known.expiry > now:
                return self._unroutable(message, expiring) | durable
            self._forget(key, known)
        if not durable:
            self._remember(key, now, _header_ttl(message))
            return None
        # The message goes to the store before its key: a write torn by a crash then
        # loses the key first, and a retry is a duplicate at worst, never a loss.
        routed = self.vhost.enqueue(message, queues, expiring) if queues else 0
        self._remember(key, now, _header_ttl(message))
        return routed | durable

    def _unroutable(self, message: Message, expiring: bool) -> int:
        """A duplicate: routed as a message the exchange routes nowhere, i.e. to the
        alternate exchange if there is one."""
        vhost = self.vhost
        name = self.exchange.alternate
        alternate = vhost.exchanges.get(name) if name is not None else None
        if alternate is None or alternate is self.exchange:
            return 0
        queues = vhost.route(alternate, message)
        return vhost.enqueue(message, queues, expiring) if queues else 0

    def deleted(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.keys.clear()
        self._expiries.clear()
        if self.record is not None:
            self.vhost.store.delete(self.record)
            self._record_put = False

    # -- the window ----------------------------------------------------------------

    def _now(self) -> int:
        return int(self.vhost.clock.time() * 1000)

    def _remember(self, key: bytes, now: int, header_ttl: float | None) -> bool:
        """Records a key that was not in the window; False if it expires at once."""
        ttl = header_ttl if header_ttl is not None else self.ttl
        if ttl is not None and ttl <= 0:
            return False  # as the plugin's: expired on its next lookup
        # A TTL beyond ten years keeps the key as long as one of ten years would
        # (and its expiry fits the store's 64-bit time).
        expiry = now + max(1, min(round(ttl), MAX_EXPIRY_MS)) if ttl is not None else 0
        if len(self.keys) >= self.size:
            self._sweep(now)
            while len(self.keys) >= self.size:
                oldest = next(iter(self.keys))
                self._forget(oldest, self.keys[oldest])
        entry = _Key(expiry, self._write(key, expiry) if self.record is not None else 0)
        self.keys[key] = entry
        if expiry:
            self._schedule(key, entry)
        return True

    def _forget(self, key: bytes, entry: _Key) -> None:
        del self.keys[key]
        if entry.store_id and self.record is not None:
            self.vhost.store.settle(self.vhost.name, self.record.name, [entry.store_id])

    def _schedule(self, key: bytes, entry: _Key) -> None:
        heap = self._expiries
        self._pushed += 1
        heapq.heappush(heap, (entry.expiry, self._pushed, key, entry))
        if len(heap) > 2 * len(self.keys) + 64:
            # Evicted keys leave their expiries behind: rebuild rather than grow.
            heap[:] = [item for item in heap if self.keys.get(item[2]) is item[3]]
            heapq.heapify(heap)
        if self._timer is None or entry.expiry < self._timer_at:
            self._arm(entry.expiry)

    def _arm(self, at: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        vhost = self.vhost
        delay = max(0.0, (at - self._now()) / 1000)
        self._timer_at = at
        self._timer = vhost.timers.call_at(vhost.clock.monotonic() + delay, self._expire_due)

    def _expire_due(self) -> None:
        self._timer = None
        now = self._now()
        self._sweep(now)
        heap = self._expiries
        if heap:
            self._arm(max(heap[0][0], now + _SWEEP_SPACING_MS))

    def _sweep(self, now: int) -> None:
        """Drops every key expired by ``now``, from memory and from the store."""
        heap = self._expiries
        keys = self.keys
        settled: list[int] = []
        while heap and heap[0][0] <= now:
            _, _, key, entry = heapq.heappop(heap)
            if keys.get(key) is entry:
                del keys[key]
                if entry.store_id:
                    settled.append(entry.store_id)
        if settled and self.record is not None:
            self.vhost.store.settle(self.vhost.name, self.record.name, settled)

    # -- persistence ---------------------------------------------------------------

    def _write(self, key: bytes, expiry: int) -> int:
        record = self.record
        assert record is not None
        store = self.vhost.store
        if not self._record_put:
            store.put(record)
            self._record_put = True
        return store.publish(
            self.vhost.name, [record.name], self.exchange.name, "", b"", _KEY_FORMAT + key, expiry
        )

    def _recover(self, record: QueueRecord) -> None:
        """The window as the store kept it, less the keys that expired meanwhile."""
        store = self.vhost.store
        now = self._now()
        dropped: list[int] = []
        for store_id, _, expiry in list(store.index(self.vhost.name, record.name)):
            self._record_put = True
            if expiry and expiry <= now:
                dropped.append(store_id)
                continue
            body = store.read(store_id)[3]
            if not body.startswith(_KEY_FORMAT):
                dropped.append(store_id)  # a format this version does not know
                continue
            key = body[len(_KEY_FORMAT) :]
            older = self.keys.pop(key, None)
            if older is not None:
                dropped.append(older.store_id)
            entry = self.keys[key] = _Key(expiry, store_id)
            if expiry:
                self._schedule(key, entry)
        while len(self.keys) > self.size:
            oldest = next(iter(self.keys))
            dropped.append(self.keys.pop(oldest).store_id)
        if dropped:
            store.settle(self.vhost.name, record.name, dropped)
