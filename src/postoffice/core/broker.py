"""The broker model: virtual hosts, users, and the connections open on them."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from ..errors import AccessRefused, InternalError, NotAllowed
from ..store import MemoryStore, Store
from .ack_timeout import AckTimeouts
from .clock import Clock, SystemClock
from .connection import Connection
from .message import Properties
from .queue import Queue
from .ruled import promote
from .timers import Timers
from .vhost import VHost

__all__ = ["Broker", "PropertiesEditor"]

# Gives a message's properties with some values replaced; the codec knows how.
PropertiesEditor = Callable[[Properties, dict[str, Any]], Properties]


class Broker:
    def __init__(
        self,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
        users: dict[str, str] | None = None,
        default_vhost: str = "/",
        edit_properties: PropertiesEditor | None = None,
        read_properties: Callable[[bytes], Properties] | None = None,
        consumer_timeout: int = 1_800_000,
    ) -> None:
        """``consumer_timeout``: the broker-wide ack timeout in ms (0: none), as RabbitMQ's."""
        self.store: Store = store if store is not None else MemoryStore()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.users: dict[str, str] = dict(users if users is not None else {"guest": "guest"})
        self._read_properties = read_properties
        self._edit_properties = edit_properties
        # Deadlines of every rule that acts at a time; the server runs them (run_due).
        self.timers = Timers(self.clock)
        self.ack_timeouts = AckTimeouts(self, consumer_timeout)
        if consumer_timeout:
            self.ack_timeouts.watch()
        self.vhosts: dict[str, VHost] = {default_vhost: self._new_vhost(default_vhost)}
        self.connections: set[Connection] = set()
        self._recover()

    def _recover(self) -> None:
        definitions = self.store.recover()
        for exchange in definitions.exchanges:
            self._vhost_for_recovery(exchange.vhost).restore_exchange(exchange)
        for queue in definitions.queues:
            self._vhost_for_recovery(queue.vhost).restore_queue(queue)
        for binding in definitions.bindings:
            self._vhost_for_recovery(binding.vhost).restore_binding(binding)
        for vhost in self.vhosts.values():
            for recovered in vhost.queues.values():
                self._recover_messages(recovered)

    def _recover_messages(self, queue: Queue) -> None:
        """Puts a durable queue's stored messages back in line, as they were, paged out:
        their bodies stay on disk until they are delivered.  A message stored with a
        time had a TTL: a plain queue becomes a ruled one to expire it."""
        for message_id, deliveries, time in self.store.index(queue.vhost, queue.name):
            if time and queue.rules is None:
                queue = promote(queue, self.vhosts[queue.vhost])
            queue.restore(message_id, deliveries, time)

    def _vhost_for_recovery(self, name: str) -> VHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = self.vhosts[name] = self._new_vhost(name)
        return vhost

    def _new_vhost(self, name: str) -> VHost:
        return VHost(
            name,
            self.store,
            self._read_properties,
            clock=self.clock,
            timers=self.timers,
            edit_properties=self._edit_properties,
        )

    def authenticate(self, user: str, password: str) -> bool:
        expected = self.users.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    def connect(self, vhost_name: str, user: str) -> Connection:
        """Opens a connection for an authenticated user on a vhost."""
        if user not in self.users:
            raise AccessRefused(f"access to vhost '{vhost_name}' refused for user '{user}'")
        vhost = self.vhosts.get(vhost_name)
        if vhost is None:
            raise NotAllowed(f"vhost {vhost_name} not found")
        connection = Connection(self, vhost, user)
        self.connections.add(connection)
        return connection

    def edit_properties(self, properties: Properties, changes: dict[str, Any]) -> Properties:
        """The properties with ``changes`` applied (direct reply-to, BCC removal...)."""
        if self._edit_properties is None:
            raise InternalError("this broker was built without a properties editor")
        return self._edit_properties(properties, changes)
