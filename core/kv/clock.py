"""Injectable clocks: the KV policies never read the wall clock themselves.

Every method that needs the time takes ``now: float | None``; when ``now`` is ``None`` the
object asks its clock, a zero-argument callable returning seconds. The engine passes
``time.monotonic``; the simulator passes its virtual clock's ``now``; tests and trace replays
use :class:`LogicalClock` (a counter, Marconi's logical timestamps) or :class:`ManualClock`.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]


class LogicalClock:
    """A counter: each read returns the previous value plus ``step`` (first read: ``start``)."""

    def __init__(self, start: float = 0.0, step: float = 1.0):
        self._next = float(start)
        self.step = float(step)

    def __call__(self) -> float:
        t = self._next
        self._next += self.step
        return t

    def __repr__(self) -> str:
        return f"LogicalClock(next={self._next}, step={self.step})"


class ManualClock:
    """A clock that only moves when told to (``set`` / ``advance``); reads do not move it."""

    def __init__(self, now: float = 0.0):
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def set(self, now: float) -> None:
        self.now = float(now)

    def advance(self, dt: float) -> float:
        if dt < 0:
            raise ValueError(f"ManualClock cannot go back in time (dt={dt})")
        self.now += dt
        return self.now

    def __repr__(self) -> str:
        return f"ManualClock(now={self.now})"
