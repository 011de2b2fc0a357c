"""Delayed messages (rabbitmq-delayed-message-exchange): placeholder being written."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .exchange import Exchange
    from .message import Message
    from .queue import Queue
    from .vhost import VHost

__all__ = ["DelayedExchange"]


class DelayedExchange:
    @staticmethod
    def check_arguments(arguments: Mapping[str, Any], what: str) -> None:
        pass

    @staticmethod
    def routing_type(arguments: Mapping[str, Any]) -> str:
        return str(arguments.get("x-delayed-type"))

    def __init__(self, vhost: VHost, exchange: Exchange) -> None:
        self.vhost = vhost
        self.exchange = exchange

    def publish(self, message: Message, queues: list[Queue], expiring: bool) -> int | None:
        return None

    def deleted(self) -> None:
        pass
