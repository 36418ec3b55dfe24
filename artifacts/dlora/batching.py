"""dLoRA's dynamic batching: per iteration, merged (one adapter folded into the weights) or
unmerged (any adapters), chosen by queue lengths, with credits against starvation and merge
thresholds that adapt to which mode served more requests per unit of time.

Each iteration, with ``F`` the first ``B`` queued requests in arrival order (``B`` =
``max_num_seqs``), ``Q_k`` the queued requests of adapter ``k`` and ``c_k`` its credit:

1. adapters whose credit reached ``credit_high`` (or ``credit_low`` if they were served by
   credit last iteration) run first, unmerged, the rest of the batch filled in arrival order;
2. else, among adapters with ``c_k >= 0``, stay merged on the current adapter ``a`` while
   ``|Q_a| >= theta_L |F|``; merge the adapter ``k*`` with the longest queue if
   ``|Q_k*| >= theta_R |F|``; otherwise run unmerged in arrival order.

Whenever a request of ``F`` is displaced by another adapter's request, the displaced request's
adapter gains ``cost`` credit and the displacing one loses it (``1/B`` unmerged, ``1/(rho B)``
merged: a merged iteration is ``rho`` of an unmerged one). At each mode switch the thresholds
adapt (AIMD): with merged and unmerged throughput since the last switch estimated from the
iterations run (``rho`` per merged iteration plus ``switch_cost`` per switch, 1 per unmerged
one, in unmerged-iteration units), leaving merged mode lowers ``theta_R`` by ``aimd_add`` if
merged won (merge sooner) and multiplies it by ``aimd_mul`` if not; leaving unmerged mode raises
``theta_L`` by ``aimd_add`` if unmerged won and divides it by ``aimd_mul`` if not. Start:
``theta_R = 1``, ``theta_L = rho``. The scheduler never reads a clock, so engine and simulator
run it alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.kv.backend import KVBackend
from core.lora.scheduler import LoRAPlan, LoRAScheduler, adapter_of
from core.sched.intercept import InterceptPolicy
from core.sched.policies import QueuePolicy
from core.sched.request import EngineRequest
from core.sched.scheduler import SchedulerConfig, SchedulerOutput

__all__ = ["DLoRAScheduler", "ThresholdWindow"]

# dLoRA's profile of Llama-7B: a merged iteration 0.015 s, an unmerged one 0.027 s, a switch 0.02 s
PAPER_RHO = 0.015 / 0.027
PAPER_SWITCH = 0.02 / 0.027


@dataclass
class ThresholdWindow:
    """Requests and iterations served in each mode since the thresholds last moved."""

    merged_reqs: int = 0
    merged_iters: int = 0
    switches: int = 0
    unmerged_reqs: int = 0
    unmerged_iters: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)  # (theta_L, theta_R)


class DLoRAScheduler(LoRAScheduler):
    """Credit-based dynamic batching with adaptive merge thresholds (see the module docstring).

    ``rho``: merged / unmerged iteration time; ``switch_cost``: one merge or unmerge in
    unmerged-iteration units (both from a profile; defaults: the paper's Llama-7B profile).
    """

    def __init__(
        self,
        config: SchedulerConfig,
        kv: KVBackend,
        policy: QueuePolicy | str = "fcfs",
        intercept: InterceptPolicy | str | None = None,
        *,
        max_loras: int | None = None,
        rho: float = PAPER_RHO,
        switch_cost: float = PAPER_SWITCH,
        credit_high: float = 1.0,
        credit_low: float = 0.5,
        aimd_add: float = 0.05,
        aimd_mul: float = 1.1,
    ) -> None:
        super().__init__(config, kv, policy, intercept, max_loras=max_loras)
        if not 0 < rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {rho}")
        if not 0 <= credit_low <= credit_high:
            raise ValueError(f"need 0 <= credit_low <= credit_high ({credit_low}, {credit_high})")
        self.rho, self.switch_cost = rho, switch_cost
        self.credit_high, self.credit_low = credit_high, credit_low
        self.aimd_add, self.aimd_mul = aimd_add, aimd_mul
        self.theta_r, self.theta_l = 1.0, rho
        self.credits: dict[str | None, float] = {}
        self.by_credit: set[str | None] = set()
        self.window = ThresholdWindow()
        self.mode_iters = {"merged": 0, "unmerged": 0, "credit": 0}
        self._mode = "unmerged"

    # -- credits --------------------------------------------------------------------------------

    def _move_credit(self, fcfs: list[EngineRequest], chosen: list[EngineRequest], cost: float):
        chosen_ids = {id(r) for r in chosen}
        fcfs_ids = {id(r) for r in fcfs}
        displaced = [r for r in fcfs if id(r) not in chosen_ids]
        newcomers = [r for r in chosen if id(r) not in fcfs_ids]
        for gone, came in zip(displaced, newcomers, strict=False):
            a, b = adapter_of(gone), adapter_of(came)
            self.credits[a] = self.credits.get(a, 0.0) + cost
            self.credits[b] = self.credits.get(b, 0.0) - cost

    # -- thresholds -----------------------------------------------------------------------------

    def _adapt(self, leaving: str) -> None:
        w = self.window
        if w.merged_iters and w.unmerged_iters:
            t_merged = self.rho * w.merged_iters + self.switch_cost * w.switches
            tput_merged = w.merged_reqs / t_merged
            tput_unmerged = w.unmerged_reqs / w.unmerged_iters
            if leaving == "merged":
                if tput_merged > tput_unmerged:
                    self.theta_r = max(self.theta_l + self.aimd_add, self.theta_r - self.aimd_add)
                else:
                    self.theta_r *= self.aimd_mul
            elif tput_unmerged > tput_merged:
                self.theta_l = min(self.theta_r - self.aimd_add, self.theta_l + self.aimd_add)
            else:
                self.theta_l /= self.aimd_mul
            w.history.append((self.theta_l, self.theta_r))
        self.window = ThresholdWindow(history=w.history)

    # -- the plan -------------------------------------------------------------------------------

    def plan(self, now: float) -> LoRAPlan:
        B = self.config.max_num_seqs
        queued = sorted(self.queued(), key=lambda r: (r.arrival_time, r.seq_no))
        if not queued:
            return LoRAPlan(self.merged)
        fcfs = queued[:B]
        queues: dict[str | None, list[EngineRequest]] = {}
        for r in queued:
            queues.setdefault(adapter_of(r), []).append(r)

        credit = [
            k
            for k in sorted(queues, key=lambda k: -self.credits.get(k, 0.0))
            if self.credits.get(k, 0.0) >= self.credit_high
            or (k in self.by_credit and self.credits.get(k, 0.0) >= self.credit_low)
        ]
        self.by_credit = set(credit)
        if credit:
            chosen = [r for k in credit for r in queues[k]][:B]
            taken = {id(r) for r in chosen}
            chosen += [r for r in queued if id(r) not in taken][: B - len(chosen)]
            self._move_credit(fcfs, chosen, 1.0 / B)
            return self._choose("credit", None, chosen)

        eligible = {
            k: q for k, q in queues.items() if k is not None and self.credits.get(k, 0.0) >= 0
        }
        current = self.merged
        if current in eligible and len(eligible[current]) >= self.theta_l * len(fcfs):
            return self._merged(current, eligible[current][:B], fcfs)
        if eligible:
            best = max(eligible, key=lambda k: (len(eligible[k]), -eligible[k][0].seq_no))
            if len(eligible[best]) >= self.theta_r * len(fcfs):
                return self._merged(best, eligible[best][:B], fcfs)
        return self._choose("unmerged", None, None)

    def _merged(
        self, name: str, chosen: list[EngineRequest], fcfs: list[EngineRequest]
    ) -> LoRAPlan:
        self._move_credit(fcfs, chosen, 1.0 / (self.rho * self.config.max_num_seqs))
        return self._choose("merged", name, chosen)

    def _choose(
        self, mode: str, merged: str | None, chosen: list[EngineRequest] | None
    ) -> LoRAPlan:
        family = "merged" if mode == "merged" else "unmerged"
        previous = "merged" if self._mode == "merged" else "unmerged"
        if family != previous or (merged is not None and merged != self.merged):
            self._adapt(leaving=previous)
            if merged != self.merged:
                self.window.switches += 1
        self._mode = mode
        self.mode_iters[mode] += 1
        if chosen is None:
            return LoRAPlan(None)
        ids = {id(r) for r in chosen}
        return LoRAPlan(merged, lambda r: id(r) in ids)

    def after_step(self, out: SchedulerOutput, plan: LoRAPlan) -> None:
        n = sum(1 for c in out.chunks if c.sample)
        if plan.merged is not None:
            self.window.merged_reqs += n
            self.window.merged_iters += 1
        else:
            self.window.unmerged_reqs += n
            self.window.unmerged_iters += 1
