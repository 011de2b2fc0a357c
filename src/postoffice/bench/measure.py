"""What the benchmark measures besides message counts: percentiles, rates, CPU and memory.

Broker CPU comes from ``/proc/<pid>/stat`` (utime + stime of the whole process, every
thread included), so it is the same figure for a Python broker and for RabbitMQ's
Erlang VM.  Timestamps are ``time.monotonic_ns()``: CLOCK_MONOTONIC is system-wide on
Linux, so a time taken in one worker process compares with one taken in another.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Sequence

__all__ = [
    "LATENCY_PERCENTILES",
    "broker_cpu_seconds",
    "fd_headroom",
    "find_listener_pid",
    "own_cpu_seconds",
    "percentile",
    "rate",
    "rss_kib",
    "summarize_latencies",
]

LATENCY_PERCENTILES = (50.0, 90.0, 99.0, 99.9)

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile of ``ordered`` (sorted ascending); None if empty.

    Nearest rank never interpolates: the answer is always one of the samples, the
    smallest one with at least ``p`` percent of the samples at or below it.
    """
    if not ordered:
        return None
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile {p} is not between 0 and 100")
    rank = math.ceil(p / 100.0 * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def summarize_latencies(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50, p90, p99, p99.9 and max of nanosecond samples, in microseconds."""
    ordered = sorted(samples_ns)
    if not ordered:
        return {}
    summary = {}
    for p in LATENCY_PERCENTILES:
        value = percentile(ordered, p)
        assert value is not None
        summary[f"p{p:g}"] = value / 1000.0
    summary["max"] = ordered[-1] / 1000.0
    return summary


def rate(count: int, start_ns: int | None, end_ns: int | None) -> float | None:
    """``count`` per second between two monotonic timestamps; None when undefined."""
    if start_ns is None or end_ns is None or end_ns <= start_ns or count <= 0:
        return None
    return count * 1e9 / (end_ns - start_ns)


def own_cpu_seconds() -> float:
    """User plus system CPU of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def broker_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU of process ``pid`` so far, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            stat = file.read()
        # The command name (field 2) may hold spaces and parentheses: split after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def rss_kib(pid: int) -> int | None:
    """Resident set size of process ``pid`` in KiB, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def fd_headroom(pid: int) -> tuple[int, int] | None:
    """(open file descriptors, soft limit) of process ``pid``, or None if unreadable."""
    try:
        open_fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/limits", encoding="ascii") as file:
            for line in file:
                if line.startswith("Max open files"):
                    return open_fds, int(line.split()[3])
    except (OSError, ValueError, IndexError):
        return None
    return None


def find_listener_pid(port: int) -> int | None:
    """The pid of the process with a TCP socket listening on ``port``, if there is one.

    Reads the listening sockets' inodes from /proc/net/tcp{,6}, then looks for the
    process holding one of them among /proc/*/fd.  Needs permission to read other
    users' /proc/<pid>/fd (root, or the broker running as the same user).
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as file:
                next(file, None)
                for line in file:
                    parts = line.split()
                    listening = len(parts) > 9 and parts[3] == _LISTEN
                    if listening and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{parts[9]}]")
        except OSError:
            continue
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            descriptors = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in descriptors:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return int(entry)
            except OSError:
                continue
    return None
