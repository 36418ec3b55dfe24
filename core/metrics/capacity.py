"""The highest request rate that meets a latency bound, from a sweep over rates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def highest_rate_within(
    rates: Sequence[float], latencies: Sequence[float], bound: float
) -> tuple[float, bool]:
    """``(rate, saturated)``: the highest rate whose latency is ``<= bound``, interpolated
    linearly between the last swept rate that meets it and the first that does not.

    The rate is 0 when even the lowest swept rate misses the bound; ``saturated`` is False when
    every swept rate meets it (the rate returned, the highest swept, is then a lower bound).
    Points are taken in order of rate.
    """
    if len(rates) != len(latencies) or not len(rates):
        raise ValueError(
            f"need as many latencies as rates (>= 1), got {len(rates)} and {len(latencies)}"
        )
    order = np.argsort(np.asarray(rates, dtype=float), kind="stable")
    rate = np.asarray(rates, dtype=float)[order]
    lat = np.asarray(latencies, dtype=float)[order]
    ok = lat <= bound
    if ok.all():
        return float(rate[-1]), False
    if not ok[0]:
        return 0.0, True
    j = int(np.argmin(ok))  # the first rate over the bound; the one before meets it
    return float(np.interp(bound, [lat[j - 1], lat[j]], [rate[j - 1], rate[j]])), True
