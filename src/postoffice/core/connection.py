"""A client connection as the broker model sees it: a user in a vhost, with channels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .channel import Channel, DeliverySink
from .queue import Queue
from .vhost import VHost

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["Connection"]


class Connection:
    def __init__(self, broker: Broker, vhost: VHost, user: str) -> None:
        self.broker = broker
        self.vhost = vhost
        self.user = user
        self.channels: dict[int, Channel] = {}
        self.exclusive_queues: dict[str, Queue] = {}
        # False while the client's socket is not draining: consumers stop receiving.
        self.writable = True
        self.closed = False

    def open_channel(self, number: int, sink: DeliverySink) -> Channel:
        channel = Channel(self, number, sink)
        self.channels[number] = channel
        return channel

    def close_channel(self, number: int) -> None:
        channel = self.channels.pop(number, None)
        if channel is not None:
            channel.close()

    def set_writable(self, writable: bool) -> None:
        self.writable = writable
        if writable:
            for channel in list(self.channels.values()):
                if channel.flow_active:
                    channel.flow(True)

    def close(self) -> None:
        """Closes every channel and deletes the exclusive queues this connection owned."""
        if self.closed:
            return
        self.closed = True
        for number in list(self.channels):
            self.close_channel(number)
        for queue in list(self.exclusive_queues.values()):
            if not queue.deleted:
                self.vhost.remove_queue(queue)
        self.exclusive_queues.clear()
        self.broker.connections.discard(self)
