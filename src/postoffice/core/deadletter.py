"""Dead letters as RabbitMQ 3.10 writes them: the ``x-death`` header and its companions.

A message is dead-lettered when it is rejected without requeue (``rejected``), expires
(``expired``), is dropped or refused by a full queue (``maxlen``) or is returned more
often than the queue's delivery limit allows (``delivery_limit``).  It is republished
to the queue's dead-letter exchange with:

* ``x-death``: an array of tables, one per (queue, reason), most recent first, each
  with count (64-bit), reason, queue, time (a timestamp in seconds), exchange,
  routing-keys and, if the message had one, original-expiration.  A repeat of the same
  queue and reason increases that entry's count and moves it to the front;
* ``x-first-death-reason``, ``-queue``, ``-exchange``, set once;
* no ``expiration`` property (it moves to original-expiration), and no ``CC`` header
  when the queue names a dead-letter routing key.

Key order follows RabbitMQ's: the headers sorted by key; the first x-death table in
the order above; a table written later sorted by key (RabbitMQ sorts tables it edits).

Cycles: a message that would be dead-lettered back into a queue it already died in,
with no ``rejected`` in between, is dropped (RabbitMQ logs and drops it too), so a
TTL-only loop cannot spin forever.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..errors import PreconditionFailed
from .arguments import MAX_EXPIRY_MS

__all__ = [
    "DEAD_LETTER_REASONS",
    "Long",
    "dead_letter_headers",
    "is_cycle",
    "parse_expiration",
]

DEAD_LETTER_REASONS = ("rejected", "expired", "maxlen", "delivery_limit")

# RabbitMQ refuses a per-message TTL above ten years.
_MAX_EXPIRATION_MS = MAX_EXPIRY_MS


class Long(int):
    """An int the codec writes as a 64-bit field, as RabbitMQ writes x-death counts
    (Java clients cast them to Long)."""

    __slots__ = ()
    field_type = "l"


def parse_expiration(text: str) -> int:
    """The ``expiration`` property in milliseconds, read as RabbitMQ reads it.

    Erlang's string:to_integer: an optional sign and digits, nothing else; 406 with
    RabbitMQ's text otherwise.
    """
    digits = text[1:] if text[:1] in ("+", "-") else text
    count = len(digits) - len(digits.lstrip("0123456789"))
    if count == 0:
        _invalid(text, "no_integer")
    value = int(text[: len(text) - len(digits) + count])
    rest = digits[count:]
    if rest:
        _invalid(text, f'{{leftover_string,"{rest}"}}')
    if value < 0:
        _invalid(text, f"{{value_negative,{value}}}")
    if value > _MAX_EXPIRATION_MS:
        digits_count = len(str(value))
        if digits_count >= 19:
            # Erlang's ~p wraps a long term: RabbitMQ's text breaks the line there.
            _invalid(text, "{value_too_large,\n" + " " * (24 + digits_count) + f"{value}}}")
        _invalid(text, f"{{value_too_large,{value}}}")
    return value


def _invalid(text: str, reason: str) -> None:
    raise PreconditionFailed(f"invalid expiration '{text}': {reason}")


def dead_letter_headers(
    headers: dict[str, Any] | None,
    *,
    reason: str,
    queue: str,
    exchange: str,
    routing_keys: list[str],
    expiration: str | None,
    now: float,
    drop_cc: bool,
) -> dict[str, Any]:
    """The headers of a message dead-lettered from ``queue`` (see the module docstring)."""
    headers = dict(headers or {})
    info: dict[str, Any] = {
        "reason": reason,
        "queue": queue,
        "time": datetime.fromtimestamp(int(now), UTC),
        "exchange": exchange,
        "routing-keys": list(routing_keys),
    }
    if expiration is not None:
        info["original-expiration"] = expiration
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue
        headers["x-first-death-exchange"] = exchange
        headers["x-death"] = [{"count": Long(1), **info}]
    else:
        tables = [_typed(death) for death in deaths]
        for index, death in enumerate(tables):
            if isinstance(death, dict) and (death.get("queue"), death.get("reason")) == (
                queue,
                reason,
            ):
                count = death.get("count")
                merged = {**death, "count": Long(count + 1 if isinstance(count, int) else 1)}
                del tables[index]
                break
        else:
            merged = {"count": Long(1), **info}
        headers["x-death"] = [_sorted(merged), *tables]
    if drop_cc:
        headers.pop("CC", None)
    return _sorted(headers)


def is_cycle(headers: dict[str, Any] | None, queue: str) -> bool:
    """True when dead-lettering into ``queue`` closes a loop with no rejection in it."""
    deaths = (headers or {}).get("x-death")
    if not isinstance(deaths, list):
        return False
    for death in deaths:
        if not isinstance(death, dict):
            return False  # something a client put there: not a fully automatic cycle
        if death.get("reason") == "rejected":
            return False
        if death.get("queue") == queue:
            return True
    return False


def _typed(death: Any) -> Any:
    """An x-death table read back from the wire, with its count 64 bits again."""
    if isinstance(death, dict) and isinstance(death.get("count"), int):
        return {**death, "count": Long(death["count"])}
    return death


def _sorted(table: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(table.items(), key=lambda item: item[0].encode()))
