"""Delayed messages at scale: publish N persistent delayed messages, then measure.

    python bench/delayed_bench.py --url amqp://guest:guest@127.0.0.1:5672/%2F \
        --count 1000000 --pid BROKER_PID

Publishes N persistent messages with publisher confirms to a durable
``x-delayed-message`` exchange, each due at a chosen moment: all of them fall due in
a window that opens ``--lead`` seconds after the start (so publishing is over by
then) and lasts ``--spread`` seconds.  A consumer on the bound queue reads the due
time each message carries (header ``due-ms``) and records how late it arrived.

Prints: publish rate (confirmed msg/s), the broker's CPU per message and RSS while
holding and after delivering, and the lateness percentiles (p50, p90, p99, max) of
the deliveries.  A message's ``x-delay`` is computed when it is handed to the client
library, which may send it up to a window of publishes later: lateness includes that
wait (about window / publish rate).  Use a small ``--window`` to measure the broker's
own lateness.  Needs aio-pika (a test dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import aio_pika


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pid: int | None) -> float:
    """The broker's user + system CPU seconds so far (0 without a pid)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--lead", type=float, default=120.0, help="seconds until the first due")
    parser.add_argument("--spread", type=float, default=60.0, help="seconds the dues span")
    parser.add_argument("--window", type=int, default=1000, help="publishes per confirmed batch")
    parser.add_argument("--pid", type=int, default=None, help="the broker's pid, for RSS")
    parser.add_argument("--body", type=int, default=100)
    options = parser.parse_args()

    connection = await aio_pika.connect(options.url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(
        "bench.delayed",
        "x-delayed-message",
        durable=True,
        arguments={"x-delayed-type": "direct"},
    )
    queue = await channel.declare_queue("bench.delayed.q", durable=True)
    await queue.bind(exchange, "due")
    await queue.purge()

    lateness: list[float] = []
    done = asyncio.Event()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        due = message.headers["due-ms"]
        assert isinstance(due, int)
        lateness.append(time.time() * 1000 - due)
        if len(lateness) >= options.count:
            done.set()

    consumer_channel = await connection.channel()
    await consumer_channel.set_qos(prefetch_count=1000)
    consumer_queue = await consumer_channel.get_queue("bench.delayed.q")
    await consumer_queue.consume(on_message, no_ack=True)

    start = time.time()
    first_due = start + options.lead
    rss_before = rss_mb(options.pid)
    cpu_start = cpu_seconds(options.pid)
    body = b"x" * options.body
    batch: list[asyncio.Future[object]] = []
    for n in range(options.count):
        due = first_due + options.spread * (n / options.count)
        due_ms = int(due * 1000)
        delay = max(1, due_ms - int(time.time() * 1000))
        message = aio_pika.Message(
            body,
            headers={"x-delay": delay, "due-ms": due_ms},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        batch.append(asyncio.ensure_future(exchange.publish(message, "due")))
        if len(batch) >= options.window:
            await asyncio.gather(*batch)  # confirmed, a window at a time
            batch = []
    await asyncio.gather(*batch)
    published = time.time()
    rss_held = rss_mb(options.pid)
    cpu_published = cpu_seconds(options.pid)
    print(
        f"published {options.count:,} in {published - start:.1f} s: "
        f"{options.count / (published - start):,.0f} confirmed msg/s"
    )
    if published > first_due:
        print(
            f"warning: publishing ended {published - first_due:.1f} s after the first due "
            "time; raise --lead"
        )
    await asyncio.wait_for(done.wait(), timeout=options.lead + options.spread + 600)
    rss_after = rss_mb(options.pid)
    cpu_end = cpu_seconds(options.pid)
    lateness.sort()
    print(
        f"delivered {len(lateness):,}; lateness ms: p50 {percentile(lateness, 0.5):.1f}  "
        f"p90 {percentile(lateness, 0.9):.1f}  p99 {percentile(lateness, 0.99):.1f}  "
        f"max {lateness[-1]:.1f}  (negative = early)"
    )
    if options.pid is not None:
        per = 1e6 / options.count
        print(
            f"broker CPU us/msg: holding {(cpu_published - cpu_start) * per:.1f}, "
            f"releasing and delivering {(cpu_end - cpu_published) * per:.1f}"
        )
    if rss_before is not None:
        print(
            f"broker RSS MB: before {rss_before:.0f}, holding all {rss_held:.0f}, "
            f"after delivery {rss_after:.0f}"
        )
    await connection.close()


if __name__ == "__main__":
    asyncio.run(main())
