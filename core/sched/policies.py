"""Queue policies: the order in which waiting requests are admitted and running ones preempted."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from core.sched.request import EngineRequest


class QueuePolicy(ABC):
    """Orders requests by a key: smaller keys are admitted first and preempted last.

    Contract: ``key`` is a pure function of the request's fields (it may read ``priority``,
    ``arrival_time``, ``seq_no``, lengths) and must not change while the request waits, so the
    waiting queue can stay sorted by insertion.
    """

    name = "policy"

    @abstractmethod
    def key(self, req: EngineRequest) -> tuple[Any, ...]: ...


class FCFS(QueuePolicy):
    """First come, first served: by arrival time, then submission order."""

    name = "fcfs"

    def key(self, req: EngineRequest) -> tuple[Any, ...]:
        return (req.arrival_time, req.seq_no)


class PriorityPolicy(QueuePolicy):
    """By ``priority`` (smaller first), then FCFS within a priority."""

    name = "priority"

    def key(self, req: EngineRequest) -> tuple[Any, ...]:
        return (req.priority, req.arrival_time, req.seq_no)


POLICIES: dict[str, type[QueuePolicy]] = {"fcfs": FCFS, "priority": PriorityPolicy}


def make_policy(name: str | QueuePolicy) -> QueuePolicy:
    if isinstance(name, QueuePolicy):
        return name
    if name not in POLICIES:
        raise ValueError(f"unknown queue policy {name!r} (known: {', '.join(POLICIES)})")
    return POLICIES[name]()
