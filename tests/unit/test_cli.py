"""The command line, without ever starting a real server: server.run is replaced."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import postoffice
import postoffice.server
from postoffice.cli import main
from postoffice.config import Settings, env_var, flag

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No POSTOFFICE_* from the caller's shell; the root logger as it was."""
    for name in list(os.environ):
        if name.startswith("POSTOFFICE_"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Replace server.run with a recorder that returns at once, as after a clean stop."""
    calls: list[Settings] = []

    def run(settings: Settings) -> int:
        calls.append(settings)
        return 0

    monkeypatch.setattr(postoffice.server, "run", run, raising=False)
    return calls


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"postoffice {postoffice.__version__}\n"


def test_python_dash_m() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "postoffice", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"postoffice {postoffice.__version__}\n"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "serve" in capsys.readouterr().err


def test_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--no-such-flag"]) == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_serve_help_names_every_setting_and_its_env_var(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for spec in dataclasses.fields(Settings):
        assert env_var(spec.name) in text, spec.name
        if spec.name != "default_pass":  # no flag: it would show in ps(1)
            assert flag(spec.name) in text, spec.name
    assert "--config" in text
    assert "POSTOFFICE_CONFIG" in text
    assert "default: 5672" in text
    assert "default: ./postoffice-data" in text
    assert "TOML" in text
    assert "first of these wins" in text


def test_bad_flag_value_exits_2_with_the_message(
    capsys: pytest.CaptureFixture[str], runs: list[Settings]
) -> None:
    assert main(["serve", "--port", "abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("postoffice: error: ")
    assert "port 'abc'" in err
    assert "--port" in err
    assert runs == []


def test_bad_env_value_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, runs: list[Settings]
) -> None:
    monkeypatch.setenv("POSTOFFICE_LOG_LEVEL", "chatty")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "postoffice: error: invalid log_level 'chatty'" in err
    assert "POSTOFFICE_LOG_LEVEL" in err
    assert runs == []


def test_bad_config_file_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, runs: list[Settings]
) -> None:
    config = tmp_path / "po.toml"
    config.write_text("frame_max = 100\n", encoding="utf-8")
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"postoffice: error: invalid frame_max 100 from config file {config}" in err
    assert runs == []


def test_serve_builds_settings_creates_data_dir_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runs: list[Settings]
) -> None:
    data_dir = tmp_path / "deep" / "data"
    config = tmp_path / "po.toml"
    config.write_text("heartbeat = 7\nport = 1\n", encoding="utf-8")
    monkeypatch.setenv("POSTOFFICE_PORT", "2")
    argv = ["serve", "--config", str(config), "--data-dir", str(data_dir), "--port", "0"]
    assert main(argv) == 0
    assert runs == [Settings(port=0, data_dir=str(data_dir), heartbeat=7)]
    assert data_dir.is_dir()


def test_serve_configures_logging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], runs: list[Settings]
) -> None:
    assert main(["serve", "--data-dir", str(tmp_path), "--log-level", "debug"]) == 0
    assert logging.getLogger().level == logging.DEBUG
    line = capsys.readouterr().err.splitlines()[0]
    # 2024-05-01 12:00:00.123 INFO     postoffice.cli: postoffice 0.1.0 starting, ...
    assert " INFO " in line
    assert "postoffice.cli: postoffice" in line


def test_data_dir_that_cannot_be_created_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], runs: list[Settings]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    assert main(["serve", "--data-dir", str(blocker / "data")]) == 1
    assert "cannot create data directory" in capsys.readouterr().err
    assert runs == []


def test_server_that_cannot_listen_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(settings: Settings) -> None:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(postoffice.server, "run", run, raising=False)
    assert main(["serve", "--data-dir", str(tmp_path)]) == 1


def test_interrupt_before_the_server_handles_signals_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(settings: Settings) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(postoffice.server, "run", run, raising=False)
    assert main(["serve", "--data-dir", str(tmp_path)]) == 130


def test_readme_configuration_table_lists_every_setting() -> None:
    text = README.read_text(encoding="utf-8")
    for spec in dataclasses.fields(Settings):
        assert f"`{env_var(spec.name)}`" in text, spec.name
        assert f"`{spec.name}`" in text, spec.name
