"""Exact placement by integer linear programming (HiGHS, the ``highspy`` bindings).

The same objective as :mod:`.placement` with every all-to-all at its lower bound (Aurora's
ordering attains it): binary ``x[m, e, g]`` puts expert ``e`` of model ``m`` on GPU ``g``;
a model's all-to-all time ``D_m`` is at least every port's busy time (send and receive are
linear in ``x``), its compute ``C_m`` at least every GPU's work / speed. The combine takes
``D_m`` too (pair rates are symmetric, so the transpose has the same bound).

- one model: minimize ``2 D + C``;
- two co-located models: minimize ``D_A + D_B + max(C_A, D_B) + max(D_A, C_B)``.

Small instances solve to optimality in seconds; ``time_limit`` bounds the rest, and the
answer then carries HiGHS's dual bound, so the gap of a heuristic is still bounded. One thread
and a fixed seed: a solve that finishes gives the same answer on any machine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import highspy
import numpy as np

from core.alltoall.rounds import pair_rates

from .placement import Cluster, MoELayer, check_layer


@dataclass(frozen=True)
class IlpResult:
    """``placements`` (one per model; None when no feasible point was found in time),
    ``objective`` (s), ``bound`` (s; a lower bound on the optimum, equal to it when
    ``optimal``), HiGHS's ``status`` message."""

    placements: list[np.ndarray] | None
    objective: float
    bound: float
    optimal: bool
    status: str


def _port_rows(layer: MoELayer, cluster: Cluster) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients ``send[g, e, j]`` and ``recv[g, e]`` (seconds) of GPU ``g``'s send and
    receive time when expert ``e`` sits on GPU ``j`` (send) or on ``g`` (receive)."""
    n, r = cluster.gpus, layer.routing
    rate = pair_rates(np.asarray(cluster.bandwidth))
    sources = r.shape[0]
    send = np.zeros((n, layer.experts, n))
    recv = np.zeros((n, layer.experts))
    for g in range(n):
        for e in range(layer.experts):
            if g < sources:
                send[g, e] = r[g, e] * layer.bytes_per_token / rate[g]
                send[g, e, g] = 0.0
            recv[g, e] = sum(
                r[s, e] * layer.bytes_per_token / rate[s, g] for s in range(sources) if s != g
            )
    return send, recv


def solve_placement(
    layers: Sequence[MoELayer], cluster: Cluster, *, time_limit: float, scale: float = 1.0
) -> IlpResult:
    """The optimal placement of one model (alone) or two (co-located); ``scale`` (s) divides
    every time so the solver works near 1 (pass a heuristic's objective)."""
    if len(layers) not in (1, 2):
        raise ValueError(f"one or two models, got {len(layers)}")
    for layer in layers:
        check_layer(layer, cluster)
    n, m = cluster.gpus, len(layers)
    experts = [layer.experts for layer in layers]
    offs = np.cumsum([0, *[e * n for e in experts]])
    nx = int(offs[-1])
    # continuous: D_m, C_m per model, then M1, M2 for two models
    d_col = [nx + 2 * k for k in range(m)]
    c_col = [nx + 2 * k + 1 for k in range(m)]
    ncols = nx + 2 * m + (2 if m == 2 else 0)
    rows: list[tuple[dict[int, float], float, float]] = []

    def x(k: int, e: int, g: int) -> int:
        return int(offs[k]) + e * n + g

    speed = np.asarray(cluster.speed)
    for k, layer in enumerate(layers):
        for e in range(experts[k]):
            rows.append(({x(k, e, g): 1.0 for g in range(n)}, 1.0, 1.0))
        for g in range(n):
            rows.append(
                ({x(k, e, g): 1.0 for e in range(experts[k])}, cluster.slots, cluster.slots)
            )
        send, recv = _port_rows(layer, cluster)
        loads = layer.routing.sum(axis=0) * layer.flops_per_token
        for g in range(n):
            row = {x(k, e, j): -send[g, e, j] / scale for e in range(experts[k]) for j in range(n)}
            rows.append(({**{i: v for i, v in row.items() if v}, d_col[k]: 1.0}, 0.0, np.inf))
            row = {x(k, e, g): -recv[g, e] / scale for e in range(experts[k]) if recv[g, e]}
            rows.append(({**row, d_col[k]: 1.0}, 0.0, np.inf))
            row = {x(k, e, g): -loads[e] / speed[g] / scale for e in range(experts[k])}
            rows.append(({**row, c_col[k]: 1.0}, 0.0, np.inf))
    cost = np.zeros(ncols)
    if m == 1:
        cost[d_col[0]], cost[c_col[0]] = 2.0, 1.0
    else:
        m1, m2 = nx + 4, nx + 5
        cost[[d_col[0], d_col[1], m1, m2]] = 1.0
        for mc, other in ((m1, c_col[0]), (m1, d_col[1]), (m2, d_col[0]), (m2, c_col[1])):
            rows.append(({mc: 1.0, other: -1.0}, 0.0, np.inf))
    upper = np.full(ncols, np.inf)
    upper[:nx] = 1.0
    h = _run_highs(cost, upper, nx, rows, time_limit)
    status = h.modelStatusToString(h.getModelStatus())
    info = h.getInfo()
    bound = float(info.mip_dual_bound) * scale
    if info.primal_solution_status != 2:  # no feasible point
        return IlpResult(None, np.inf, bound, False, status)
    sol = np.asarray(h.getSolution().col_value)
    placements = [
        sol[int(offs[k]) : int(offs[k + 1])].reshape(experts[k], n).argmax(axis=1) for k in range(m)
    ]
    obj = float(info.objective_function_value) * scale
    optimal = status == "Optimal"
    return IlpResult(placements, obj, obj if optimal else min(bound, obj), optimal, status)


def _run_highs(
    cost: np.ndarray,
    upper: np.ndarray,
    integers: int,
    rows: list[tuple[dict[int, float], float, float]],
    time_limit: float,
) -> highspy.Highs:
    """Minimize ``cost . x`` with ``0 <= x <= upper``, the first ``integers`` columns integer,
    one thread and a fixed seed, within ``time_limit`` seconds."""
    h = _silent_highs()
    for name, value in (
        ("time_limit", float(time_limit)),
        ("mip_rel_gap", 1e-7),
        ("threads", 1),
        ("random_seed", 0),
    ):
        h.setOptionValue(name, value)
    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(cost), len(rows)
    lp.col_cost_ = cost
    lp.col_lower_ = np.zeros(len(cost))
    lp.col_upper_ = np.where(np.isinf(upper), inf, upper)
    lp.row_lower_ = np.array([lo for _, lo, _ in rows])
    lp.row_upper_ = np.array([inf if np.isinf(hi) else hi for _, _, hi in rows])
    starts = np.cumsum([0, *[len(c) for c, _, _ in rows]])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = starts.astype(np.int32)
    lp.a_matrix_.index_ = np.array([j for c, _, _ in rows for j in c], dtype=np.int32)
    lp.a_matrix_.value_ = np.array([v for c, _, _ in rows for v in c.values()], dtype=float)
    kinds = [highspy.HighsVarType.kInteger] * integers
    lp.integrality_ = kinds + [highspy.HighsVarType.kContinuous] * (len(cost) - integers)
    h.passModel(lp)
    h.run()
    return h


def _silent_highs() -> highspy.Highs:
    """HiGHS prints a banner from C when constructed, before options apply: construct it with
    file descriptor 1 on /dev/null."""
    sys.stdout.flush()
    keep = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
    finally:
        os.dup2(keep, 1)
        os.close(keep)
        os.close(null)
    return h
