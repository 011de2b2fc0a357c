"""Celery with postoffice as its broker: a tiny app, runnable as it stands.

Start a broker, a worker, then send some tasks::

    postoffice --port 5672
    celery --app examples.celery_app worker --loglevel=info     # from the repository root
    python examples/celery_app.py

Celery talks to postoffice exactly as it talks to RabbitMQ: the default ``pyamqp://``
transport for tasks, and the ``rpc://`` result backend, which sends each result back
over AMQP to the client that asked.  Set ``POSTOFFICE_URL`` to use another broker.
The integration suite runs this app against a test broker (tests/integration/test_celery.py).
"""

from __future__ import annotations

import os

from celery import Celery

BROKER_URL = os.environ.get("POSTOFFICE_URL", "amqp://guest:guest@localhost:5672//")


app = Celery("postoffice_example", broker=BROKER_URL, backend="rpc://")
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)


# Explicit names: the worker imports this module as examples.celery_app, the script
# below runs it as __main__, and both must agree on what a task is called.
@app.task(name="example.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="example.word_count")
def word_count(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts


@app.task(name="example.fail")
def fail(message: str) -> None:
    raise ValueError(message)


def main() -> None:
    print("2 + 3 =", add.delay(2, 3).get(timeout=10))
    print(word_count.delay("to be or not to be").get(timeout=10))


if __name__ == "__main__":
    main()
