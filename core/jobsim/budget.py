"""Non-replenishable resources: differential-privacy budgets of data blocks.

A block's budget is a vector over accounting orders. Basic composition has one order (plain
epsilon). Renyi DP (RDP) has one entry per order alpha, each the epsilon the block can spend
at that order; demands add up at every order, and a demand fits while *some* order stays
within its capacity (a pipeline's final guarantee is taken at the best order). Budget spent is
never given back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Tolerance for float sums against a capacity (a sum of 100 demands of 0.01 must fit 1.0).
EPS_BUDGET = 1e-9

#: RDP orders the DPF artifact tracks (the paper's {2, 3, 4, 8, ..., 64}).
RDP_ORDERS: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 16.0, 32.0, 64.0)


def rdp_capacity(epsilon: float, delta: float, orders: Sequence[float]) -> tuple[float, ...]:
    """The RDP budget at each order of a block with an (epsilon, delta)-DP guarantee:
    ``max(0, epsilon - log(1/delta) / (alpha - 1))`` (RDP-to-DP conversion)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    return tuple(max(0.0, epsilon - math.log(1 / delta) / (a - 1)) for a in orders)


def gaussian_rdp_demand(epsilon: float, delta: float, orders: Sequence[float]) -> tuple[float, ...]:
    """RDP cost at each order of one Gaussian mechanism (sensitivity 1) calibrated to
    (epsilon, delta)-DP: sigma = sqrt(2 ln(1.25/delta)) / epsilon, cost alpha / (2 sigma^2)."""
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    sigma = math.sqrt(2 * math.log(1.25 / delta)) / epsilon
    return tuple(a / (2 * sigma * sigma) for a in orders)


@dataclass
class PrivacyBlock:
    """A data block and its privacy budget.

    ``capacity[k]`` is the total budget at order ``k``; ``spent[k]`` what granted pipelines
    consumed. Contract: :meth:`fits` ``(d, limit)`` is true when some order ``k`` with a
    positive capacity has ``spent[k] + d[k] <= limit[k]`` (``limit`` defaults to the capacity;
    policies pass what they have unlocked); :meth:`spend` adds ``d`` at every order and raises
    if the demand does not fit the full capacity, so a budget is never overdrawn.
    """

    block_id: int
    created: float
    capacity: tuple[float, ...]
    spent: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.capacity or any(c < 0 for c in self.capacity):
            raise ValueError(f"block {self.block_id}: bad capacity {self.capacity}")
        if not self.spent:
            self.spent = [0.0] * len(self.capacity)

    @property
    def orders(self) -> int:
        return len(self.capacity)

    def fits(self, demand: Sequence[float], limit: Sequence[float] | None = None) -> bool:
        lim = self.capacity if limit is None else limit
        return any(
            c > 0 and s + d <= lm + EPS_BUDGET
            for c, s, d, lm in zip(self.capacity, self.spent, demand, lim, strict=True)
        )

    def spend(self, demand: Sequence[float]) -> None:
        if not self.fits(demand):
            raise BudgetExceeded(
                f"block {self.block_id}: demand {tuple(demand)} does not fit "
                f"(spent {tuple(self.spent)} of {self.capacity})"
            )
        for k, d in enumerate(demand):
            self.spent[k] += d

    def share(self, demand: Sequence[float]) -> float:
        """The demand's share of this block: its smallest fraction of capacity over the orders
        that have any (basic composition: d / epsilon_G)."""
        shares = [d / c for d, c in zip(demand, self.capacity, strict=True) if c > 0]
        return min(shares) if shares else math.inf

    def used_fraction(self) -> float:
        """Fraction of the budget spent, at the best order (the order with most left)."""
        fr = [s / c for s, c in zip(self.spent, self.capacity, strict=True) if c > 0]
        return min(fr) if fr else 0.0


class BudgetExceeded(RuntimeError):
    """A grant would overdraw a block: the scheduler that asked for it is wrong."""
