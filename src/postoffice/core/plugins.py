"""Exchange types of RabbitMQ plugins that postoffice builds in.

Each is a class the vhost attaches to an exchange of its type as the exchange's
:class:`~postoffice.core.exchange.ExchangeBehaviour`:

* ``x-delayed-message`` (rabbitmq-delayed-message-exchange): :mod:`postoffice.core.delayed`;
* ``x-message-deduplication`` (rabbitmq-message-deduplication): :mod:`postoffice.core.dedup`.

A plugin class offers ``check_arguments(arguments, what)`` (406 for bad declare
arguments, with the plugin's texts), ``routing_type(arguments)`` (the plain exchange
type whose router its messages take) and a constructor ``(vhost, exchange)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .dedup import DeduplicatingExchange
from .delayed import DelayedExchange

if TYPE_CHECKING:
    from .exchange import Exchange, ExchangeBehaviour
    from .vhost import VHost

__all__ = ["PLUGIN_EXCHANGES", "PluginExchange"]


class PluginExchange(Protocol):
    @staticmethod
    def check_arguments(arguments: Mapping[str, Any], what: str) -> None: ...

    @staticmethod
    def routing_type(arguments: Mapping[str, Any]) -> str: ...

    def __call__(self, vhost: VHost, exchange: Exchange) -> ExchangeBehaviour: ...


PLUGIN_EXCHANGES: dict[str, Any] = {
    "x-delayed-message": DelayedExchange,
    "x-message-deduplication": DeduplicatingExchange,
}
