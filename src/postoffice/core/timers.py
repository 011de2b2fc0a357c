"""Deadlines for the core: message expiry, delayed messages, queue expiry, ack timeouts.

The core never sleeps.  Rules that act at a time ask :class:`Timers` to call them
back at a deadline on the injected clock's monotonic scale; whoever drives the
broker calls :meth:`Timers.run_due` when the earliest deadline has come.  The
server arms one event-loop timer for :meth:`Timers.next_due` and re-arms it when
:attr:`Timers.wakeup` says the earliest deadline moved; tests advance a
:class:`~postoffice.core.clock.ManualClock` and call ``run_due`` themselves.

A heap of (deadline, sequence, timer); a cancelled timer stays in the heap until its
turn and is skipped then, so scheduling and cancelling are O(log n) and O(1).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from .clock import Clock

__all__ = ["Timer", "Timers"]


class Timer:
    """A callback due at ``when``; ``cancel()`` it to stop it from running."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        return f"Timer(at {self.when:.3f}{state})"


class Timers:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        # Called when a new timer is due before every earlier one: the driver re-arms.
        self.wakeup: Callable[[], None] = _nothing

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Runs ``callback`` once the monotonic clock reaches ``when``."""
        timer = Timer(when, callback)
        heap = self._heap
        earliest = not heap or when < heap[0][0]
        self._seq += 1
        heapq.heappush(heap, (when, self._seq, timer))
        if earliest:
            self.wakeup()
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.clock.monotonic() + delay, callback)

    def next_due(self) -> float | None:
        """The earliest deadline of a live timer, or None when nothing is waiting."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run_due(self) -> int:
        """Runs every timer whose deadline has come, earliest first; how many ran.

        A callback may schedule more timers; those already due run in this call too.
        """
        heap = self._heap
        ran = 0
        now = self.clock.monotonic()
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            if not timer.cancelled:
                timer.cancelled = True  # a timer runs once
                timer.callback()
                ran += 1
        return ran

    def __len__(self) -> int:
        return sum(1 for _, _, timer in self._heap if not timer.cancelled)


def _nothing() -> None:
    pass
