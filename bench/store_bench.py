"""Disk store throughput: persistent publish + confirm + ack, the engine's share alone.

Each round is one event-loop turn of a busy broker: publish a batch of K messages to
one durable queue, settle (ack) the previous batch, register a confirm callback, and
flush (group commit: one write per file, one fdatasync).  Printed per message size,
with and without fsync: messages per second and microseconds per message, split into
the engine's CPU (publish/settle calls, flush minus its syncs) and the total.  The
disk's raw fdatasync rate is measured on the same directory first, since it bounds
how many group commits per second a confirmed workload can get, and so is the rate of
commits spread over several files, which is what one log per queue would cost.

    python bench/store_bench.py [--messages N] [--batch K] [--dir PATH] [--backlog N]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from postoffice.store import QueueRecord
from postoffice.store.disk import DiskStore


def commit_rate(directory: Path, files: int = 1, seconds: float = 2.0) -> float:
    """Group commits per second when each appends 4 KiB spread over ``files`` files and
    fdatasyncs each: 1 file is the disk's raw fdatasync rate, more files is what one log
    per queue would cost a turn that touched that many queues."""
    paths = [directory / f"fsync-probe-{i}" for i in range(files)]
    fds = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for path in paths]
    block = b"x" * (4096 // files)
    count = 0
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            for fd in fds:
                os.write(fd, block)
            for fd in fds:
                os.fdatasync(fd)
            count += 1
    finally:
        for fd, path in zip(fds, paths, strict=True):
            os.close(fd)
            path.unlink()
    return count / (time.perf_counter() - start)


def run(directory: Path, messages: int, size: int, batch: int, fsync: bool) -> dict[str, float]:
    data = directory / f"data-{size}-{fsync}"
    store = DiskStore(data, fsync=fsync)
    store.put(QueueRecord("/", "q"))
    store.flush()
    body = os.urandom(size)
    properties = b"\x10\x00\x02"  # delivery-mode 2, as a client's content header would
    confirmed = 0

    def confirm() -> None:
        nonlocal confirmed
        confirmed += 1

    previous: list[int] = []
    cpu = 0.0
    flush_time = 0.0
    start = time.perf_counter()
    for _ in range(0, messages, batch):
        t0 = time.perf_counter()
        ids = [store.publish("/", ("q",), "", "q", properties, body) for _ in range(batch)]
        store.settle("/", "q", previous)
        store.sync(confirm)
        t1 = time.perf_counter()
        store.flush()
        t2 = time.perf_counter()
        cpu += t1 - t0
        flush_time += t2 - t1
        previous = ids
    store.settle("/", "q", previous)
    store.flush()
    elapsed = time.perf_counter() - start
    store.close()
    files = sorted(p.name for p in (data / "messages").iterdir())
    shutil.rmtree(data)
    assert confirmed == -(-messages // batch)
    return {
        "rate": messages / elapsed,
        "us_total": elapsed / messages * 1e6,
        "us_calls": cpu / messages * 1e6,
        "us_flush": flush_time / messages * 1e6,
        "files_left": len(files),
    }


def backlog(directory: Path, messages: int) -> None:
    """Restart on a backlog of ``messages`` x 1 KiB: replay time, reading it all, peak RSS."""
    data = directory / "backlog"
    store = DiskStore(data, fsync=False)
    store.put(QueueRecord("/", "q"))
    body = os.urandom(1024)
    for i in range(messages):
        store.publish("/", ("q",), "", "q", b"\x10\x00\x02", body)
        if i % 1000 == 999:
            store.flush()
    store.close()
    # A fresh process, so that its peak RSS is the restart's alone.
    code = (
        "import resource, sys, time\n"
        "from postoffice.store.disk import DiskStore\n"
        "t = time.perf_counter()\n"
        "store = DiskStore(sys.argv[1], fsync=False)\n"
        "opened = time.perf_counter() - t\n"
        "count = sum(1 for _ in store.messages('/', 'q'))\n"
        "read = time.perf_counter() - t - opened\n"
        "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(f'{count:,} x 1 KiB: reopen {opened:.2f} s, messages() {read:.2f} s, "
        "peak RSS {rss:.0f} MB')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(data)], check=True)
    shutil.rmtree(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=200, help="messages per flush")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    parser.add_argument(
        "--backlog", type=int, default=0, help="also time a restart on this many 1 KiB messages"
    )
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="store-bench-", dir=args.dir))
    try:
        print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}")
        print(f"python {platform.python_version()}, data in {directory}")
        rate = commit_rate(directory)
        print(
            f"raw fdatasync rate (4 KiB append + fdatasync): {rate:,.0f}/s ({1e6 / rate:,.0f} us each)"
        )
        spread = ", ".join(f"{n} files {commit_rate(directory, n):,.0f}/s" for n in (2, 4, 16))
        print(f"group commits over several files (one log per queue would need that): {spread}")
        print(
            f"{args.messages:,} messages to one queue, {args.batch} per flush, publish + ack + confirm"
        )
        print(f"{'size':>6} {'fsync':>5} {'msg/s':>10} {'us/msg':>7} {'calls':>6} {'flush':>6}")
        for size in (100, 4096):
            for fsync in (False, True):
                r = run(directory, args.messages, size, args.batch, fsync)
                print(
                    f"{size:>6} {fsync!s:>5} {r['rate']:>10,.0f} {r['us_total']:>7.2f} "
                    f"{r['us_calls']:>6.2f} {r['us_flush']:>6.2f}"
                )
        print(
            "calls = publish/settle/sync per message; flush = write + fdatasync + upkeep per message"
        )
        if args.backlog:
            backlog(directory, args.backlog)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
