"""Celery, unchanged, on the test broker: examples/celery_app.py with a real worker.

The worker runs in a thread (celery.contrib.testing.worker.start_worker, solo pool);
tasks go over the default pyamqp transport and results come back through the rpc://
backend.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("celery")

from celery import chain, group
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "celery_app.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("postoffice_celery_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def celery_app(broker):
    app = _load_example().app
    app.conf.broker_url = f"amqp://guest:guest@{broker.host}:{broker.port}//"
    app.loader.import_module("celery.contrib.testing.tasks")  # the worker's ping task
    with start_worker(app, pool="solo", perform_ping_check=True, shutdown_timeout=20):
        yield app
        # Leaving start_worker waits until the worker's loop sees the shutdown flag, and
        # an idle loop polls for up to 10 s: raise the flag, then wake the loop.
        worker_state.should_terminate = 0
        app.control.broadcast("ping", reply=False)
    # The client's own connections (result consumer, producer pools) stay open otherwise,
    # and nobody would answer the broker's connection.close at the end of the session.
    app.backend.result_consumer.stop()
    app.amqp.producer_pool.connections.force_close_all()
    app.pool.force_close_all()
    app.close()


def test_tasks_run_and_return_results(celery_app):
    add = celery_app.tasks["example.add"]
    results = [add.delay(i, 100) for i in range(5)]
    assert [r.get(timeout=20) for r in results] == [100, 101, 102, 103, 104]
    count = celery_app.tasks["example.word_count"].delay("a b a c a")
    assert count.get(timeout=20) == {"a": 3, "b": 1, "c": 1}


def test_group_and_chain(celery_app):
    add = celery_app.tasks["example.add"]
    assert group(add.s(i, i) for i in range(6))().get(timeout=20) == [0, 2, 4, 6, 8, 10]
    assert chain(add.s(1, 2), add.s(10), add.s(100))().get(timeout=20) == 113


def test_a_failing_task_reports_its_exception(celery_app):
    result = celery_app.tasks["example.fail"].delay("boom")
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=20)
    assert result.state == "FAILURE"
