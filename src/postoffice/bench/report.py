"""What the user reads: the progress line, the final tables, and the JSON document."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from postoffice import __version__

__all__ = [
    "BrokerInfo",
    "Result",
    "comparison_table",
    "format_progress",
    "machine_description",
    "results_table",
    "to_json",
]


@dataclass
class BrokerInfo:
    """One broker under test: its label (A or B), what it says it is, and its pid."""

    label: str
    url: str
    product: str = ""
    pid: int | None = None

    def describe(self) -> str:
        text = f"{self.label} = {self.product or 'unknown broker'}"
        if self.url:
            text += f" at {self.url}"
            text += f", pid {self.pid}" if self.pid else ", pid unknown: no CPU figures"
        return text


@dataclass
class Result:
    """One run of one scenario on one broker: one row of the table.

    ``rate`` counts ``unit`` per second (deliveries for flows with consumers,
    confirms for publish-only ones, calls for request-reply); ``broker_cpu_us`` is
    the broker's CPU time per counted message, in microseconds.
    """

    scenario: str
    broker: str
    round: int = 1
    rate: float | None = None
    unit: str = "msg/s"
    count: int = 0
    seconds: float = 0.0
    broker_cpu_us: float | None = None
    broker_cores: float | None = None
    client_cores: float | None = None
    latency_us: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


# -- progress ------------------------------------------------------------------------------


def format_progress(
    scenario: str,
    broker: str,
    elapsed: float,
    counts: dict[str, int],
    rate: float | None,
    cores: float | None,
) -> str:
    """One line: ``transient  A  3.0s  published 301,000  consumed 300,512  99,812 msg/s ...``."""
    parts = [f"{scenario:<12} {broker}  {elapsed:5.1f}s"]
    parts += [f"{name} {value:,}" for name, value in counts.items()]
    if rate is not None:
        parts.append(f"{rate:,.0f}/s")
    if cores is not None:
        parts.append(f"broker {cores:.2f} cores")
    return "  ".join(parts)


# -- tables --------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _cpu(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _ms(latency_us: dict[str, float], key: str) -> str:
    value = latency_us.get(key)
    return "-" if value is None else f"{value / 1000:.3f}"


def _render(header: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> str:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in (header, *rows):
        cells = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def results_table(results: Sequence[Result]) -> str:
    """Every run, one row each, with the checks' verdict."""
    with_latency = any(result.latency_us for result in results)
    with_memory = any(result.memory for result in results)
    header = ["scenario", "broker", "round", "rate", "unit", "CPU us/msg", "broker cores"]
    if with_latency:
        header += ["p50 ms", "p90 ms", "p99 ms", "p99.9 ms"]
    if with_memory:
        header += ["MB/1000 conn"]
    header += ["check"]
    rows = []
    for result in results:
        row = [
            result.scenario,
            result.broker,
            str(result.round),
            _number(result.rate),
            result.unit,
            _cpu(result.broker_cpu_us),
            _number(result.broker_cores, 2),
        ]
        if with_latency:
            row += [_ms(result.latency_us, key) for key in ("p50", "p90", "p99", "p99.9")]
        if with_memory:
            row += [_number(result.memory.get("mb_per_1000"), 1)]
        row.append("ok" if result.ok else "FAILED")
        rows.append(row)
    return _render(header, rows, left=3)


def _metrics(results: Sequence[Result]) -> list[tuple[str, float | None, bool]]:
    """(metric name, median over rounds, higher is better) for one scenario on one broker."""
    first = results[0]
    metrics = [(first.unit, median([r.rate for r in results]), True)]
    metrics.append(("broker CPU us/msg", median([r.broker_cpu_us for r in results]), False))
    if first.latency_us:
        for key in ("p50", "p99", "p99.9"):
            value = median([r.latency_us.get(key) for r in results])
            metrics.append((f"{key} ms", None if value is None else value / 1000, False))
    if first.memory:
        metrics.append(
            ("broker MB/1000 conn", median([r.memory.get("mb_per_1000") for r in results]), False)
        )
    return metrics


def comparison_table(results: Sequence[Result], a: str = "A", b: str = "B") -> str:
    """Per scenario and metric: the median on A, on B, and A/B."""
    scenarios = list(dict.fromkeys(result.scenario for result in results))
    rows = []
    for scenario in scenarios:
        on_a = [r for r in results if r.scenario == scenario and r.broker == a]
        on_b = [r for r in results if r.scenario == scenario and r.broker == b]
        if not on_a or not on_b:
            continue
        for (name, value_a, _), (_, value_b, _) in zip(_metrics(on_a), _metrics(on_b), strict=True):
            ratio = value_a / value_b if value_a is not None and value_b else None
            digits = 3 if name.endswith(" ms") else (1 if "CPU" in name or "MB" in name else 0)
            rows.append(
                [
                    scenario,
                    name,
                    _number(value_a, digits),
                    _number(value_b, digits),
                    "-" if ratio is None else f"{ratio:.2f}",
                ]
            )
    return _render(["scenario", "metric", a, b, f"{a}/{b}"], rows, left=2)


def problems(results: Sequence[Result]) -> list[str]:
    """The errors and warnings of every run, one line each."""
    lines = []
    for result in results:
        where = f"{result.scenario} on {result.broker} (round {result.round})"
        lines += [f"ERROR   {where}: {error}" for error in result.errors]
        lines += [f"warning {where}: {warning}" for warning in result.warnings]
    return lines


# -- JSON ------------------------------------------------------------------------------------


def machine_description() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


def to_json(
    results: Sequence[Result], brokers: Sequence[BrokerInfo], options: dict[str, Any]
) -> str:
    document = {
        "tool": f"postoffice bench {__version__}",
        "command": sys.argv,
        "machine": machine_description(),
        "options": options,
        "brokers": [asdict(broker) for broker in brokers],
        "results": [dict(asdict(result), ok=result.ok) for result in results],
    }
    return json.dumps(document, indent=2, default=str)
