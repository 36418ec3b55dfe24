"""dLoRA's reactive request-adapter co-migration: an ILP that re-homes queued requests and
adapters across replicas to minimize the makespan, and the controller that triggers it.

The ILP (:func:`solve_migration`) over replicas ``j``, movable requests ``i`` (adapter
``k(i)``, currently on ``src(i)``) and their adapters ``k``::

    minimize    T
    subject to  sum_j x_ij = 1                                   every request somewhere
                x_ij <= y_k(i)j                                  only where its adapter is
                y_kj = 1 where j keeps requests of k             (pinned)
                sum_k y_kj <= C_j - fixed_j                      adapter slots
                sum_i m_i x_ij - z_j <= M_j                      KV memory, z_j = overflow
                L_j + sum_i (e_i + mig_i [j != src(i)]) x_ij
                    + sum_{k not on j yet} a_k y_kj + pen z_j <= T
                T <= T(current assignment)                       (warm bound)

``x``, ``y`` binary, ``z``, ``T`` continuous; ``e_i`` the request's service time, ``m_i`` its
KV tokens, ``L_j`` the replica's other work, ``a_k`` loading an adapter, ``pen`` seconds per
overflowing KV token (swapping it over PCIe). Solved by HiGHS through
``scipy.optimize.milp`` with a time limit. scipy's interface takes no initial solution, so
the current assignment enters as the bound ``T <= T(current)`` (it is feasible, so the search
only explores improvements) and is kept when the solver stops without a better one.

:class:`MigrationController` ticks every ``interval_s`` (10 s): when one replica's KV is at
least ``kv_high`` (90%) full while another's is below, or the busiest replica has
``queue_gap`` (16) more requests than the mean, it solves the ILP over the waiting requests of
the replicas above the mean queue (oldest first, at most ``max_requests``) and moves them.
What this leaves out of dLoRA: running requests (with their KV) are not migrated.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.sched.request import RequestStatus

from .placement import Placement

__all__ = [
    "MigrationController",
    "MigrationProblem",
    "MigrationSolution",
    "brute_force_migration",
    "solve_migration",
]


@dataclass(frozen=True)
class MovableRequest:
    request_id: str
    adapter: str
    src: int
    service_s: float  # e_i
    kv_tokens: int  # m_i
    migrate_s: float = 0.0  # mig_i, paid when it leaves src


@dataclass
class MigrationProblem:
    """One instance of the ILP (see the module docstring); per replica lists are indexed by
    replica, ``hosted`` is the current placement."""

    load_s: list[float]
    free_kv_tokens: list[float]
    capacity: list[int]
    hosted: Placement
    requests: list[MovableRequest]
    adapter_load_s: float = 0.0
    overflow_s_per_token: float = 1e-3
    pinned: set[tuple[str, int]] = field(default_factory=set)

    @property
    def adapters(self) -> list[str]:
        return sorted({r.adapter for r in self.requests})

    def makespan(self, assign: Sequence[int]) -> float:
        """``T`` of an assignment (replica per request) with the fewest adapters it needs;
        inf when they exceed a replica's slots."""
        J, K = len(self.load_s), set(self.adapters)
        worst = 0.0
        for j in range(J):
            mine = [r for r, a in zip(self.requests, assign, strict=True) if a == j]
            needed = {r.adapter for r in mine} | {k for k, jj in self.pinned if jj == j}
            fixed = len(self.hosted[j] - K)
            if fixed + len(needed) > self.capacity[j]:
                return float("inf")
            t = self.load_s[j] + sum(r.service_s + (r.migrate_s if r.src != j else 0) for r in mine)
            t += self.adapter_load_s * len(needed - self.hosted[j])
            overflow = max(0.0, sum(r.kv_tokens for r in mine) - self.free_kv_tokens[j])
            worst = max(worst, t + self.overflow_s_per_token * overflow)
        return worst


@dataclass
class MigrationSolution:
    """Where each request goes, which adapters each replica hosts (of the problem's), the
    makespan before and after, the solver's status and its wall time."""

    assign: list[int]
    adapters_on: list[set[str]]
    makespan: float
    current_makespan: float
    status: str
    solve_s: float


