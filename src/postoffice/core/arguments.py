"""Validation of the ``x-`` queue arguments RabbitMQ knows, with RabbitMQ's error texts.

A queue declared with a bad value for a known argument is refused with 406
``invalid arg '<key>' for queue '<name>' in vhost '<vhost>': <reason>``, where the
reason reads as RabbitMQ prints it (``{value_negative,-1}``, ``invalid_overflow``,
...).  Unknown arguments are accepted, as in RabbitMQ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..errors import PreconditionFailed

__all__ = [
    "MAX_EXPIRY_MS",
    "QUEUE_TYPES",
    "check_queue_arguments",
    "check_queue_type",
    "int_argument",
    "text_argument",
    "wire_type",
]

QUEUE_TYPES = ("classic", "quorum", "stream")
OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")
QUEUE_MODES = ("default", "lazy")

_Check = Callable[[Any, Mapping[str, Any]], str | None]


def wire_type(value: Any) -> str:
    """The AMQP field type name RabbitMQ would report for a decoded value.

    Decoded integers no longer say their width; the names are those of the types
    pika sends (signedint up to 32 bits, long beyond).
    """
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, str | bytes):
        return "longstr"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    if isinstance(value, datetime):
        return "timestamp"
    return "void"


def text_argument(value: Any) -> str | None:
    """An argument's text (a longstr may arrive as bytes); None if it is not one."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def int_argument(value: Any) -> int | None:
    """An argument's integer (any width, never a bool); None if it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _integer(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return None
    return f'"expected integer, got {wire_type(value)}"'


def _non_negative(value: Any, _: Mapping[str, Any]) -> str | None:
    problem = _integer(value)
    if problem is None and value < 0:
        return f"{{value_negative,{value}}}"
    return problem


def _positive(value: Any, _: Mapping[str, Any]) -> str | None:
    problem = _non_negative(value, _)
    if problem is None and value == 0:
        return "{value_zero,0}"
    return problem


# RabbitMQ's rabbit_misc:check_expiry: at most ten years, in milliseconds.
MAX_EXPIRY_MS = 315_360_000_000


def _expiry(check: _Check) -> _Check:
    def checked(value: Any, arguments: Mapping[str, Any]) -> str | None:
        problem = check(value, arguments)
        if problem is None and value > MAX_EXPIRY_MS:
            return f"{{value_too_large,{value}}}"
        return problem

    return checked


def _max_priority(value: Any, _: Mapping[str, Any]) -> str | None:
    problem = _non_negative(value, _)
    if problem is None and value > 255:
        return f"{{max_value_exceeded,{value}}}"
    return problem


def _string(value: Any, _: Mapping[str, Any]) -> str | None:
    return None if text_argument(value) is not None else f"{{unacceptable_type,{wire_type(value)}}}"


def _dead_letter_routing_key(value: Any, arguments: Mapping[str, Any]) -> str | None:
    problem = _string(value, arguments)
    if problem is None and "x-dead-letter-exchange" not in arguments:
        return "routing_key_but_no_dlx_defined"
    return problem


def _one_of(choices: tuple[str, ...], reason: Callable[[str], str]) -> _Check:
    def check(value: Any, arguments: Mapping[str, Any]) -> str | None:
        text = text_argument(value)
        if text is None:
            return f"{{unacceptable_type,{wire_type(value)}}}"
        return None if text in choices else reason(text)

    return check


def _boolean(value: Any, _: Mapping[str, Any]) -> str | None:
    return None if isinstance(value, bool) else f"{{unacceptable_type,{wire_type(value)}}}"


_CHECKS: dict[str, _Check] = {
    "x-expires": _expiry(_positive),
    "x-message-ttl": _expiry(_non_negative),
    "x-dead-letter-exchange": _string,
    "x-dead-letter-routing-key": _dead_letter_routing_key,
    "x-max-length": _non_negative,
    "x-max-length-bytes": _non_negative,
    "x-max-in-memory-length": _non_negative,
    "x-max-in-memory-bytes": _non_negative,
    "x-max-priority": _max_priority,
    "x-overflow": _one_of(OVERFLOW_MODES, lambda _: "invalid_overflow"),
    "x-queue-mode": _one_of(QUEUE_MODES, lambda text: f"\"unsupported queue mode '{text}'\""),
    "x-single-active-consumer": _boolean,
    "x-queue-type": _one_of(QUEUE_TYPES, lambda text: f"\"unsupported queue type '{text}'\""),
    # RabbitMQ checks nothing here: a negative limit dead-letters at the first return,
    # a non-integer is no limit.
    "x-max-age": _string,
    "x-stream-max-segment-size-bytes": _non_negative,
}


def check_queue_arguments(arguments: Mapping[str, Any], what: str) -> None:
    """Raises 406 for the first known argument with a value RabbitMQ would refuse."""
    for key, value in arguments.items():
        check = _CHECKS.get(key)
        if check is not None:
            reason = check(value, arguments)
            if reason is not None:
                raise PreconditionFailed(f"invalid arg '{key}' for {what}: {reason}")


# The arguments each queue type takes, as RabbitMQ 3.10 lists them; a known argument
# of another type is refused.  Deliberately, classic queues also take x-delivery-limit
# (RabbitMQ only honours it on quorum queues; docs/compatibility.md).
_TYPE_ARGUMENTS = {
    "classic": frozenset(
        {
            "x-expires",
            "x-message-ttl",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-max-length",
            "x-max-length-bytes",
            "x-max-priority",
            "x-overflow",
            "x-queue-mode",
            "x-queue-version",
            "x-single-active-consumer",
            "x-queue-type",
            "x-queue-master-locator",
            "x-delivery-limit",
        }
    ),
    "quorum": frozenset(
        {
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-dead-letter-strategy",
            "x-expires",
            "x-max-length",
            "x-max-length-bytes",
            "x-max-in-memory-length",
            "x-max-in-memory-bytes",
            "x-overflow",
            "x-single-active-consumer",
            "x-queue-type",
            "x-quorum-initial-group-size",
            "x-delivery-limit",
            "x-message-ttl",
            "x-queue-leader-locator",
        }
    ),
    "stream": frozenset(
        {
            "x-max-length-bytes",
            "x-queue-type",
            "x-max-age",
            "x-stream-max-segment-size-bytes",
            "x-initial-cluster-size",
            "x-queue-leader-locator",
        }
    ),
}
_KNOWN_ARGUMENTS: frozenset[str] = frozenset().union(*_TYPE_ARGUMENTS.values())
_TYPE_MODULES = {
    "classic": "rabbit_classic_queue",
    "quorum": "rabbit_quorum_queue",
    "stream": "rabbit_stream_queue",
}


def check_queue_type(
    arguments: Mapping[str, Any], what: str, durable: bool, exclusive: bool, auto_delete: bool
) -> None:
    """RabbitMQ's rules of a queue's type: the arguments it takes, and a quorum queue
    must be durable, not exclusive and not auto-delete (406 with RabbitMQ's texts)."""
    kind = text_argument(arguments.get("x-queue-type")) or "classic"
    allowed = _TYPE_ARGUMENTS.get(kind, _TYPE_ARGUMENTS["classic"])
    for key in arguments:
        if key in _KNOWN_ARGUMENTS and key not in allowed:
            raise PreconditionFailed(
                f"invalid arg '{key}' for {what} of queue type {_TYPE_MODULES[kind]}"
            )
    if kind == "quorum":
        for refused, name in (
            (auto_delete, "auto-delete"),
            (exclusive, "exclusive-owner"),
            (not durable, "non-durable"),
        ):
            if refused:
                raise PreconditionFailed(f"invalid property '{name}' for {what}")
