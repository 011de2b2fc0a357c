"""Resource alarms: when memory runs high or disk space low, publishers are blocked.

As RabbitMQ's memory and disk alarms: a connection that publishes while an alarm is
on gets ``connection.blocked`` (if it announced the capability) and is not read from
until every alarm has cleared, then ``connection.unblocked``.  Consumers keep going,
so the queues can drain.  The checks run on a timer, not per message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable

__all__ = ["ResourceAlarm", "disk_free", "resident_memory", "total_memory"]

log = logging.getLogger("postoffice.alarms")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MIB = 1024 * 1024


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


def disk_free(path: str) -> Callable[[], int | None]:
    """A measure of the free bytes on the filesystem holding ``path``."""

    def measure() -> int | None:
        try:
            return shutil.disk_usage(path).free
        except OSError:
            return None

    return measure


class ResourceAlarm:
    """On while ``measure()`` is past ``limit`` (above it, or below it for ``low=True``)."""

    def __init__(
        self,
        resource: str,
        limit: int,
        on_change: Callable[[bool], None],
        measure: Callable[[], int | None],
        *,
        low: bool = False,
        interval: float = 1.0,
    ) -> None:
        self.resource = resource
        self.limit = limit
        self.active = False
        self._low = low
        self._on_change = on_change
        self._interval = interval
        self._measure = measure
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._measure() is None:
            log.warning("cannot measure %s: its alarm is off", self.resource)
            return
        self.check()
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
        value = self._measure()
        if value is None:
            return
        past = value < self.limit if self._low else value > self.limit
        if past == self.active:
            return
        self.active = past
        side = "free" if self._low else "in use"
        if past:
            log.warning(
                "%s alarm: %d MiB %s, past the limit of %d MiB; publishers are blocked",
                self.resource,
                value // _MIB,
                side,
                self.limit // _MIB,
            )
        else:
            log.warning("%s alarm cleared: %d MiB %s", self.resource, value // _MIB, side)
        self._on_change(past)
