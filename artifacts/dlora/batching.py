"""dLoRA's dynamic batching: per iteration, merged (one adapter folded into the weights) or
unmerged (any adapters), chosen by queue lengths, with credits against starvation and merge
thresholds that adapt to which mode would serve more requests per unit of time.

Each iteration, with ``F`` the first ``B`` queued requests in arrival order (``B`` =
``max_num_seqs``), ``Q_k`` the queued requests of adapter ``k`` and ``c_k`` its credit:

1. adapters whose credit reached ``credit_high`` (or ``credit_low`` if they were served by
   credit last iteration) run first, unmerged, the rest of the batch filled in arrival order;
2. else, among adapters whose credit is above the floor (``-(n - 1) credit_high`` for ``n``
   adapters seen so far: the authors start every credit ``(n - 1)`` spans below the high
   threshold and let it fall to 0), stay merged on the current adapter ``a`` while
   ``|Q_a| >= theta_L |F|``; merge the adapter ``k*`` with the longest queue if
   ``|Q_k*| >= theta_R |F|``; otherwise run ``F`` unmerged.

Requests left out of a batch keep their KV and wait (dLoRA's "ready" state).

Whenever a request of ``F`` is displaced by another adapter's request, the displaced request's
adapter gains ``cost`` credit and the displacing one loses it (``1/B`` unmerged, ``1/(rho B)``
merged: a merged iteration is ``rho`` of an unmerged one). The default thresholds (1024 and
512 batches' worth of displacement) make credits a guard against starvation, as the authors'
constants do; with thresholds of 16 the credit iterations cost dLoRA most of its gain at high
skew in our Fig. 10 setup (per-token latency 0.116 s vs 0.073 s at Zipf 3).

The thresholds adapt (AIMD) from what each mode *would* serve, counted every iteration as the
authors do: unmerged serves ``|F|`` requests per iteration (time 1), merged serves
``min(B, |Q_k*|)`` per iteration (time ``rho``) plus ``switch_cost`` whenever ``k*`` changes
(times in unmerged-iteration units). At every mode switch, and every ``adapt_every`` iterations
in one mode, the two throughputs since the last adaptation are compared: if merged wins,
``theta_R -= aimd_add`` (merge sooner) and ``theta_L /= aimd_mul`` (stay merged longer); if
unmerged wins, ``theta_R *= aimd_mul`` and ``theta_L += aimd_add``; always
``theta_L < theta_R``, ``theta_R <= 1 / rho`` and ``theta_L >= 0.05``. Start: ``theta_R = 1``, ``theta_L = rho``. (The authors adapt
``theta_R`` only when leaving merged mode and ``theta_L`` only when leaving unmerged mode; here
both move together so an unmerged phase also learns when merging pays.) The scheduler never
reads a clock, so engine and simulator run it alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.kv.backend import KVBackend
from core.lora.scheduler import LoRAPlan, LoRAScheduler, adapter_of
from core.sched.intercept import InterceptPolicy
from core.sched.policies import QueuePolicy
from core.sched.request import EngineRequest
from core.sched.scheduler import SchedulerConfig

__all__ = ["PAPER_RHO", "PAPER_SWITCH", "DLoRAScheduler", "ThresholdWindow"]

# dLoRA's profile of Llama-7B: a merged iteration 0.015 s, an unmerged one 0.027 s, a switch 0.02 s
PAPER_RHO = 0.015 / 0.027
PAPER_SWITCH = 0.02 / 0.027


@dataclass
class ThresholdWindow:
    """What each mode would have served since the thresholds last moved (see the module
    docstring): iterations, requests, and the switches a merged policy would make."""

    iters: int = 0
    unmerged_reqs: int = 0
    merged_reqs: int = 0
    switches: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)  # (theta_L, theta_R)

    def throughputs(self, rho: float, switch_cost: float) -> tuple[float, float]:
        """(merged, unmerged) requests per unit of unmerged-iteration time."""
        merged_t = rho * self.iters + switch_cost * self.switches
        return self.merged_reqs / merged_t, self.unmerged_reqs / self.iters


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
        credit_high: float = 1024.0,
        credit_low: float = 512.0,
        aimd_add: float = 0.05,
        aimd_mul: float = 1.1,
        adapt_every: int = 64,
    ) -> None:
        super().__init__(config, kv, policy, intercept, max_loras=max_loras)
        if not 0 < rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {rho}")
        if not 0 <= credit_low <= credit_high:
            raise ValueError(f"need 0 <= credit_low <= credit_high ({credit_low}, {credit_high})")
        self.rho, self.switch_cost = rho, switch_cost
        self.credit_high, self.credit_low = credit_high, credit_low
        self.aimd_add, self.aimd_mul = aimd_add, aimd_mul
        self.adapt_every = adapt_every
        self.theta_r, self.theta_l = 1.0, rho
        self.credits: dict[str | None, float] = {}
        self.seen: set[str] = set()
        self.by_credit: set[str | None] = set()
        self.window = ThresholdWindow()
        self.mode_iters = {"merged": 0, "unmerged": 0, "credit": 0}
        self._top: str | None = None

    # -- credits --------------------------------------------------------------------------------

    def _move_credit(
        self, fcfs: list[EngineRequest], chosen: list[EngineRequest], cost: float
    ) -> None:
        chosen_ids = {id(r) for r in chosen}
        fcfs_ids = {id(r) for r in fcfs}
        displaced = [r for r in fcfs if id(r) not in chosen_ids]
        newcomers = [r for r in chosen if id(r) not in fcfs_ids]
        for gone, came in zip(displaced, newcomers, strict=False):
            a, b = adapter_of(gone), adapter_of(came)
            self.credits[a] = self.credits.get(a, 0.0) + cost
            self.credits[b] = self.credits.get(b, 0.0) - cost

    # -- thresholds -----------------------------------------------------------------------------

    def _observe(self, fcfs: int, top: str | None, top_queue: int) -> None:
        w = self.window
        w.iters += 1
        w.unmerged_reqs += fcfs
        w.merged_reqs += min(self.config.max_num_seqs, top_queue)
        if top != self._top:
            w.switches += 1
            self._top = top

    def _adapt(self) -> None:
        w = self.window
        if w.iters:
            merged, unmerged = w.throughputs(self.rho, self.switch_cost)
            if merged > unmerged:
                self.theta_r = max(self.theta_l + self.aimd_add, self.theta_r - self.aimd_add)
                self.theta_l = max(0.05, self.theta_l / self.aimd_mul)
            else:
                self.theta_r = min(1.0 / self.rho, self.theta_r * self.aimd_mul)
                self.theta_l = min(self.theta_r - self.aimd_add, self.theta_l + self.aimd_add)
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
        self.seen.update(k for k in queues if k is not None)
        floor = -(len(self.seen) - 1) * self.credit_high
        eligible = {
            k: q for k, q in queues.items() if k is not None and self.credits.get(k, 0.0) >= floor
        }
        best = (
            max(eligible, key=lambda k: (len(eligible[k]), -eligible[k][0].seq_no))
            if eligible
            else None
        )
        self._observe(len(fcfs), best, len(eligible[best]) if best is not None else 0)
        if credit:
            chosen = [r for k in credit for r in queues[k]][:B]
            taken = {id(r) for r in chosen}
            chosen += [r for r in queued if id(r) not in taken][: B - len(chosen)]
            self._move_credit(fcfs, chosen, 1.0 / B)
            return self._choose("credit", None, chosen)
        current = self.merged
        if current in eligible and len(eligible[current]) >= self.theta_l * len(fcfs):
            return self._merged(current, eligible[current][:B], fcfs)
        if best is not None and len(eligible[best]) >= self.theta_r * len(fcfs):
            return self._merged(best, eligible[best][:B], fcfs)
        return self._choose("unmerged", None, fcfs)

    def _merged(
        self, name: str, chosen: list[EngineRequest], fcfs: list[EngineRequest]
    ) -> LoRAPlan:
        self._move_credit(fcfs, chosen, 1.0 / (self.rho * self.config.max_num_seqs))
        return self._choose("merged", name, chosen)

    def _choose(self, mode: str, merged: str | None, chosen: list[EngineRequest]) -> LoRAPlan:
        if merged != self.merged or self.window.iters >= self.adapt_every:
            self._adapt()
        self.mode_iters[mode] += 1
        ids = {id(r) for r in chosen}
        return LoRAPlan(merged, lambda r: id(r) in ids)
