"""The baseline schedulers Shockwave compares against, as Gavel runs them on a homogeneous
cluster: a policy computes each job's share of time x_j in [0, 1] (sum of x_j * GPUs_j <= G),
and every round the jobs run in descending ``x_j / (fraction of its rounds it has run)``
(never-run jobs first), each taking its GPUs if they are free (Gavel's round mechanism).
FIFO and SRTF order the jobs directly; Gandiva-fair draws them by lottery.

On one GPU type several of Gavel's policies reduce to closed forms, used here:
- max-min fairness (Gavel's LAS): water-filling, x_j = min(1, level);
- finish-time fairness (Themis): minimize max_j rho_j(x), rho_j = (elapsed_j + rem_j / x_j)
  / fair_j, by bisection on rho (the smallest x meeting it), the spare capacity then spread
  in proportion;
- AlloX: its min-cost matching of jobs to GPU queue positions is shortest-processing-time order
  on identical GPUs; the plan is recomputed only when a job arrives or finishes;
- MST (max-sum-throughput): maximize sum_j x_j (normalized throughput) subject to capacity, an
  LP solved with HiGHS; on one GPU type it prefers jobs with fewer GPUs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import numpy as np

from core.jobsim import JobState, RoundView

from .milp import Milp


def remaining_s(s: JobState, gpu_type: str = "v100") -> float:
    """Remaining run time at the job's current speed (what Gavel-based baselines estimate)."""
    return s.remaining_epochs() * s.current_epoch_seconds(gpu_type)


def _gpu_type(view: RoundView) -> str:
    if len(view.cluster) != 1:
        raise ValueError(f"these baselines model one GPU type, got {dict(view.cluster)}")
    return next(iter(view.cluster))


def fill(order: Sequence[JobState], view: RoundView) -> dict[int, str]:
    """Take jobs in ``order``, each if its GPUs are still free."""
    t = _gpu_type(view)
    free = view.cluster[t]
    out: dict[int, str] = {}
    for s in order:
        if s.job.gpus <= free:
            out[s.job_id] = t
            free -= s.job.gpus
    return out


class FIFO:
    """Arrival order; a job that does not fit is skipped (backfilling)."""

    name = "FIFO"

    def schedule(self, view: RoundView) -> dict[int, str]:
        return fill(sorted(view.jobs, key=lambda s: (s.job.arrival, s.job_id)), view)


class SRTF:
    """Shortest remaining time first, preemptive at every round."""

    name = "SRTF"

    def schedule(self, view: RoundView) -> dict[int, str]:
        t = _gpu_type(view)
        return fill(sorted(view.jobs, key=lambda s: (remaining_s(s, t), s.job_id)), view)


class GandivaFair:
    """Gandiva-fair: a lottery with one ticket per job, drawn without replacement every round
    (seeded), each drawn job running if its GPUs are free."""

    name = "Gandiva-Fair"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def schedule(self, view: RoundView) -> dict[int, str]:
        order = list(view.jobs)
        self._rng.shuffle(order)
        return fill(order, view)


class GavelPolicy:
    """A share x_j per job, realized round by round by Gavel's priorities."""

    name = "gavel"

    def allocation(self, view: RoundView) -> Mapping[int, float]:
        raise NotImplementedError

    def schedule(self, view: RoundView) -> dict[int, str]:
        x = self.allocation(view)

        def priority(s: JobState) -> tuple[float, float, int]:
            share = x.get(s.job_id, 0.0)
            seen = s.record.contention_n  # rounds in the system, this one included
            got = s.record.rounds_run / seen if seen else 0.0
            p = math.inf if got == 0 and share > 0 else (share / got if got else 0.0)
            return (-p, s.job.arrival, s.job_id)

        return fill(sorted((s for s in view.jobs if x.get(s.job_id, 0) > 1e-9), key=priority), view)


def water_fill(demands: Sequence[int], capacity: float) -> list[float]:
    """x_j = min(1, level) with sum_j demands_j * x_j = min(capacity, sum demands)."""
    w = np.asarray(demands, dtype=float)
    if w.sum() <= capacity:
        return [1.0] * len(w)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (w * np.minimum(1.0, mid)).sum() > capacity:
            hi = mid
        else:
            lo = mid
    return [min(1.0, lo)] * len(w)


