"""The narrow interface between the broker model and durable storage.

Two halves:

* definitions: durable vhosts, exchanges, queues, bindings (records of
  :mod:`postoffice.store.records`), put and deleted one at a time;
* messages: persistent messages on durable queues.  A message published to several
  durable queues is stored once (:meth:`Store.publish` takes all its queues) and
  each queue settles its copy independently; the body is dropped when the last
  queue has settled it.

Durability is asynchronous and batched (group commit): calls record intent at once
and ``sync(callback)`` runs ``callback`` when everything recorded before it is on
stable storage.  The server drives the batching: it sets :attr:`Store.wakeup` to a
function that schedules :meth:`Store.flush` for the end of the current event-loop
turn, and the store calls ``wakeup()`` whenever it holds unflushed work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from .records import Definitions, Record

__all__ = ["RecoveredMessage", "Store"]


@dataclass(frozen=True, slots=True)
class RecoveredMessage:
    """A message found in a durable queue at start-up."""

    message_id: int
    exchange: str
    routing_key: str
    properties: bytes  # the content header's property flags and values, byte for byte
    body: bytes
    redelivered: bool  # it may have reached a consumer before the restart
    delivery_count: int  # deliveries recorded so far (for x-delivery-limit)
    time_ms: int = 0  # as given to Store.publish: epoch milliseconds, 0 for none


class Store(Protocol):
    """Durable storage behind the broker (see the module docstring)."""

    wakeup: Callable[[], None]

    # -- definitions ----------------------------------------------------------------

    def recover(self) -> Definitions:
        """Every durable definition, in an order that can be replayed."""
        ...

    def put(self, record: Record) -> None: ...

    def delete(self, record: Record) -> None:
        """Deletes a definition; deleting a queue also drops its messages."""
        ...

    # -- messages -------------------------------------------------------------------

    def publish(
        self,
        vhost: str,
        queues: Sequence[str],
        exchange: str,
        routing_key: str,
        properties: bytes,
        body: bytes,
        time_ms: int = 0,
    ) -> int:
        """Stores a message for durable ``queues`` (in line after their earlier ones); its id.

        Ids increase with every publish and are never reused, across restarts too.
        ``time_ms`` is a wall-clock time in epoch milliseconds the broker needs with the
        message (when it was published, for a TTL; when a delayed message is due), kept
        with it for :meth:`index` and :meth:`messages` to give back; 0 is none.  The
        store only keeps it: nothing happens to the message when the time comes.
        """
        ...

    def delivered(self, vhost: str, queue: str, message_ids: Sequence[int]) -> None:
        """These messages went to a consumer: recovered, they come back redelivered with a count."""
        ...

    def settle(self, vhost: str, queue: str, message_ids: Sequence[int]) -> None:
        """These messages left the queue for good (acked, dropped, expired...)."""
        ...

    def messages(self, vhost: str, queue: str) -> Iterator[RecoveredMessage]:
        """The queue's unsettled messages in their order, as found at start-up."""
        ...

    def index(self, vhost: str, queue: str) -> Iterator[tuple[int, int, int]]:
        """(message id, deliveries so far, time_ms) of the queue's unsettled messages, in
        order, without reading their bodies: a restart keeps a large backlog on disk."""
        ...

    def read(self, message_id: int) -> tuple[str, str, bytes, bytes]:
        """(exchange, routing key, properties, body) of a stored, unsettled message;
        for paging a message back in to deliver it."""
        ...

    # -- durability -----------------------------------------------------------------

    def sync(self, callback: Callable[[], None]) -> None:
        """Calls ``callback`` once everything recorded so far is on stable storage."""
        ...

    def flush(self) -> None:
        """Writes and syncs what is pending, then runs the callbacks it covered.

        A :class:`~postoffice.store.errors.StoreError` means none of them ran: see
        :mod:`postoffice.store.errors` for which failures a later flush can retry.
        """
        ...

    def close(self) -> None: ...
