"""The pure parts of ``postoffice bench``: measurement math, wire pieces, options, report."""

from __future__ import annotations

import os
import socket
import struct
import sys

import pytest

from postoffice.amqp.frames import FRAME_PUBLISH, FrameReader, append_delivery, deliver_framing
from postoffice.bench import main
from postoffice.bench.client import BrokerAddress
from postoffice.bench.loadgen import ConsumerReport, PublisherReport
from postoffice.bench.measure import (
    broker_cpu_seconds,
    find_listener_pid,
    percentile,
    rate,
    rss_kib,
    summarize_latencies,
)
from postoffice.bench.options import (
    DEFAULT_SCENARIOS,
    SCENARIOS,
    Options,
    build_parser,
    from_namespace,
)
from postoffice.bench.report import Result, comparison_table, format_progress, results_table
from postoffice.bench.runner import verify_flow
from postoffice.bench.scenarios import FlowPlan, build
from postoffice.bench.wire import (
    MESSAGE_ID,
    ConfirmTracker,
    DeliveryStream,
    PublishBatch,
    expected_id_sum,
)
from postoffice.cli import main as cli_main

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


# -- measure ---------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    samples = list(range(1, 101))  # 1..100
    assert percentile(samples, 50) == 50
    assert percentile(samples, 99) == 99
    assert percentile(samples, 99.9) == 100
    assert percentile(samples, 100) == 100
    assert percentile(samples, 0) == 1
    assert percentile([7], 99.9) == 7
    assert percentile([1, 2, 3, 4], 50) == 2  # never interpolates


def test_percentile_of_nothing_and_out_of_range() -> None:
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_latency_summary_is_in_microseconds() -> None:
    summary = summarize_latencies([3000, 1000, 2000, 4000])
    assert summary == {"p50": 2.0, "p90": 4.0, "p99": 4.0, "p99.9": 4.0, "max": 4.0}
    assert summarize_latencies([]) == {}


def test_rate() -> None:
    assert rate(1000, 0, 500_000_000) == 2000.0
    assert rate(1000, 5, 5) is None
    assert rate(0, 0, 10) is None
    assert rate(10, None, 10) is None


@linux_only
def test_this_process_is_found_by_its_listening_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert find_listener_pid(listener.getsockname()[1]) == os.getpid()
    assert broker_cpu_seconds(os.getpid()) is not None
    assert (rss_kib(os.getpid()) or 0) > 0
    assert broker_cpu_seconds(2**22 + 1) is None  # above pid_max: no such process


# -- wire ------------------------------------------------------------------------------------


def test_publish_batch_frames_decode_with_the_numbers_stamped() -> None:
    routes = [("", "a"), ("x", "b")]
    batch = PublishBatch(1, routes, publisher=3, size=40, properties={}, frame_max=4096)
    assert batch.count % len(routes) == 0
    full = batch.encode(100, batch.count)
    assert batch.encode(100, 5) == full[: len(batch.encode(100, 5))]  # the slow path agrees
    events = FrameReader(4096).feed(full)
    assert len(events) == batch.count
    for i, (kind, channel, (exchange, key, _, _), _properties, body) in enumerate(events):
        assert (kind, channel) == (FRAME_PUBLISH, 1)
        assert (exchange, key) == routes[i % 2]
        assert MESSAGE_ID.unpack_from(body) == (3, 100 + i)
        assert len(body) == 40


def test_a_body_too_small_for_an_id_is_refused() -> None:
    with pytest.raises(ValueError):
        PublishBatch(1, [("", "q")], 0, MESSAGE_ID.size - 1, {}, 4096)


def deliveries(
    ids: list[tuple[int, int]],
    channel: int = 1,
    first_tag: int = 1,
    redelivered: frozenset[int] = frozenset(),
    size: int = 30,
    frame_max: int = 131072,
) -> bytes:
    framing = deliver_framing(channel, "ctag", "", "q")
    out: list[bytes] = []
    for i, (publisher, seq) in enumerate(ids):
        body = MESSAGE_ID.pack(publisher, seq) + bytes(size - MESSAGE_ID.size)
        tag = first_tag + i
        append_delivery(
            out, channel, framing, tag, tag in redelivered, b"\x00\x00", body, frame_max
        )
    return b"".join(out)


def feed_in_pieces(stream: DeliveryStream, data: bytes, piece: int) -> None:
    buffer = bytearray(data)
    pos = 0
    for end in range(piece, len(data) + piece, piece):
        pos = stream.feed(buffer, pos, min(end, len(data)))
    assert pos == len(data)


@pytest.mark.parametrize("piece", [1, 7, 100, 1 << 20])
def test_delivery_stream_counts_every_delivery_however_the_bytes_arrive(piece: int) -> None:
    ids = [(0, seq) for seq in range(3000)]
    stream = DeliveryStream(publishers=1)
    feed_in_pieces(stream, deliveries(ids), piece)
    assert stream.count == 3000
    assert (stream.duplicates, stream.foreign, stream.redelivered) == (0, 0, 0)
    assert stream.id_sum == expected_id_sum([3000])
    assert stream.channels[1].last_tag == 3000
    assert stream.channels[1].tag_gaps == 0


