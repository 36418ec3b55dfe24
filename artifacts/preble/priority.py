"""Preble's local scheduler (ICLR'25): priority groups by the cached fraction of a request,
behind core's :class:`~core.sched.policies.QueuePolicy` (its ``admission_order`` hook).

Importing this module registers the queue policy name ``"preble-priority"`` (so
``Scheduler(..., "preble-priority")``, ``ReplicaConfig(queue_policy="preble-priority")`` and
``LLM(queue_policy="preble-priority")`` work); ``"artifacts.preble.priority:PrebleGroupPolicy"``
names it without the import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from core.sched.policies import QueuePolicy, register_queue_policy
from core.sched.request import EngineRequest

__all__ = ["PrebleGroupPolicy"]


class PrebleGroupPolicy(QueuePolicy):
    """Preble's local scheduler (ICLR'25): priority groups by the cached fraction of a request.

    The rule, as the authors' SGLang fork does it (heuristic ``fcfs-mpq`` with chunked prefill):

    - a request joins group ``g`` of ``num_groups`` (G) when it starts waiting (on arrival,
      after a preemption, after a pause that dropped its KV): ``g = ceil(f * G) - 1`` for a
      cached fraction ``f > 0`` of its tokens, 0 for ``f = 0``. It keeps that group while it
      waits; its cache hit itself is looked up again when it is admitted;
    - each step that admits serves one group: a pointer takes the first non-empty group from
      where it stands downwards (G-1, ..., 0, then G-1 again) and moves to the group below;
    - from that group up to ``(g + 1) * base`` requests are tried, oldest first; the other
      groups wait, even if budget is left.

    ``key`` is FCFS, so the newest running request is preempted first, as in the authors' code.
    The paper's summary ("each step picks groups in turn, 9 down to 0") leaves out that empty
    groups are skipped, that a group is fixed when the request starts waiting and that one step
    serves one group. Differences from the authors' code: a request that does not fit in KV
    memory ends the step's admissions (theirs skips it and tries the next one in the group);
    ``f`` counts every token the request needs KV for (after a preemption its generated tokens
    too; theirs: the prompt); their switch to a non-chunked fill step with ``base = 5`` while
    the KV pool is at least half free is left out.

    Stateful (the pointer and the groups): one instance per scheduler.
    """

    name = "preble-priority"
    custom_admission_order = True

    def __init__(self, num_groups: int = 10, base: int = 10) -> None:
        if num_groups < 1 or base < 1:
            raise ValueError(f"num_groups and base must be >= 1, got {num_groups} and {base}")
        self.num_groups = num_groups
        self.base = base
        self._next = num_groups - 1  # the group the next step looks at first
        # request id -> (waiting episode, group); rebuilt from the queue at every call
        self._groups: dict[str, tuple[tuple[int, int], int]] = {}

    def key(self, req: EngineRequest) -> tuple[Any, ...]:
        return (req.arrival_time, req.seq_no)

    def group_of(self, cached: int, total: int) -> int:
        """The group of a request with ``cached`` of its ``total`` tokens cached."""
        if cached <= 0 or total <= 0:
            return 0
        # ceil(cached / total * G) - 1 in integers: no float rounding at the group edges
        return min(self.num_groups - 1, -(-cached * self.num_groups // total) - 1)

    def quota(self, group: int) -> int:
        """How many requests one step may admit from ``group``."""
        return (group + 1) * self.base

    def admission_order(
        self, waiting: Sequence[EngineRequest], cached_tokens: Callable[[EngineRequest], int]
    ) -> list[EngineRequest] | None:
        groups: list[list[EngineRequest]] = [[] for _ in range(self.num_groups)]
        seen: dict[str, tuple[tuple[int, int], int]] = {}
        for req in waiting:
            # preemptions and pauses count how often the request re-entered the queue: a new
            # episode is grouped afresh, as the authors regroup a preempted request
            episode = (req.timeline.num_preemptions, req.timeline.num_pauses)
            prev = self._groups.get(req.request_id)
            if prev is not None and prev[0] == episode:
                g = prev[1]
            else:
                g = self.group_of(cached_tokens(req), req.num_tokens)
            seen[req.request_id] = (episode, g)
            groups[g].append(req)  # ``waiting`` is in key order, so each group is too
        self._groups = seen
        for i in range(self.num_groups):
            g = (self._next - i) % self.num_groups
            if groups[g]:
                self._next = (g - 1) % self.num_groups
                return groups[g][: self.quota(g)]
        return []


register_queue_policy("preble-priority", PrebleGroupPolicy)
