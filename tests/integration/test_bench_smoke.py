"""``postoffice bench`` end to end, against a broker the test starts: every message counted.

No figure is asserted (machines differ); what must hold is that each scenario
completes, its checks pass, and every message published was delivered once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from postoffice.bench import main
from postoffice.testing import running_broker


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
