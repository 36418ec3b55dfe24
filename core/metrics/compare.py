"""Compare two runs of the same requests (e.g. the engine against the simulator).

:func:`compare` matches requests by ``request_id`` and computes, for each chosen latency
metric and statistic, the *signed relative error* of run ``b`` against the reference run
``a``::

    relative_error = (b - a) / |a|

so ``+0.1`` means ``b`` is 10% higher (a simulator that overestimates), and a run whose every
latency is ``k`` times the reference's has relative error ``k - 1``. Conventions: both zero
gives 0; ``a == 0 != b`` gives ``+-inf``; a NaN statistic (no samples, e.g. TPOT when every
request has one output token) gives NaN.

Only requests present in both runs and completed in both enter the statistics, so both sides
describe exactly the same requests; the others are listed, not dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from core.metrics.record import RequestRecord, records_by_id
from core.metrics.stats import STAT_NAMES, Stats
from core.metrics.summary import LATENCY_METRICS

__all__ = ["compare", "relative_error"]


def relative_error(reference: float, value: float) -> float:
    """``(value - reference) / |reference|`` with the conventions of the module docstring."""
    if math.isnan(reference) or math.isnan(value):
        return math.nan
    if reference == 0:
        return 0.0 if value == 0 else math.copysign(math.inf, value)
    return (value - reference) / abs(reference)


def _stats(records: list[RequestRecord], metric: str) -> Stats:
    if metric == "itl":
        return Stats.of(g for r in records for g in r.itl)
    return Stats.of(getattr(r, metric) for r in records)


def compare(
    a: Iterable[RequestRecord],
    b: Iterable[RequestRecord],
    *,
    metrics: Sequence[str] = ("ttft", "tpot", "e2e"),
    stats: Sequence[str] = ("mean", "p90"),
    exclude_pauses: bool = False,
) -> dict[str, Any]:
    """Relative errors of ``b``'s latency statistics against the reference ``a``.

    ``metrics`` are names from :data:`~core.metrics.summary.LATENCY_METRICS`; ``stats`` from
    :data:`~core.metrics.stats.STAT_NAMES` other than ``count``. ``exclude_pauses`` applies
    :meth:`RequestRecord.without_pauses` to both sides first. Raises ``ValueError`` on an
    unknown name or a duplicate ``request_id`` within one run.

    Returns a dict:

    - ``relative_error``: ``{"<metric>_<stat>": float}``, e.g. ``ttft_p90``;
    - ``max_abs_relative_error``: the largest ``|relative error|`` (NaN if none is defined);
    - ``a``, ``b``: the statistics themselves (seconds; TPOT and normalized in s/token);
    - ``matched``: how many requests entered the statistics;
    - ``only_in_a``, ``only_in_b``: sorted ids missing from the other run;
    - ``incomplete``: sorted ids in both runs but not completed in both (left out).
    """
    unknown_m = [m for m in metrics if m not in LATENCY_METRICS]
    unknown_s = [s for s in stats if s not in STAT_NAMES or s == "count"]
    if unknown_m or unknown_s:
        raise ValueError(
            f"unknown metrics {unknown_m} or stats {unknown_s}; metrics are "
            f"{LATENCY_METRICS}, stats are {STAT_NAMES[1:]}"
        )
    ia, ib = records_by_id(a), records_by_id(b)
    if exclude_pauses:
        ia = {k: r.without_pauses() for k, r in ia.items()}
        ib = {k: r.without_pauses() for k, r in ib.items()}
    both = sorted(ia.keys() & ib.keys())
    ok = [k for k in both if ia[k].completed and ib[k].completed]
    ra, rb = [ia[k] for k in ok], [ib[k] for k in ok]

    va: dict[str, float] = {}
    vb: dict[str, float] = {}
    err: dict[str, float] = {}
    for m in metrics:
        sa, sb = _stats(ra, m).as_dict(), _stats(rb, m).as_dict()
        for s in stats:
            key = f"{m}_{s}"
            va[key], vb[key] = sa[s], sb[s]
            err[key] = relative_error(sa[s], sb[s])
    finite = [abs(e) for e in err.values() if not math.isnan(e)]
    return {
        "relative_error": err,
        "max_abs_relative_error": max(finite) if finite else math.nan,
        "a": va,
        "b": vb,
        "matched": len(ok),
        "only_in_a": sorted(ia.keys() - ib.keys()),
        "only_in_b": sorted(ib.keys() - ia.keys()),
        "incomplete": [k for k in both if not (ia[k].completed and ib[k].completed)],
    }
