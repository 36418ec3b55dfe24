"""Distribution statistics with one fixed percentile definition.

Percentiles use ``numpy.percentile(..., method="linear")`` (numpy's default; type 7 of
Hyndman and Fan, the same as pandas' ``quantile`` and vLLM's ``benchmark_serving``): the
``q``-th percentile of ``n`` sorted values ``x[0..n-1]`` interpolates linearly at rank
``(n - 1) * q / 100``. A single value is every percentile of itself; no values give NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Final

import numpy as np

__all__ = ["PERCENTILES", "PERCENTILE_METHOD", "STAT_NAMES", "Stats", "percentile"]

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
PERCENTILE_METHOD: Final = "linear"
#: The statistics a :class:`Stats` holds, in column order.
STAT_NAMES: tuple[str, ...] = ("count", "mean", "min", "p50", "p90", "p95", "p99", "max")


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by :data:`PERCENTILE_METHOD`; NaN if
    empty."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return math.nan
    return float(np.percentile(arr, q, method=PERCENTILE_METHOD))


@dataclass(frozen=True)
class Stats:
    """Count, mean, min, p50, p90, p95, p99 and max of a sample (in its own unit).

    An empty sample has ``count == 0`` and NaN everywhere else. Guarantees
    ``min <= p50 <= p90 <= p95 <= p99 <= max`` and ``min <= mean <= max`` otherwise.
    """

    count: int
    mean: float
    min: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stats:
        """The statistics of ``values``; ``None`` entries (a quantity not defined for one
        request) are skipped."""
        arr = np.asarray([v for v in values if v is not None], dtype=float)
        if arr.size == 0:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan, nan, nan)
        if not np.all(np.isfinite(arr)):
            raise ValueError("statistics need finite values")
        p50, p90, p95, p99 = (
            float(x) for x in np.percentile(arr, PERCENTILES, method=PERCENTILE_METHOD)
        )
        # the mean of equal floats can differ from them in the last bit; keep min<=mean<=max
        mean = min(max(float(arr.mean()), float(arr.min())), float(arr.max()))
        return cls(int(arr.size), mean, float(arr.min()), p50, p90, p95, p99, float(arr.max()))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)
