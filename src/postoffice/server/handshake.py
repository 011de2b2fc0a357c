"""What a connection says about itself at the start, and how a client proves who it is."""

from __future__ import annotations

import platform
import socket
import struct
from typing import Any

from .. import __version__, amqp
from ..errors import AMQPError, CommandInvalid

__all__ = ["MECHANISMS", "parse_credentials", "server_properties"]

MECHANISMS = b"PLAIN AMQPLAIN"

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


def server_properties() -> dict[str, Any]:
    return {
        "product": "postoffice",
        "version": __version__,
        "platform": f"Python {platform.python_version()}",
        "copyright": "The postoffice authors",
        "information": "Licensed under the Apache License 2.0",
        "cluster_name": f"postoffice@{socket.gethostname()}",
        "capabilities": dict(CAPABILITIES),
    }


def parse_credentials(mechanism: str, response: bytes) -> tuple[str, str]:
    """(username, password) from a connection.start-ok response."""
    if mechanism == "PLAIN":
        # RFC 4616: [authzid] NUL authcid NUL passwd
        parts = response.split(b"\x00")
        if len(parts) != 3:
            raise CommandInvalid("malformed PLAIN response")
        return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
    if mechanism == "AMQPLAIN":
        # A field table without its length prefix, with LOGIN and PASSWORD.
        try:
            table, _ = amqp.decode_table(struct.pack(">I", len(response)) + response, 0)
        except AMQPError:
            raise CommandInvalid("malformed AMQPLAIN response") from None
        return _text(table.get("LOGIN")), _text(table.get("PASSWORD"))
    raise CommandInvalid(f"unknown authentication mechanism '{mechanism}'")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)
