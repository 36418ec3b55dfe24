"""A small mixed-integer program builder over HiGHS (``highspy``): columns with bounds and
integrality, sparse rows with bounds, a linear objective, a wall-clock time limit."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import highspy
import numpy as np


@dataclass
class MilpSolution:
    """``x`` is None when no feasible point was found; ``status`` is HiGHS's model status
    ("Optimal", "Infeasible", "Time limit reached", ...); ``gap`` the relative MIP gap."""

    status: str
    x: np.ndarray | None
    objective: float
    gap: float
    seconds: float

    @property
    def infeasible(self) -> bool:
        return self.status == "Infeasible"


class Milp:
    """Minimize (or maximize) ``cost . x`` subject to row bounds; columns are continuous in
    [0, inf) until told otherwise."""

    def __init__(self, ncols: int, *, maximize: bool = False) -> None:
        self.n = ncols
        self.maximize = maximize
        self.cost = np.zeros(ncols)
        self.lower = np.zeros(ncols)
        self.upper = np.full(ncols, math.inf)
        self.integer = np.zeros(ncols, dtype=bool)
        self._rows: list[tuple[dict[int, float], float, float]] = []

    def add_cols(self, k: int) -> int:
        """Append ``k`` continuous columns; returns the index of the first."""
        first = self.n
        self.n += k
        self.cost = np.concatenate([self.cost, np.zeros(k)])
        self.lower = np.concatenate([self.lower, np.zeros(k)])
        self.upper = np.concatenate([self.upper, np.full(k, math.inf)])
        self.integer = np.concatenate([self.integer, np.zeros(k, dtype=bool)])
        return first

    def bounds(self, j: int, lower: float, upper: float, *, integer: bool = False) -> None:
        self.lower[j], self.upper[j], self.integer[j] = lower, upper, integer

    def binary(self, j: int) -> None:
        self.bounds(j, 0.0, 1.0, integer=True)

    def row(
        self, coefs: dict[int, float], *, lower: float = -math.inf, upper: float = math.inf
    ) -> None:
        self._rows.append((coefs, lower, upper))

    def solve(
        self,
        *,
        time_limit: float,
        rel_gap: float = 1e-3,
        node_limit: int | None = None,
        threads: int = 1,
    ) -> MilpSolution:
        """Solve within ``time_limit`` wall-clock seconds. ``node_limit`` bounds the branch and
        bound by a count instead (with one thread and a fixed seed the search is deterministic,
        so a solve that stops at the node limit gives the same answer on any machine; one cut
        by the clock may not)."""
        h = _quiet_highs()
        h.setOptionValue("time_limit", float(time_limit))
        h.setOptionValue("mip_rel_gap", float(rel_gap))
        h.setOptionValue("threads", int(threads))
        h.setOptionValue("random_seed", 0)
        if node_limit is not None:
            h.setOptionValue("mip_max_nodes", int(node_limit))
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.n, len(self._rows)
        inf = highspy.kHighsInf
        lp.col_cost_ = -self.cost if self.maximize else self.cost
        lp.col_lower_ = np.where(np.isinf(self.lower), -inf, self.lower)
        lp.col_upper_ = np.where(np.isinf(self.upper), inf, self.upper)
        lp.row_lower_ = np.array([-inf if math.isinf(lo) else lo for _, lo, _ in self._rows])
        lp.row_upper_ = np.array([inf if math.isinf(up) else up for _, _, up in self._rows])
        starts, index, value = [0], [], []
        for coefs, _, _ in self._rows:
            for j, v in coefs.items():
                index.append(j)
                value.append(v)
            starts.append(len(index))
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
        lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
        lp.a_matrix_.value_ = np.array(value, dtype=float)
        if self.integer.any():
            lp.integrality_ = [
                highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                for i in self.integer
            ]
        h.passModel(lp)
        h.run()
        status = h.modelStatusToString(h.getModelStatus())
        info = h.getInfo()
        has_x = info.primal_solution_status == 2  # a feasible point
        x = np.array(h.getSolution().col_value) if has_x else None
        obj = info.objective_function_value
        gap = info.mip_gap if self.integer.any() else 0.0
        return MilpSolution(
            status,
            x,
            (-obj if self.maximize else obj) if has_x else math.nan,
            float(gap),
            float(h.getRunTime()),
        )


def _quiet_highs() -> highspy.Highs:
    """A Highs instance with logging off; its constructor prints a banner to the C-level
    stdout before any option can be set, so that file descriptor is pointed at /dev/null
    while it runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
            h.setOptionValue("output_flag", False)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    return h
