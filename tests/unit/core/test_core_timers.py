"""The core's deadlines: a heap of timers driven by run_due on an injected clock."""

from __future__ import annotations

from postoffice.core.clock import ManualClock
from postoffice.core.timers import Timers


def make() -> tuple[ManualClock, Timers, list[str]]:
    clock = ManualClock(start=100.0)
    return clock, Timers(clock), []


def test_timers_run_once_their_deadline_has_come_earliest_first() -> None:
    clock, timers, ran = make()
    timers.call_at(103.0, lambda: ran.append("c"))
    timers.call_at(101.0, lambda: ran.append("a"))
    timers.call_later(2.0, lambda: ran.append("b"))
    timers.call_at(101.0, lambda: ran.append("a2"))  # same deadline: scheduling order
    assert timers.run_due() == 0
    clock.advance(0.999)
    assert timers.run_due() == 0
    assert ran == []
    clock.advance(0.001)
    assert timers.run_due() == 2
    assert ran == ["a", "a2"]
    clock.advance(5)
    assert timers.run_due() == 2
    assert ran == ["a", "a2", "b", "c"]
    assert timers.run_due() == 0
    assert ran == ["a", "a2", "b", "c"]


def test_a_cancelled_timer_never_runs() -> None:
    clock, timers, ran = make()
    timer = timers.call_at(101.0, lambda: ran.append("x"))
    timers.call_at(102.0, lambda: ran.append("y"))
    timer.cancel()
    assert len(timers) == 1
    assert timers.next_due() == 102.0
    clock.advance(10)
    assert timers.run_due() == 1
    assert ran == ["y"]
    assert len(timers) == 0
    assert timers.next_due() is None


def test_callbacks_may_schedule_timers_already_due() -> None:
    clock, timers, ran = make()

    def first() -> None:
        ran.append("first")
        timers.call_at(100.5, lambda: ran.append("due now"))
        timers.call_at(200.0, lambda: ran.append("later"))

    timers.call_at(101.0, first)
    clock.advance(1)
    assert timers.run_due() == 2
    assert ran == ["first", "due now"]
    assert timers.next_due() == 200.0


def test_wakeup_fires_when_a_new_timer_is_the_earliest() -> None:
    _, timers, _ = make()
    wakeups: list[float | None] = []
    timers.wakeup = lambda: wakeups.append(timers.next_due())
    timers.call_at(110.0, lambda: None)
    timers.call_at(120.0, lambda: None)  # not earliest: no wakeup
    timers.call_at(105.0, lambda: None)
    timers.call_at(105.0, lambda: None)  # a tie is not earlier
    assert wakeups == [110.0, 105.0]


def test_a_timer_runs_once_even_if_cancelled_afterwards() -> None:
    clock, timers, ran = make()
    timer = timers.call_later(1, lambda: ran.append("x"))
    clock.advance(1)
    timers.run_due()
    timer.cancel()
    clock.advance(1)
    assert timers.run_due() == 0
    assert ran == ["x"]
    assert repr(timer) == "Timer(at 101.000 cancelled)"
