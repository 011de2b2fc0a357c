"""De-duplication (rabbitmq-message-deduplication): placeholder being written."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .exchange import Exchange
    from .message import Message
    from .queue import Queue
    from .vhost import VHost

__all__ = ["DeduplicatingExchange", "QueueDeduplication"]


class QueueDeduplication:
    @staticmethod
    def wanted(arguments: Mapping[str, Any]) -> bool:
        return arguments.get("x-message-deduplication") is True

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        self.keys: set[Any] = set()

    def admit(self, message: Message) -> bool:
        return True

    def release(self, message: Message) -> None:
        pass


class DeduplicatingExchange:
    @staticmethod
    def check_arguments(arguments: Mapping[str, Any], what: str) -> None:
        pass

    @staticmethod
    def routing_type(arguments: Mapping[str, Any]) -> str:
        return "fanout"

    def __init__(self, vhost: VHost, exchange: Exchange) -> None:
        self.vhost = vhost
        self.exchange = exchange

    def publish(self, message: Message, queues: list[Queue], expiring: bool) -> int | None:
        return None

    def deleted(self) -> None:
        pass
