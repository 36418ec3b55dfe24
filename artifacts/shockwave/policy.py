"""Shockwave (NSDI'23): plan the next T rounds with a MILP that trades long-term efficiency
(each job's log-progress, a proxy of Nash social welfare) against the makespan, under a
finish-time-fairness constraint, predicting each job's remaining time from a Dirichlet
posterior over its batch-size regimes.

The program (one per re-plan: a job arrived or finished, or the plan ran out):

    x_jt in {0,1}                       job j runs in round t of the horizon
    sum_j w_j x_jt <= G                 for every round t (w_j: the job's GPUs)
    p_j * d_j <= round_s * sum_t x_jt   p_j: planned epochs, d_j: mean epoch time so far
    v_j = (e_j + p_j) / E_j <= 1        progress after the plan (e_j done of E_j epochs)
    u_j <= PWL log(v_j)                 concave piecewise-linear log over the given bases
    r_j >= Rem_j - p_j * d_j, r_j >= 0  remaining time after the plan; M >= r_j
    t_next + r_j / s <= rho_max * FT_j  finish-time fairness (s = min(1, G/N); FT_j the
                                        momentum-averaged finish time on a 1/N share)
    maximize  sum_j prio_j * u_j / (N * T)  -  k * M

Because log is concave and the objective maximizes it, u_j's hypograph rows replace the
authors' SOS2 binaries exactly. When the fairness rows make the program infeasible (or the
time limit passes without a feasible point), they are dropped and jobs projected to finish
late get prio_j = rho_j ** lambda (rho_j ** 100 if they need less than a round; capped at 1e6
to keep the program well scaled), and the program is solved again. Its objective depends only
on how many rounds each job gets, so the rounds are then re-ordered: at every round of the plan
the boosted jobs take theirs first, the others keeping the solver's order (the authors solve a
second program for this ranking). GPUs the plan leaves idle go to the
unplanned jobs with the longest predicted remaining time. If even the fallback finds no plan
within the solver's limits, the ranking alone hands out the rounds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from core.jobsim import JobState, RoundView

from .milp import Milp
from .trace import bs_modes_of, mode_seconds_of

PRIORITY_CAP = 1e6


@dataclass(frozen=True)
class PlanInput:
    """One planning problem. Per job: GPUs ``w``, epochs ``E``, epochs done ``e``, mean epoch
    seconds ``d``, predicted remaining seconds ``rem``, fairness target ``ft`` (absolute
    seconds) and utility weight ``prio``."""

    w: Sequence[int]
    E: Sequence[float]
    e: Sequence[float]
    d: Sequence[float]
    rem: Sequence[float]
    ft: Sequence[float]
    prio: Sequence[float]
    gpus: int
    rounds: int
    round_s: float
    t_next: float
    k: float
    rho_max: float = 1.0
    bases: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    origin: float = 1e-6
    fairness: bool = True

    @property
    def n(self) -> int:
        return len(self.w)

    @property
    def share(self) -> float:
        return min(1.0, self.gpus / self.n)


def log_points(inp: PlanInput) -> list[tuple[float, float]]:
    """(base, log base) breakpoints; log(0) is taken as log(origin)."""
    return [(b, math.log(b if b > 0 else inp.origin)) for b in inp.bases]


def pwl_log(v: float, inp: PlanInput) -> float:
    """The piecewise-linear log the program maximizes, at normalized progress ``v``."""
    pts = log_points(inp)
    for (b0, l0), (b1, l1) in itertools.pairwise(pts):
        if v <= b1 + 1e-12:
            return l0 + (l1 - l0) * (v - b0) / (b1 - b0)
    return pts[-1][1]


@dataclass
class PlanResult:
    """``x[j][t]``: job j runs in round t; None when the solver found nothing."""

    x: np.ndarray | None
    status: str
    objective: float
    seconds: float
    gap: float


def solve_plan(
    inp: PlanInput, *, time_limit: float, rel_gap: float = 1e-3, node_limit: int | None = None
) -> PlanResult:
    n, T = inp.n, inp.rounds
    m = Milp(n * T, maximize=True)
    for j in range(n * T):
        m.binary(j)
    p = m.add_cols(n)
    u = m.add_cols(n)
    r = m.add_cols(n)
    M = m.add_cols(1)
    for t in range(T):
        m.row({j * T + t: float(inp.w[j]) for j in range(n)}, upper=inp.gpus)
    pts = log_points(inp)
    for j in range(n):
        m.bounds(p + j, 0.0, max(0.0, inp.E[j] - inp.e[j]))
        m.bounds(u + j, -math.inf, 0.0)
        m.cost[u + j] = inp.prio[j] / (n * T)
        row = {p + j: inp.d[j]}
        row.update({j * T + t: -inp.round_s for t in range(T)})
        m.row(row, upper=0.0)
        for (b0, l0), (b1, l1) in itertools.pairwise(pts):
            slope = (l1 - l0) / (b1 - b0)
            # u_j <= l0 + slope * ((e_j + p_j) / E_j - b0)
            m.row(
                {u + j: 1.0, p + j: -slope / inp.E[j]},
                upper=l0 + slope * (inp.e[j] / inp.E[j] - b0),
            )
        m.row({r + j: 1.0, p + j: inp.d[j]}, lower=inp.rem[j])
        m.row({M: 1.0, r + j: -1.0}, lower=0.0)
        if inp.fairness:
            m.row({r + j: 1.0}, upper=(inp.rho_max * inp.ft[j] - inp.t_next) * inp.share)
    m.cost[M] = -inp.k
    sol = m.solve(time_limit=time_limit, rel_gap=rel_gap, node_limit=node_limit)
    x = None if sol.x is None else (sol.x[: n * T].reshape(n, T) > 0.5)
    return PlanResult(x, sol.status, sol.objective, sol.seconds, sol.gap)


def predicted_remaining_s(s: JobState, gpu_type: str = "v100") -> float:
    """Remaining seconds under a Dirichlet posterior over the job's batch-size regimes: the
    prior puts E / |regimes| epochs on each, every epoch seen so far adds one to its regime,
    and the remaining epochs are split in the posterior's proportions, each at its regime's
    profiled epoch time."""
    job = s.job
    modes = list(bs_modes_of(job)) or [s.batch_size]
    secs = mode_seconds_of(job)
    E = job.work.epochs
    post = dict.fromkeys(modes, E / len(modes))
    for bs in job.work.batch_sizes[: s.epoch + 1]:
        post[bs] = post.get(bs, 0.0) + 1.0
    total = sum(post.values())
    per_epoch = sum(
        c / total * secs.get(bs, s.current_epoch_seconds(gpu_type)) for bs, c in post.items()
    )
    return s.remaining_epochs() * per_epoch


def momentum_average(series: Sequence[tuple[int, float]], now_round: int, momentum: float) -> float:
    """The finish-time target: the estimates weighted by how many rounds each held, blended
    with the latest one (the authors' momentum average)."""
    rounds = [r for r, _ in series] + [now_round]
    spans = np.diff(rounds)
    weights = np.ones(1) if spans.max() == 0 else spans / spans.sum()
    avg = float(np.dot(weights, [v for _, v in series])) if len(series) > 1 else series[0][1]
    return momentum * avg + (1 - momentum) * series[-1][1]


@dataclass
class SolveLog:
    """One re-plan: the round, the jobs, the status of the fair program (and of the fallback's
    when it ran), the solver seconds in all and the final MIP gap."""

    round_index: int
    jobs: int
    status: str
    fallback: bool
    seconds: float
    gap: float
    fallback_status: str = ""


@dataclass
class Shockwave:
    """The Shockwave scheduler. ``horizon``: rounds planned (T); ``k``: makespan weight;
    ``lam``: the fallback's priority exponent; ``time_limit``: seconds per solve."""

    gpus: int
    horizon: int = 20
    k: float = 1e-3
    lam: float = 12.0
    rho_max: float = 1.0
    time_limit: float = 15.0
    node_limit: int | None = None
    rel_gap: float = 1e-3
    momentum: float = 0.9
    gpu_type: str = "v100"
    name: str = "Shockwave"
    solves: list[SolveLog] = field(default_factory=list)
    _plan: dict[int, list[int]] = field(default_factory=dict)
    _jobs: frozenset[int] = frozenset()
    _series: dict[int, list[tuple[int, float]]] = field(default_factory=dict)

    def schedule(self, view: RoundView) -> dict[int, str]:
        ids = frozenset(s.job_id for s in view.jobs)
        if ids != self._jobs or view.round_index not in self._plan:
            if ids != self._jobs:
                self._estimate_targets(view)
            self._jobs = ids
            self._replan(view)
        planned = set(self._plan[view.round_index]) & ids
        by_id = {s.job_id: s for s in view.jobs}
        free = self.gpus - sum(by_id[j].job.gpus for j in planned)
        out = {j: self.gpu_type for j in planned}
        rest = sorted(
            (s for s in view.jobs if s.job_id not in planned),
            key=lambda s: (-predicted_remaining_s(s, self.gpu_type), s.job_id),
        )
        for s in rest:  # work conservation
            if s.job.gpus <= free:
                out[s.job_id] = self.gpu_type
                free -= s.job.gpus
        return out

    def _estimate_targets(self, view: RoundView) -> None:
        share = min(1.0, self.gpus / len(view.jobs))
        for s in view.jobs:
            done = s.job.work.seconds_at(s.progress, self.gpu_type)
            ft = s.job.arrival + (done + predicted_remaining_s(s, self.gpu_type)) / share
            self._series.setdefault(s.job_id, []).append((view.round_index, ft))

    def _inputs(self, view: RoundView, prio: Sequence[float], fairness: bool) -> PlanInput:
        t = self.gpu_type
        jobs = view.jobs
        return PlanInput(
            w=[s.job.gpus for s in jobs],
            E=[float(s.job.work.epochs) for s in jobs],
            e=[s.progress for s in jobs],
            d=[float(np.mean(s.job.work.epoch_seconds[t][: s.epoch + 1])) for s in jobs],
            rem=[predicted_remaining_s(s, t) for s in jobs],
            ft=[
                momentum_average(self._series[s.job_id], view.round_index, self.momentum)
                for s in jobs
            ],
            prio=list(prio),
            gpus=self.gpus,
            rounds=self.horizon,
            round_s=view.round_s,
            t_next=view.round_s * (view.round_index + self.horizon),
            k=self.k,
            rho_max=self.rho_max,
            fairness=fairness,
        )

    def _replan(self, view: RoundView) -> None:
        inp = self._inputs(view, [1.0] * len(view.jobs), fairness=True)
        res = solve_plan(
            inp, time_limit=self.time_limit, rel_gap=self.rel_gap, node_limit=self.node_limit
        )
        seconds, fallback = res.seconds, False
        rho = [(view.now + inp.rem[j] / inp.share) / inp.ft[j] for j in range(inp.n)]
        prio = [1.0] * inp.n
        if res.x is None:
            fallback = True
            for j in range(inp.n):
                if rho[j] > self.rho_max:
                    power = 100.0 if inp.rem[j] < view.round_s else self.lam
                    prio[j] = min(PRIORITY_CAP, rho[j] ** power)
            res2 = solve_plan(
                self._inputs(view, prio, fairness=False),
                time_limit=self.time_limit,
                rel_gap=self.rel_gap,
                node_limit=self.node_limit,
            )
            seconds += res2.seconds
            # no plan within the limits: every job asks for every round and the ranking
            # below hands the rounds out by priority, then projected rho
            x = res2.x if res2.x is not None else np.ones((inp.n, self.horizon), dtype=bool)
            gap, status2 = res2.gap, res2.status
        else:
            x, gap, status2 = res.x, res.gap, ""
        self.solves.append(
            SolveLog(view.round_index, len(view.jobs), res.status, fallback, seconds, gap, status2)
        )
        # boosted jobs first, then the longest predicted remaining (what the makespan term
        # wants early; the plan is re-solved long before its last rounds run)
        rank = [(-prio[j], -inp.rem[j]) for j in range(inp.n)]
        rounds = rank_rounds(x, inp.w, self.gpus, rank)
        self._plan = {
            view.round_index + t: [view.jobs[j].job_id for j in rounds[t]]
            for t in range(self.horizon)
        }


def rank_rounds(
    x: np.ndarray, w: Sequence[int], gpus: int, rank: Sequence[tuple[float, ...]]
) -> list[list[int]]:
    """Re-order a plan: job j keeps its ``x[j].sum()`` rounds, but at every round the jobs with
    the smallest ``rank`` take theirs first (if their GPUs are free). Returns the job indices
    of each round. A job whose rounds cannot all be placed (a wide job squeezed out by the
    re-ordering) keeps as many as fit."""
    n, T = x.shape
    left = [int(x[j].sum()) for j in range(n)]
    order = sorted(range(n), key=lambda j: (rank[j], j))
    rounds: list[list[int]] = []
    for _ in range(T):
        free, chosen = gpus, []
        for j in order:
            if left[j] > 0 and w[j] <= free:
                chosen.append(j)
                free -= w[j]
                left[j] -= 1
        rounds.append(chosen)
    return rounds