def test_delivery_stream_sees_a_duplicate_in_the_fast_path() -> None:
    ids = [(0, seq) for seq in range(100)] + [(0, 50)] + [(0, seq) for seq in range(100, 200)]
    stream = DeliveryStream(publishers=1)
    stream.feed(bytearray(deliveries(ids)), 0, len(deliveries(ids)))
    assert stream.count == 201
    assert stream.duplicates == 1
    assert stream.channels[1].layout is not None  # the fast path was taken


def test_delivery_stream_forgives_a_redelivery() -> None:
    ids = [(0, 0), (0, 1), (0, 1), (0, 2)]
    data = deliveries(ids, redelivered=frozenset({3}))
    stream = DeliveryStream(publishers=1)
    stream.feed(bytearray(data), 0, len(data))
    assert (stream.count, stream.redelivered, stream.duplicates) == (4, 1, 0)


def test_delivery_stream_with_several_publishers_and_channels() -> None:
    first = deliveries([(0, 0), (1, 0), (0, 1), (1, 1)], channel=1)
    second = deliveries([(1, 0), (0, 0)], channel=2)  # another subscription: its own order
    stream = DeliveryStream(publishers=2)
    data = bytearray(first[: len(first) // 2] + second + first[len(first) // 2 :])
    stream.feed(data, 0, len(data))
    assert (stream.count, stream.duplicates, stream.foreign) == (6, 0, 0)
    assert stream.channels[1].count == 4
    assert stream.channels[2].count == 2


def test_delivery_stream_counts_foreign_bodies_and_bodies_in_several_frames() -> None:
    stream = DeliveryStream(publishers=1)
    split = deliveries([(0, 0), (0, 1)], size=10_000, frame_max=4096)
    foreign = deliveries([(5, 0)], first_tag=3)
    data = bytearray(split + foreign)
    feed_in_pieces(stream, bytes(data), 999)
    assert (stream.count, stream.foreign) == (3, 1)


def test_delivery_stream_hands_other_methods_back() -> None:
    cancel = struct.pack(">BHI", 1, 1, 10) + b"\x00\x3c\x00\x1e" + b"\x04ctag" + b"\x00" + b"\xce"
    data = bytearray(deliveries([(0, 0)]) + cancel)
    stream = DeliveryStream(publishers=1)
    assert stream.feed(data, 0, len(data)) == len(data)
    assert stream.count == 1
    assert stream.methods == [(1, cancel[7:-1])]


def test_delivery_stream_collects_whole_messages() -> None:
    data = bytearray(deliveries([(0, 0), (0, 1)]))
    stream = DeliveryStream(publishers=1, collect=True)
    stream.feed(data, 0, len(data))
    assert [message.delivery_tag for message in stream.messages] == [1, 2]
    assert stream.messages[1].routing_key == "q"
    assert MESSAGE_ID.unpack_from(stream.messages[1].body) == (0, 1)


def test_confirm_tracker() -> None:
    tracker = ConfirmTracker()
    tracker.settle(3, multiple=False)
    tracker.settle(1, multiple=False)
    assert tracker.settled == 2
    tracker.settle(5, multiple=True)  # 2, 4, 5: 3 is already settled
    assert (tracker.acked, tracker.nacked) == (5, 0)
    tracker.settle(7, multiple=True, nack=True)
    assert (tracker.acked, tracker.nacked) == (5, 2)
    tracker.settle(6, multiple=False)
    tracker.settle(4, multiple=True)
    assert tracker.duplicates == 1
    assert tracker.settled == 7


# -- runner checks ---------------------------------------------------------------------------


def plan(name: str = "transient") -> FlowPlan:
    options = from_namespace(build_parser().parse_args([name]))
    built = build(name, options, BrokerAddress(), "test")
    assert isinstance(built, FlowPlan)
    return built


def publisher(published: int) -> PublisherReport:
    return PublisherReport(0, published=published, closed_cleanly=True)


def consumer(consumed: int, id_sum: int, **counts: int) -> ConsumerReport:
    return ConsumerReport(0, consumed=consumed, id_sum=id_sum, **counts)


def test_verify_flow_passes_when_every_message_came_once() -> None:
    errors, warnings, details = verify_flow(
        plan(), [publisher(10)], [consumer(10, expected_id_sum([10]))]
    )
    assert (errors, warnings) == ([], [])
    assert details["consumed"] == details["expected"] == 10


def test_verify_flow_reports_loss_extra_and_duplicates() -> None:
    lost, _, _ = verify_flow(plan(), [publisher(10)], [consumer(9, 0)])
    assert lost == ["lost 1 of 10 messages"]
    extra, _, _ = verify_flow(plan(), [publisher(10)], [consumer(11, 0, duplicates=1)])
    assert "1 deliveries more than expected" in extra
    assert "1 duplicate deliveries not flagged redelivered" in extra
    swapped, _, _ = verify_flow(plan(), [publisher(10)], [consumer(10, 44)])
    assert swapped == ["the message ids do not add up: some were lost and others duplicated"]


def test_verify_flow_counts_fanout_copies() -> None:
    fanout = plan("fanout")
    assert fanout.copies == 10
    errors, _, details = verify_flow(fanout, [publisher(5)], [consumer(50, 10 * 10)])
    assert errors == []
    assert details["expected"] == 50


# -- options ---------------------------------------------------------------------------------


def parse(*argv: str) -> Options:
    return from_namespace(build_parser().parse_args(list(argv)))


def test_defaults() -> None:
    options = parse()
    assert options.scenarios == DEFAULT_SCENARIOS
    assert options.rounds == 1
    assert options.address == BrokerAddress("127.0.0.1", 5672, "guest", "guest", "/")
    assert options.against_address is None


def test_against_alternates_two_rounds_and_all_means_all_but_selftest() -> None:
    options = parse("all", "--against", "amqp://u:p@h:1/v", "--against-pid", "7")
    assert options.rounds == 2
    assert options.against_address == BrokerAddress("h", 1, "u", "p", "v")
    assert options.against_pid == 7
    assert "selftest" not in options.scenarios
    assert len(options.scenarios) == len(SCENARIOS) - 1


def test_the_url_vhost_is_percent_decoded() -> None:
    assert BrokerAddress.parse("amqp://a:b@x:5/%2Fv").vhost == "/v"
    assert BrokerAddress.parse("amqp://x").vhost == "/"
    assert str(BrokerAddress.parse("amqp://a:secret@x:5/%2F")) == "amqp://a@x:5/%2F"
    with pytest.raises(ValueError):
        BrokerAddress.parse("http://x")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nosuch"], "unknown scenario nosuch"),
        (["latency", "--size", "20"], "at least 28 bytes"),
        (["transient", "--size", "4"], "at least 12 bytes"),
        (["--against-pid", "3"], "--against-pid needs --against"),
        (["--ack-every", "2000"], "above --prefetch"),
        (["--url", "http://x"], "not an amqp:// URL"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_lists_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: postoffice bench")
    for name in SCENARIOS:
        assert name in text


def test_the_top_level_help_names_bench(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--help"]) == 0
    assert "bench" in capsys.readouterr().out


def test_an_unreachable_broker_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    assert main(["transient", "--url", f"amqp://127.0.0.1:{port}"]) == 1
    assert "cannot connect" in capsys.readouterr().err


# -- report ----------------------------------------------------------------------------------


def results() -> list[Result]:
    return [
        Result("transient", "A", 1, rate=300_000.0, broker_cpu_us=3.2, broker_cores=0.97),
        Result("transient", "B", 1, rate=100_000.0, broker_cpu_us=19.0, broker_cores=1.9),
        Result("transient", "A", 2, rate=200_000.0, broker_cpu_us=3.4, broker_cores=0.95),
        Result("transient", "B", 2, rate=100_000.0, broker_cpu_us=21.0, broker_cores=2.0),
        Result("latency", "A", 1, rate=1000.0, latency_us={"p50": 150.0, "p99": 400.0}),
        Result("latency", "B", 1, rate=1000.0, latency_us={"p50": 300.0, "p99": 1600.0}),
    ]


def test_results_table_has_a_row_per_run_and_a_verdict() -> None:
    failed = Result("fanout", "A", 1, errors=["lost 3 of 10 messages"])
    lines = results_table([*results(), failed]).splitlines()
    assert lines[0].split() == [
        "scenario",
        "broker",
        "round",
        "rate",
        "unit",
        "CPU",
        "us/msg",
        "broker",
        "cores",
        "p50",
        "ms",
        "p90",
        "ms",
        "p99",
        "ms",
        "p99.9",
        "ms",
        "check",
    ]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["transient", "A", "1", "300,000", "msg/s", "3.20", "0.97"] + [
        "-"
    ] * 4 + ["ok"]
    assert lines[6].split()[7:9] == ["0.150", "-"]
    assert lines[-1].endswith("FAILED")


def test_comparison_table_takes_medians_and_ratios() -> None:
    rows = {
        tuple(line.split()[:2]): line.split()[-3:]
        for line in comparison_table(results()).splitlines()[2:]
    }
    assert rows[("transient", "msg/s")] == ["250,000", "100,000", "2.50"]
    assert rows[("transient", "broker")] == ["3.3", "20.0", "0.16"]
    assert rows[("latency", "p99")] == ["0.400", "1.600", "0.25"]


def test_progress_line() -> None:
    line = format_progress(
        "transient", "A", 3.04, {"published": 301_000, "consumed": 300_512}, 99_812.4, 0.973
    )
    assert line == (
        "transient    A    3.0s  published 301,000  consumed 300,512  99,812/s  broker 0.97 cores"
    )
    assert "cores" not in format_progress("x", "B", 0.0, {}, None, None)
