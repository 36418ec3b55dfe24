"""The event queue of the job-level simulators: a virtual clock and a heap of timed events.

Events are ordered by time, then by kind (the ``order`` a simulator gives each kind, so that,
say, a block that arrives at the same instant as a pipeline is there before the pipeline asks
for it), then by the order they were pushed. The same pushes give the same pops, so a run is
deterministic given its inputs.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class Event:
    """One timed event: ``kind`` names it, ``payload`` is what the simulator attached."""

    time: float
    order: int
    seq: int
    kind: str = field(compare=False)
    payload: Any = field(default=None, compare=False)


class EventQueue:
    """A min-heap of :class:`Event` with a clock that only moves forward.

    ``push`` refuses events in the past (a simulator bug, not a policy choice); ``pop`` advances
    ``now`` to the event's time.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)
        self._heap: list[Event] = []
        self._seq = itertools.count()

    def push(self, time: float, kind: str, payload: Any = None, order: int = 0) -> Event:
        if not math.isfinite(time):
            raise ValueError(f"event {kind!r} at non-finite time {time}")
        if time < self.now:
            raise ValueError(f"event {kind!r} at {time} is before the clock ({self.now})")
        ev = Event(float(time), order, next(self._seq), kind, payload)
        heapq.heappush(self._heap, ev)
        return ev

    def pop(self) -> Event:
        ev = heapq.heappop(self._heap)
        self.now = ev.time
        return ev

    def peek_time(self) -> float:
        """Time of the next event, ``inf`` when the queue is empty."""
        return self._heap[0].time if self._heap else math.inf

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)
