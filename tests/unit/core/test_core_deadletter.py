"""The pure dead-letter rules: parsing ``expiration``, the x-death headers, cycles."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from postoffice.core.deadletter import Long, dead_letter_headers, is_cycle, parse_expiration
from postoffice.errors import PreconditionFailed

NOW = 1_700_000_123.75
WHEN = datetime.fromtimestamp(1_700_000_123, UTC)


def headers_after(headers: dict[str, Any] | None, **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "reason": "rejected",
        "queue": "q",
        "exchange": "ex",
        "routing_keys": ["rk"],
        "expiration": None,
        "now": NOW,
        "drop_cc": False,
    }
    options.update(overrides)
    result: dict[str, Any] = dead_letter_headers(headers, **options)
    return result


# -- parse_expiration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("1500", 1500), ("+7", 7), ("-0", 0), ("007", 7), ("315360000000", 315360000000)],
)
def test_parse_expiration_reads_integers_as_erlang_does(text: str, value: int) -> None:
    assert parse_expiration(text) == value


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("abc", "no_integer"),
        ("", "no_integer"),
        ("-", "no_integer"),
        (" 5", "no_integer"),
        ("1.5", '{leftover_string,".5"}'),
        ("10s", '{leftover_string,"s"}'),
        ("5 ", '{leftover_string," "}'),
        ("-1", "{value_negative,-1}"),
        ("-250", "{value_negative,-250}"),
        ("315360000001", "{value_too_large,315360000001}"),
    ],
)
def test_parse_expiration_refuses_with_rabbitmqs_text(text: str, reason: str) -> None:
    expected = f"invalid expiration '{text}': {reason}"
    with pytest.raises(PreconditionFailed, match=f"^{re.escape(expected)}$") as caught:
        parse_expiration(text)
    assert caught.value.reply_code == 406
    assert not caught.value.closes_connection


# -- dead_letter_headers --------------------------------------------------------------


def test_a_first_death_writes_x_death_and_the_first_death_headers_in_order() -> None:
    headers = headers_after(
        {"zeta": 1, "alpha": "a"},
        reason="expired",
        routing_keys=["rk", "cc1"],
        expiration="5000",
    )
    assert list(headers) == [
        "alpha",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "zeta",
    ]
    assert headers["x-first-death-reason"] == "expired"
    assert headers["x-first-death-queue"] == "q"
    assert headers["x-first-death-exchange"] == "ex"
    (death,) = headers["x-death"]
    # A first x-death table keeps RabbitMQ's insertion order, not sorted.
    assert list(death) == [
        "count",
        "reason",
        "queue",
        "time",
        "exchange",
        "routing-keys",
        "original-expiration",
    ]
    assert death == {
        "count": 1,
        "reason": "expired",
        "queue": "q",
        "time": WHEN,
        "exchange": "ex",
        "routing-keys": ["rk", "cc1"],
        "original-expiration": "5000",
    }
    assert type(death["count"]) is Long
    assert Long.field_type == "l"


def test_no_original_expiration_without_an_expiration() -> None:
    (death,) = headers_after(None)["x-death"]
    assert "original-expiration" not in death


def test_the_input_headers_are_not_modified() -> None:
    original = {"a": 1}
    headers_after(original)
    assert original == {"a": 1}


def test_a_repeat_of_queue_and_reason_counts_up_and_moves_to_the_front_sorted() -> None:
    first = headers_after(None, queue="q1", reason="rejected", now=NOW)
    second = headers_after(first, queue="q2", reason="expired", now=NOW + 10)
    third = headers_after(second, queue="q1", reason="rejected", now=NOW + 20)
    deaths = third["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
        ("q1", "rejected", 2),
        ("q2", "expired", 1),
    ]
    # The merged table keeps its first time, as RabbitMQ's increment does.
    assert deaths[0]["time"] == WHEN
    assert list(deaths[0]) == sorted(deaths[0])
    assert type(deaths[0]["count"]) is Long
    # A later new table is written sorted by key.
    assert list(second["x-death"][0]) == [
        "count",
        "exchange",
        "queue",
        "reason",
        "routing-keys",
        "time",
    ]
    # The first-death headers are set once.
    assert third["x-first-death-queue"] == "q1"
    assert third["x-first-death-reason"] == "rejected"


def test_same_queue_different_reason_is_a_new_table() -> None:
    first = headers_after(None, reason="rejected")
    second = headers_after(first, reason="expired")
    assert [(d["reason"], d["count"]) for d in second["x-death"]] == [
        ("expired", 1),
        ("rejected", 1),
    ]


def test_a_count_read_back_from_the_wire_as_a_plain_int_becomes_a_long() -> None:
    existing = {"x-death": [{"count": 4, "queue": "other", "reason": "expired"}]}
    deaths = headers_after(existing)["x-death"]
    assert [type(d["count"]) for d in deaths] == [Long, Long]
    assert [d["count"] for d in deaths] == [1, 4]


def test_cc_is_dropped_only_when_asked() -> None:
    assert "CC" in headers_after({"CC": ["a"]}, drop_cc=False)
    assert "CC" not in headers_after({"CC": ["a"]}, drop_cc=True)


# -- is_cycle -------------------------------------------------------------------------


def death(queue: str, reason: str) -> dict[str, Any]:
    return {"queue": queue, "reason": reason, "count": Long(1)}


@pytest.mark.parametrize(
    ("deaths", "queue", "cycle"),
    [
        (None, "q", False),
        ([death("q", "expired")], "q", True),
        ([death("q", "maxlen")], "q", True),
        ([death("q2", "expired"), death("q", "expired")], "q", True),
        ([death("q2", "expired"), death("q", "rejected")], "q", False),
        ([death("q2", "rejected"), death("q", "expired")], "q", False),
        ([death("q2", "expired")], "q", False),
        # Something a client wrote: not a fully automatic cycle.
        (["junk", death("q", "expired")], "q", False),
    ],
)
def test_is_cycle(deaths: list[Any] | None, queue: str, cycle: bool) -> None:
    headers = None if deaths is None else {"x-death": deaths}
    assert is_cycle(headers, queue) is cycle