def solve_migration(problem: MigrationProblem, time_limit_s: float = 10.0) -> MigrationSolution:
    """Solve the ILP with HiGHS (``scipy.optimize.milp``) within ``time_limit_s``."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    t0 = time.perf_counter()
    reqs, J = problem.requests, len(problem.load_s)
    adapters = problem.adapters
    kidx = {k: n for n, k in enumerate(adapters)}
    R, K = len(reqs), len(adapters)
    current = [r.src for r in reqs]
    t_current = problem.makespan(current)
    nx, ny = R * J, K * J
    X, Y, Z, T = 0, nx, nx + ny, nx + ny + J
    nvar = T + 1

    def x(i: int, j: int) -> int:
        return X + i * J + j

    def y(k: int, j: int) -> int:
        return Y + k * J + j

    rows = R + R * J + J + J + J + 1
    A = lil_matrix((rows, nvar))
    lb, ub = np.full(rows, -np.inf), np.zeros(rows)
    row = 0
    for i in range(R):  # every request somewhere
        for j in range(J):
            A[row, x(i, j)] = 1
        lb[row] = ub[row] = 1
        row += 1
    for i, r in enumerate(reqs):  # only where its adapter is
        for j in range(J):
            A[row, x(i, j)], A[row, y(kidx[r.adapter], j)] = 1, -1
            row += 1
    kset = set(adapters)
    for j in range(J):  # adapter slots
        for k in range(K):
            A[row, y(k, j)] = 1
        ub[row] = problem.capacity[j] - len(problem.hosted[j] - kset)
        row += 1
    for j in range(J):  # memory with overflow
        for i, r in enumerate(reqs):
            A[row, x(i, j)] = r.kv_tokens
        A[row, Z + j] = -1
        ub[row] = problem.free_kv_tokens[j]
        row += 1
    for j in range(J):  # makespan
        for i, r in enumerate(reqs):
            A[row, x(i, j)] = r.service_s + (r.migrate_s if r.src != j else 0.0)
        for k, name in enumerate(adapters):
            if name not in problem.hosted[j]:
                A[row, y(k, j)] = problem.adapter_load_s
        A[row, Z + j] = problem.overflow_s_per_token
        A[row, T] = -1
        ub[row] = -problem.load_s[j]
        row += 1
    A[row, T] = 1  # warm bound: no worse than staying
    ub[row] = t_current + 1e-9

    lo, hi = np.zeros(nvar), np.ones(nvar)
    hi[Z:] = np.inf
    for k, j in problem.pinned:
        if k in kidx:
            lo[y(kidx[k], j)] = 1
    integrality = np.zeros(nvar)
    integrality[: nx + ny] = 1
    c = np.zeros(nvar)
    c[T] = 1.0
    # ties: fewer moves, fewer adapters (a tiny fraction of a second each)
    for i, r in enumerate(reqs):
        for j in range(J):
            c[x(i, j)] = 1e-6 * (j != r.src)
    c[Y : Y + ny] = 1e-7
    res = milp(
        c,
        constraints=LinearConstraint(A.tocsr(), lb, ub),
        integrality=integrality,
        bounds=Bounds(lo, hi),
        options={"time_limit": float(time_limit_s), "disp": False},
    )
    solve_s = time.perf_counter() - t0
    if res.x is None:
        keep = [set(problem.hosted[j] & kset) for j in range(J)]
        return MigrationSolution(current, keep, t_current, t_current, "no-better-solution", solve_s)
    sol = np.round(res.x).astype(int)
    assign = [int(np.argmax(sol[x(i, 0) : x(i, 0) + J])) for i in range(R)]
    adapters_on = [{k for k in adapters if sol[y(kidx[k], j)]} for j in range(J)]
    status = "optimal" if res.status == 0 else "time-limit"
    return MigrationSolution(
        assign, adapters_on, problem.makespan(assign), t_current, status, solve_s
    )


def brute_force_migration(problem: MigrationProblem) -> float:
    """The optimal makespan by enumerating every assignment (tests, tiny instances only)."""
    J = len(problem.load_s)
    return min(
        problem.makespan(list(a)) for a in itertools.product(range(J), repeat=len(problem.requests))
    )


class MigrationController:
    """The simulator controller running dLoRA's reactive migration (see the module docstring).

    ``placement`` is shared with the router and updated in place; ``adapter_of`` maps request
    ids to adapters; ``sec_per_token`` converts outstanding tokens to seconds of work.
    ``log`` keeps one entry per ILP solved (time, size, status, solve seconds, moves).
    """

    def __init__(
        self,
        placement: Placement,
        adapter_of: Mapping[str, str | None],
        *,
        capacity: int,
        sec_per_token: float,
        adapter_load_s: float = 0.0,
        interval_s: float = 10.0,
        kv_high: float = 0.9,
        queue_gap: int = 16,
        max_requests: int = 64,
        time_limit_s: float = 10.0,
        overflow_s_per_token: float = 1e-3,
    ) -> None:
        self.placement = placement
        self.adapter_of = adapter_of
        self.capacity = capacity
        self.sec_per_token = sec_per_token
        self.adapter_load_s = adapter_load_s
        self.interval_s = interval_s
        self.kv_high = kv_high
        self.queue_gap = queue_gap
        self.max_requests = max_requests
        self.time_limit_s = time_limit_s
        self.overflow_s_per_token = overflow_s_per_token
        self.log: list[dict[str, Any]] = []

    def triggered(self, replicas: Sequence[Any]) -> bool:
        usage = [r.scheduler.kv.usage for r in replicas]
        queues = [r.outstanding_requests() for r in replicas]
        kv = max(usage) >= self.kv_high and min(usage) < self.kv_high
        return kv or max(queues) - float(np.mean(queues)) >= self.queue_gap

    def tick(self, now: float, replicas: Sequence[Any]) -> list[tuple[str, int, int]]:
        if len(replicas) < 2 or not self.triggered(replicas):
            return []
        queues = [r.outstanding_requests() for r in replicas]
        mean = float(np.mean(queues))
        movable: list[tuple[float, Any, int]] = []
        for j, rep in enumerate(replicas):
            if queues[j] > mean:
                for req in rep.scheduler.waiting:
                    if req.status == RequestStatus.WAITING and not req.num_computed_tokens:
                        if self.adapter_of.get(req.request_id) is not None:
                            movable.append((req.arrival_time, req, j))
        movable.sort(key=lambda t: t[0])
        movable = movable[: self.max_requests]
        if not movable:
            return []
        spt = self.sec_per_token
        reqs = [
            MovableRequest(
                req.request_id,
                str(self.adapter_of[req.request_id]),
                j,
                (req.num_tokens + req.max_tokens) * spt,
                req.num_tokens + req.max_tokens,
            )
            for _, req, j in movable
        ]
        moving = {r.request_id for r in reqs}
        load, free, pinned = [], [], set()
        for j, rep in enumerate(replicas):
            mine = sum(r.service_s for r in reqs if r.src == j)
            load.append(rep.outstanding_tokens() * spt - mine)
            kv = rep.scheduler.kv
            free.append(kv.num_free_blocks * kv.block_size)
            s = rep.scheduler
            for q in (s.running, s.waiting, s.swapped, s.paused):
                for r in q:
                    k = self.adapter_of.get(r.request_id)
                    if k is not None and r.request_id not in moving:
                        pinned.add((k, j))
        problem = MigrationProblem(
            load,
            free,
            [self.capacity] * len(replicas),
            [set(p) for p in self.placement],
            reqs,
            self.adapter_load_s,
            self.overflow_s_per_token,
            pinned,
        )
        sol = solve_migration(problem, self.time_limit_s)
        moves = [
            (r.request_id, r.src, j) for r, j in zip(reqs, sol.assign, strict=True) if j != r.src
        ]
        kset = set(problem.adapters)
        for j in range(len(replicas)):
            self.placement[j] -= kset - sol.adapters_on[j]
            self.placement[j] |= sol.adapters_on[j]
        self.log.append(
            {
                "time": now,
                "requests": len(reqs),
                "replicas": len(replicas),
                "status": sol.status,
                "solve_s": sol.solve_s,
                "moves": len(moves),
                "makespan_before": sol.current_makespan,
                "makespan_after": sol.makespan,
            }
        )
        return moves
