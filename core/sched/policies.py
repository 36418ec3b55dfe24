"""Queue policies: the order in which waiting requests are admitted and running ones preempted.

Names (:func:`make_policy`, :data:`POLICIES`): ``fcfs`` (default) and ``priority``; a paper's
own policy registers its name (:func:`register_queue_policy`) when its artifact is imported, or
is named by import path ``"module:Class"``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from core.sched import registry
from core.sched.request import EngineRequest


class QueuePolicy(ABC):
    """Orders requests by a key: smaller keys are admitted first and preempted last.

    Contract: ``key`` is a pure function of the request's fields (it may read ``priority``,
    ``arrival_time``, ``seq_no``, lengths) and must not change while the request waits, so the
    waiting queue can stay sorted by insertion.

    A policy whose admission order depends on the cache may also override
    :meth:`admission_order` and set :attr:`custom_admission_order`; ``key`` still sorts the
    queues and picks preemption victims.
    """

    name = "policy"
    custom_admission_order = False
    """True when :meth:`admission_order` gives an order of its own: the scheduler asks it only
    then (otherwise it admits in ``key`` order without the call)."""

    @abstractmethod
    def key(self, req: EngineRequest) -> tuple[Any, ...]: ...

    def admission_order(
        self, waiting: Sequence[EngineRequest], cached_tokens: Callable[[EngineRequest], int]
    ) -> list[EngineRequest] | None:
        """The waiting requests to try to admit in this step, in order; None (the default)
        keeps the queue's ``key`` order.

        The scheduler calls it once per step in which it will try to admit (something waits,
        token budget and a sequence slot are left, nothing is swapped out), before admitting
        anyone, and only when :attr:`custom_admission_order` is set. ``waiting`` is the queue
        in ``key`` order and must not be changed; ``cached_tokens(req)`` is how many of the
        request's tokens the prefix cache holds now (read-only). Return a subset of ``waiting``:
        the scheduler admits in that order and stops at the first that does not fit, as in
        ``key`` order; requests left out wait. An overriding policy may keep state across
        calls, so one instance serves one scheduler.
        """
        return None


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


POLICIES: dict[str, Callable[[], QueuePolicy]] = {}
"""Registered names -> factories (one new policy per scheduler: a policy may keep state)."""

_HINT = (
    "; a paper's own policy is registered when its artifact is imported (Preble's "
    "'preble-priority': `import artifacts.preble`), or pass an import path 'module:Class' "
    "(e.g. 'artifacts.preble.priority:PrebleGroupPolicy')"
)


def register_queue_policy(name: str, factory: Callable[[], QueuePolicy]) -> None:
    """Make ``name`` resolve to ``factory()`` in :func:`make_policy`, and so in ``Scheduler``,
    ``ReplicaConfig(queue_policy=...)`` and ``LLM(queue_policy=...)``. Re-registering the same
    factory is a no-op; a name taken by another factory raises ValueError."""
    registry.register(POLICIES, "queue policy", name, factory)


def make_policy(name: str | QueuePolicy) -> QueuePolicy:
    """``name`` itself if it is a policy, else a new policy from a registered name
    (:data:`POLICIES`) or an import path ``"module:Class"``. An unknown name raises ValueError
    listing the known ones."""
    if isinstance(name, QueuePolicy):
        return name
    made = registry.resolve(POLICIES, "queue policy", name, _HINT)()
    if not isinstance(made, QueuePolicy):
        raise ValueError(f"queue policy {name!r} made a {type(made).__name__}, not a QueuePolicy")
    return made


register_queue_policy("fcfs", FCFS)
register_queue_policy("priority", PriorityPolicy)
