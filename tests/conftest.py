"""Shared by every test directory."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _capture_postoffice_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Tests read postoffice's log through caplog whatever the root logger's level is
    (a Celery worker started by an earlier test raises it)."""
    caplog.set_level(logging.DEBUG, logger="postoffice")
