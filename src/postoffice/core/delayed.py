"""Delayed messages: the ``x-delayed-message`` exchange type of rabbitmq-delayed-message-exchange.

An exchange of this type routes as the type in its ``x-delayed-type`` argument; a
message published to it with an ``x-delay`` header (milliseconds, an integer above
0) is held and routed when the delay has passed, to the queues bound at that time.
Messages without a positive ``x-delay`` are routed at once.

Better than the plugin, on purpose (docs/compatibility.md):

* ``mandatory`` is honoured: a message that routes nowhere at publish time is
  returned (or dropped), not held.
* A persistent message held by a durable exchange is in the store before the
  publisher's confirm, and survives restarts and kill -9; at its due time it is
  routed (and stored for its durable queues) before its held copy is settled, so a
  crash in between leaves a duplicate at worst, never a loss.
* Bounded memory: a held persistent message costs 16 bytes of RAM (its due time and
  store id in an array of its second), its body stays on disk until it is due;
  only the messages due in the current second are in a heap.
* ``waiting`` counts the held messages, per exchange.

Due times are wall-clock milliseconds (so they mean the same after a restart);
messages are routed by a timer at their due time, those due within the same 5 ms
together (one store flush for them all).
"""

from __future__ import annotations

import heapq
import logging
from array import array
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import PreconditionFailed
from .arguments import int_argument, text_argument
from .exchange import EXCHANGE_TYPES

if TYPE_CHECKING:
    from .exchange import Exchange
    from .message import Message
    from .queue import Queue
    from .timers import Timer
    from .vhost import VHost

__all__ = ["DelayedExchange"]

log = logging.getLogger("postoffice.core")

# The plugin's documented longest delay, 2^32 - 1 ms (about 49.7 days); longer
# delays are cut to it.
MAX_DELAY_MS = 2**32 - 1

_ROUTED, _STORED = 1, 2  # VHost.enqueue's bits (vhost imports this module)
_BUCKET_MS = 1000
_SLOT_MS = 5


class _Bucket:
    """The messages due within one second: stored ones as (due, id) pairs, transient
    ones as (due, message)."""

    __slots__ = ("stored", "transient")

    def __init__(self) -> None:
        self.stored = array("q")
        self.transient: list[tuple[int, Message]] = []


