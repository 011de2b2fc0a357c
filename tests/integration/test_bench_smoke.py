"""``postoffice bench`` end to end, against a broker the test starts: every message counted.

No figure is asserted (machines differ); what must hold is that each scenario
completes, its checks pass, and every message published was delivered once.  Also
the queue rules options (``--queue-arg``, ``--priorities``) and the wire pieces
behind them: a priority queue reorders deliveries, and nothing may be miscounted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from postoffice.amqp import decode_properties, encode_properties
from postoffice.amqp.frames import FRAME_PUBLISH, FrameReader, append_delivery, deliver_framing
from postoffice.bench import main
from postoffice.bench.options import Options, build_parser, from_namespace
from postoffice.bench.wire import MESSAGE_ID, DeliveryStream, PublishBatch, expected_id_sum
from postoffice.testing import running_broker

PRIORITY_QUEUE = ("--queue-arg", "x-max-priority=10", "--priorities", "10")


def bench(url: str, capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = main([*argv, "--url", url, "--json", "--no-progress", "--stall-timeout", "10"])
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    failures = [(r["scenario"], r["errors"]) for r in document["results"] if r["errors"]]
    assert code == 0, failures
    return document


def test_every_message_is_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_broker(data_dir=str(tmp_path)) as broker:
        flows = bench(broker.url, capsys, "transient", "persistent", "backlog", "--count", "2000")
        fanout = bench(broker.url, capsys, "fanout", "--queues", "3", "--count", "1000")
        calls = bench(broker.url, capsys, "rpc", "--count", "50", "--warmup", "0")

    by_name = {r["scenario"]: r for r in flows["results"] + fanout["results"] + calls["results"]}
    assert set(by_name) == {
        "transient",
        "persistent",
        "backlog fill",
        "backlog drain",
        "fanout",
        "rpc",
    }
    for name in ("transient", "persistent", "backlog drain"):
        details = by_name[name]["details"]
        assert details["published"] == details["consumed"] == 2000, name
        assert details["duplicates"] == details["redelivered"] == 0, name
    assert by_name["persistent"]["details"]["confirmed"] == 2000
    assert by_name["backlog fill"]["details"]["confirmed"] == 2000
    assert by_name["fanout"]["details"]["consumed"] == 3000
    assert set(by_name["fanout"]["details"]["per_queue"].values()) == {1000}
    assert by_name["rpc"]["count"] == 50
    assert len(by_name["rpc"]["latency_us"]) == 5
    # The broker runs in this process, found by its listening port: CPU is measured.
    assert by_name["transient"]["broker_cpu_us"] is not None


def test_selftest_counts_every_message(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["selftest", "--count", "5000", "--json", "--no-progress"])
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert code == 0, result["errors"]
    assert result["details"]["consumed"] == result["details"]["published"] == 5000


def test_queue_rules_count_every_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_broker(data_dir=str(tmp_path)) as broker:
        # backlog drains a full priority queue: highest priority first, out of order.
        flows = ["transient", "persistent", "backlog", "--count", "2000"]
        ranked = bench(broker.url, capsys, *flows, *PRIORITY_QUEUE)
        paced = ["latency", "--count", "300", "--rate", "3000", "--warmup", "0"]
        timed = bench(broker.url, capsys, *paced, *PRIORITY_QUEUE)
        ttl = ["--queue-arg", "x-message-ttl=60000"]
        expiring = bench(broker.url, capsys, "transient", "--count", "2000", *ttl)
        bad = "transient --count 10 --queue-arg x-max-priority=high --json --no-progress"
        code = main([*bad.split(), "--url", broker.url])
        refused = json.loads(capsys.readouterr().out)["results"][0]["errors"]

    assert ranked["options"]["priorities"] == 10
    assert ranked["options"]["queue_arguments"] == [["x-max-priority", 10]]
    assert expiring["options"]["queue_arguments"] == [["x-message-ttl", 60000]]
    for result in ranked["results"] + timed["results"] + expiring["results"]:
        details = result["details"]
        if result["scenario"] == "backlog fill":
            assert details["confirmed"] == 2000
            continue
        count = 300 if result["scenario"] == "latency" else 2000
        assert details["published"] == details["consumed"] == count, result["scenario"]
        assert details["duplicates"] == details["redelivered"] == 0, result["scenario"]
    # The arguments reach the broker: one it cannot take fails the run.
    assert code == 1
    assert "x-max-priority" in refused[0]


# -- the options ------------------------------------------------------------------------------


def parse(*argv: str) -> Options:
    return from_namespace(build_parser().parse_args(list(argv)))


def test_queue_argument_values_are_typed() -> None:
    options = parse(
        *["transient", "--priorities", "3", "--queue-arg", "x-max-priority=10"],
        *["--queue-arg", "x-single-active-consumer=TRUE", "--queue-arg", "x-queue-mode=lazy"],
        *["--queue-arg", "x-dead-letter-routing-key=a=b"],
    )
    assert options.queue_arguments == (
        ("x-max-priority", 10),
        ("x-single-active-consumer", True),
        ("x-queue-mode", "lazy"),
        ("x-dead-letter-routing-key", "a=b"),
    )
    assert options.priorities == 3
    assert parse("transient").queue_arguments == ()
    assert parse("transient").priorities == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["connections", "--queue-arg", "x-max-priority=10"], "cannot apply to connections"),
        (["selftest", "--priorities", "10"], "cannot apply to selftest"),
        (["all", "--priorities", "10"], "cannot apply to connections"),
        (["--queue-arg", "a=1", "--queue-arg", "a=2"], "a given more than once"),
        (["--queue-arg", "x-max-priority"], "is not KEY=VALUE"),
        (["--priorities", "0"], "not a positive integer"),
        (["--priorities", "256"], "above 255"),
    ],
)
def test_queue_rules_the_scenario_would_ignore_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# -- the wire ---------------------------------------------------------------------------------


def test_publishes_cycle_their_priority_with_the_sequence_number() -> None:
    routes = [("", "a"), ("x", "b")]
    batch = PublishBatch(1, routes, 2, 40, {"delivery_mode": 1}, 4096, priorities=3)
    assert batch.count % 6 == 0
    for first in (0, 6, 7):  # on a cycle (one struct call), and off it
        events = FrameReader(4096).feed(batch.encode(first, batch.count))
        assert len(events) == batch.count
        for seq, (kind, _channel, (exchange, key, _, _), properties, body) in enumerate(
            events, start=first
        ):
            assert kind == FRAME_PUBLISH
            assert (exchange, key) == routes[seq % 2]
            assert decode_properties(properties) == {"delivery_mode": 1, "priority": seq % 3}
            assert MESSAGE_ID.unpack_from(body) == (2, seq)
    _kind, _channel, _method, properties, _body = FrameReader(4096).feed(batch.timed(5, 1, 2))[0]
    assert decode_properties(properties)["priority"] == 2


def prioritised(seqs: list[int], priorities: int) -> bytearray:
    """Deliveries of publisher 0's messages ``seqs``, each with priority ``seq % priorities``."""
    framing = deliver_framing(1, "ctag", "", "q")
    headers = [encode_properties({"priority": p}) for p in range(priorities)]
    out: list[bytes] = []
    for tag, seq in enumerate(seqs, start=1):
        body = MESSAGE_ID.pack(0, seq) + bytes(30 - MESSAGE_ID.size)
        append_delivery(out, 1, framing, tag, False, headers[seq % priorities], body, 4096)
    return bytearray(b"".join(out))


