"""Clocks for the engine that measure the engine's own work rather than the wall.

:class:`CpuClock` is an :class:`~core.engine.Engine` ``clock`` whose :meth:`CpuClock.sleep` is
the ``sleep`` of :func:`~core.engine.replay` or :func:`~core.engine.serve_sessions`::

    clock = CpuClock()
    engine.clock = clock
    replay(engine, requests, sleep=clock.sleep)

Time then advances by the CPU seconds of the thread that reads it (every forward, copy and
scheduling decision, what it costs on this CPU) plus the waits asked for (arrival gaps,
returning calls), which pass without sleeping. Another process that takes the core slows the
wall clock, not this one, so what runs concurrently in the engine does not depend on the
machine's load. Contract: the engine runs inline on the thread that created the clock, with
one torch thread (CPU time of other threads is not counted).
"""

from __future__ import annotations

import time

__all__ = ["CpuClock"]


class CpuClock:
    """This thread's CPU seconds since construction plus the waits :meth:`sleep` skipped.

    Monotone non-decreasing; a negative wait counts as 0."""

    def __init__(self) -> None:
        self.t0 = time.thread_time()
        self.waited = 0.0

    def __call__(self) -> float:
        return time.thread_time() - self.t0 + self.waited

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass at once."""
        self.waited += max(0.0, seconds)

    @property
    def cpu_s(self) -> float:
        """The CPU seconds counted so far (the reading without the skipped waits)."""
        return time.thread_time() - self.t0