class DelayedExchange:
    @staticmethod
    def check_arguments(arguments: Mapping[str, Any], what: str) -> None:
        kind = text_argument(arguments.get("x-delayed-type"))
        if kind not in EXCHANGE_TYPES:
            # The plugin's text, word for word.
            raise PreconditionFailed(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type"
            )

    @staticmethod
    def routing_type(arguments: Mapping[str, Any]) -> str:
        kind = text_argument(arguments.get("x-delayed-type"))
        return kind if kind in EXCHANGE_TYPES else "direct"

    def __init__(self, vhost: VHost, exchange: Exchange) -> None:
        self.vhost = vhost
        self.exchange = exchange
        self.record = vhost.internal_queue("delayed", exchange)
        self._buckets: dict[int, _Bucket] = {}
        self._starts: list[int] = []  # bucket numbers, a heap
        self._due: list[tuple[int, int, int, Message | None]] = []  # (due, seq, id, message)
        self._seq = 0
        self._loaded_upto = -1  # buckets up to this number are in the heap
        self._registered = False  # the store queue's record put since start-up
        self._timer: Timer | None = None
        self.waiting = 0
        if exchange.durable:
            self._open()

    # -- publishing ------------------------------------------------------------------

    def publish(self, message: Message, queues: list[Queue], expiring: bool) -> int | None:
        delay = _delay(message.properties.headers)
        if delay <= 0 or not queues:
            return None  # routed now (and returned if mandatory and unroutable)
        due = int(self.vhost.clock.time() * 1000) + delay
        if self.exchange.durable and message.properties.persistent:
            store = self.vhost.store
            if not self._registered:
                store.put(self.record)  # the store keeps a queue's messages while it is defined
                self._registered = True
            store_id = store.publish(
                self.vhost.name,
                [self.record.name],
                message.exchange,
                message.routing_key,
                message.properties.raw,
                message.body,
                due,
            )
            self._hold(due, store_id, None)
            return _ROUTED | _STORED
        self._hold(due, 0, message)
        return _ROUTED

    def _hold(self, due: int, store_id: int, message: Message | None) -> None:
        self.waiting += 1
        number = due // _BUCKET_MS
        if number <= self._loaded_upto:
            self._push(due, store_id, message)
        else:
            bucket = self._buckets.get(number)
            if bucket is None:
                bucket = self._buckets[number] = _Bucket()
                heapq.heappush(self._starts, number)
            if message is None:
                bucket.stored.extend((due, store_id))
            else:
                bucket.transient.append((due, message))
        self._arm()

    def _push(self, due: int, store_id: int, message: Message | None) -> None:
        self._seq += 1
        heapq.heappush(self._due, (due, self._seq, store_id, message))

    # -- the timer ---------------------------------------------------------------------

    def _next_due(self) -> int | None:
        candidates = []
        if self._due:
            candidates.append(self._due[0][0])
        if self._starts:
            candidates.append(self._starts[0] * _BUCKET_MS)
        return min(candidates) if candidates else None

    def _arm(self) -> None:
        due = self._next_due()
        if due is None:
            return
        timer = self._timer
        # Releases are batched in slots of a few ms: one store flush (one fsync) per
        # slot rather than per message when many fall due together.
        due = -(-due // _SLOT_MS) * _SLOT_MS
        when = self.vhost.clock.monotonic() + max(0.0, due / 1000 - self.vhost.clock.time())
        if timer is not None and not timer.cancelled and timer.when <= when:
            return
        if timer is not None:
            timer.cancel()
        self._timer = self.vhost.timers.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = int(self.vhost.clock.time() * 1000)
        self._loaded_upto = max(self._loaded_upto, now // _BUCKET_MS)
        while self._starts and self._starts[0] <= self._loaded_upto:
            bucket = self._buckets.pop(heapq.heappop(self._starts))
            stored = bucket.stored
            for index in range(0, len(stored), 2):
                self._push(stored[index], stored[index + 1], None)
            for due, held in bucket.transient:
                self._push(due, 0, held)
        while self._due and self._due[0][0] <= now:
            _, _, store_id, message = heapq.heappop(self._due)
            self._release(store_id, message)
        self._arm()

    def _release(self, store_id: int, message: Message | None) -> None:
        """Routes a message whose time has come, then lets go of its held copy."""
        self.waiting -= 1
        vhost = self.vhost
        if message is None:
            message = vhost.page_in_id(store_id)
        if vhost.exchanges.get(self.exchange.name) is self.exchange:
            queues = vhost.route(self.exchange, message)
            if queues:
                vhost.enqueue(message, queues, message.properties.expiration is not None)
        if store_id:
            vhost.store.settle(vhost.name, self.record.name, [store_id])

    # -- life -------------------------------------------------------------------------

    def _open(self) -> None:
        """A durable exchange's store queue, and the messages it held before a restart."""
        store = self.vhost.store
        count = 0
        for store_id, _deliveries, due in store.index(self.vhost.name, self.record.name):
            self._hold(due, store_id, None)
            count += 1
        if count:
            self._registered = True
            log.info(
                "exchange '%s' in vhost '%s': %d delayed messages recovered",
                self.exchange.name,
                self.vhost.name,
                count,
            )

    def deleted(self) -> None:
        """The exchange is gone: its held messages go too, as with the plugin."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buckets.clear()
        self._starts.clear()
        self._due.clear()
        self.waiting = 0
        if self.exchange.durable:
            self.vhost.store.delete(self.record)


def _delay(headers: dict[str, Any] | None) -> int:
    if not headers:
        return 0
    delay = int_argument(headers.get("x-delay"))
    return 0 if delay is None else min(delay, MAX_DELAY_MS)