def test_cycling_priorities_stay_on_the_fast_path() -> None:
    data = prioritised(list(range(5000)), 10)
    stream = DeliveryStream(publishers=1, priorities=10)
    assert stream.feed(data, 0, len(data)) == len(data)
    assert (stream.count, stream.duplicates, stream.foreign) == (5000, 0, 0)
    assert stream.id_sum == expected_id_sum([5000])
    layout = stream.channels[1].layout
    assert layout is not None
    assert len(layout.middles) == 10  # one content header per priority, learnt once


def test_a_priority_queue_may_reorder_but_not_duplicate() -> None:
    # What a full priority queue sends: each priority's messages in order, highest first.
    drained = [seq for p in reversed(range(4)) for seq in range(p, 4000, 4)]
    stream = DeliveryStream(publishers=1, priorities=4)
    data = prioritised(drained, 4)
    stream.feed(data, 0, len(data))
    assert (stream.count, stream.duplicates) == (4000, 0)
    assert stream.id_sum == expected_id_sum([4000])
    # Without the priorities the same order is taken for duplicates; and a number seen
    # again within one priority still is one.
    plain = DeliveryStream(publishers=1)
    plain.feed(data, 0, len(data))
    assert plain.duplicates > 0
    again = prioritised([*range(100), 96, *range(100, 200)], 4)
    stream = DeliveryStream(publishers=1, priorities=4)
    stream.feed(again, 0, len(again))
    assert (stream.count, stream.duplicates) == (201, 1)