class MaxMinFairness(GavelPolicy):
    """Gavel's max-min fairness (least attained service) on one GPU type."""

    name = "Gavel"

    def allocation(self, view: RoundView) -> dict[int, float]:
        x = water_fill([s.job.gpus for s in view.jobs], view.total_gpus)
        return {s.job_id: v for s, v in zip(view.jobs, x, strict=True)}


class FinishTimeFairness(GavelPolicy):
    """Themis: minimize the largest finish-time fairness rho over the jobs."""

    name = "Themis"

    def allocation(self, view: RoundView) -> dict[int, float]:
        t = _gpu_type(view)
        g, n = view.total_gpus, len(view.jobs)
        w = np.array([s.job.gpus for s in view.jobs], dtype=float)
        rem = np.array([remaining_s(s, t) for s in view.jobs])
        elapsed = np.array([view.now - s.job.arrival for s in view.jobs])
        total = np.array([s.record.exclusive_s for s in view.jobs])
        fair = total / np.minimum(1.0, g / (n * w))

        def need(rho: float) -> np.ndarray | None:
            room = rho * fair - elapsed
            if (room <= 0).any():
                return None
            x = rem / room
            return None if (x > 1 + 1e-12).any() or (w * x).sum() > g + 1e-9 else x

        lo, hi = 0.0, 1.0
        while need(hi) is None:
            hi *= 2
            if hi > 1e12:
                return {s.job_id: 0.0 for s in view.jobs}
        for _ in range(60):
            mid = (lo + hi) / 2
            if need(mid) is None:
                lo = mid
            else:
                hi = mid
        x = need(hi)
        assert x is not None
        spare = g - (w * x).sum()
        if spare > 1e-9:  # spread what the min-max left over, in proportion, capped at 1
            x = np.minimum(1.0, x * (1 + spare / max((w * x).sum(), 1e-12)))
        return {s.job_id: float(v) for s, v in zip(view.jobs, x, strict=True)}


class AlloX(GavelPolicy):
    """AlloX on identical GPUs: shortest (estimated) processing time first, the plan kept
    until a job arrives or finishes."""

    name = "AlloX"

    def __init__(self) -> None:
        self._plan: dict[int, float] = {}
        self._jobs: frozenset[int] = frozenset()

    def allocation(self, view: RoundView) -> dict[int, float]:
        ids = frozenset(s.job_id for s in view.jobs)
        if ids != self._jobs:
            self._jobs = ids
            t = _gpu_type(view)
            chosen = fill(sorted(view.jobs, key=lambda s: (remaining_s(s, t), s.job_id)), view)
            self._plan = {s.job_id: float(s.job_id in chosen) for s in view.jobs}
        return self._plan


class MaxSumThroughput(GavelPolicy):
    """Gavel's max-sum-throughput: maximize the sum of normalized throughputs (an LP)."""

    name = "MST"

    def allocation(self, view: RoundView) -> dict[int, float]:
        n = len(view.jobs)
        lp = Milp(n, maximize=True)
        for j in range(n):
            lp.bounds(j, 0.0, 1.0)
            lp.cost[j] = 1.0
        lp.row({j: float(s.job.gpus) for j, s in enumerate(view.jobs)}, upper=view.total_gpus)
        sol = lp.solve(time_limit=10.0)
        if sol.x is None:
            raise RuntimeError(f"MST: the LP failed ({sol.status})")
        return {s.job_id: float(v) for s, v in zip(view.jobs, sol.x, strict=True)}


BASELINES = ("Gavel", "Themis", "Gandiva-Fair", "AlloX", "MST", "FIFO", "SRTF")
FAIR = ("Gavel", "Themis", "Gandiva-Fair")
"""The fair baselines of the headline claims (max-min, finish-time and proportional
fairness); AlloX, MST, FIFO and SRTF aim at efficiency."""


def make_baseline(name: str, seed: int = 0):
    table = {
        "Gavel": MaxMinFairness,
        "Themis": FinishTimeFairness,
        "AlloX": AlloX,
        "MST": MaxSumThroughput,
        "FIFO": FIFO,
        "SRTF": SRTF,
    }
    if name == "Gandiva-Fair":
        return GandivaFair(seed)
    if name not in table:
        raise ValueError(f"unknown policy {name!r} (known: Shockwave, {', '.join(BASELINES)})")
    return table[name]()
