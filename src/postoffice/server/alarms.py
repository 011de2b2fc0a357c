"""Resource alarms: when memory runs high, publishers are blocked until it falls.

As RabbitMQ's memory alarm: a connection that publishes while the alarm is on gets
``connection.blocked`` (if it announced the capability) and is not read from until
the alarm clears, then ``connection.unblocked``.  Consumers keep going, so the
queues can drain.  The check runs on a timer, not per message.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

__all__ = ["MemoryAlarm", "resident_memory", "total_memory"]

log = logging.getLogger("postoffice.alarms")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_memory() -> int | None:
    """This process's resident set in bytes, or None where /proc is not available."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def total_memory() -> int | None:
    """Physical memory in bytes, or None if it cannot be told."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class MemoryAlarm:
    """Raises the alarm above ``limit`` bytes of resident memory, clears it below."""

    def __init__(
        self,
        limit: int,
        on_change: Callable[[bool], None],
        *,
        interval: float = 1.0,
        measure: Callable[[], int | None] = resident_memory,
    ) -> None:
        self.limit = limit
        self.active = False
        self._on_change = on_change
        self._interval = interval
        self._measure = measure
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._measure() is None:
            log.warning("cannot read this process's memory use: the memory alarm is off")
            return
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def _tick(self) -> None:
        self.check()
        self._schedule()

    def check(self) -> None:
        used = self._measure()
        if used is None:
            return
        above = used > self.limit
        if above != self.active:
            self.active = above
            mib = used // (1024 * 1024)
            if above:
                log.warning(
                    "memory alarm: %d MiB in use, above the %d MiB watermark; "
                    "publishers are blocked",
                    mib,
                    self.limit // (1024 * 1024),
                )
            else:
                log.warning("memory alarm cleared: %d MiB in use; publishers resume", mib)
            self._on_change(above)
