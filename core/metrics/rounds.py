"""Measurements repeated in interleaved rounds, and their per-item medians over rounds.

A real-mode comparison of a few items (policies, routers) on a shared machine runs every item
once per round, in an order that rotates from round to round (:func:`rotated_order`), so a slow
phase of the machine falls on all of them and no item always runs first. The result is read
per item as the median over its rounds with the min and max beside it, and per pair as the
ratios of the two items' values within the same round (:func:`summarize_rounds`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

__all__ = ["RoundsSummary", "order_words", "rotated_order", "summarize_rounds"]


def rotated_order(
    items: Sequence[str], rounds: int, all_rounds: int | None = None, compared: Iterable[str] = ()
) -> list[tuple[int, str]]:
    """``(round, item)`` in the order they run. Rounds ``< all_rounds`` (every round when None)
    run every item once, the later ones only those in ``compared``; round ``r`` starts at the
    ``r mod n``-th of its ``n`` items (A B, B A, A B, ... for two; A B C, B C A, C A B for
    three), so no item always runs first and none runs all its rounds in a row."""
    all_rounds = rounds if all_rounds is None else all_rounds
    compared = set(compared)
    order = []
    for r in range(rounds):
        these = list(items) if r < all_rounds else [x for x in items if x in compared]
        n = len(these)
        order += [(r, these[(r + k) % n]) for k in range(n)]
    return order


def order_words(frame: pd.DataFrame, key: str, short: Mapping[str, str] | None = None) -> str:
    """The order a frame's runs ran in, rounds split by ``|``: ``"A, B | B, A"`` (by
    ``position`` when the frame has it; ``short`` renames items)."""
    f = frame.sort_values("position") if "position" in frame else frame
    f = f if "round" in f else f.assign(round=0)
    short = short or {}
    return " | ".join(", ".join(short.get(x, x) for x in g[key]) for _, g in f.groupby("round"))


@dataclass
class RoundsSummary:
    """A frame of rounds summarized: ``per_key`` has one row per item (index: the item) with
    ``<metric>_median``, ``<metric>_min``, ``<metric>_max`` and ``rounds`` (how many rounds ran
    it); ``ratios[metric]`` are baseline / system in each round that ran both (empty without a
    pair); ``rounds`` is the fewest rounds of the pair's items (of all items without a pair)."""

    rounds: int
    per_key: pd.DataFrame
    ratios: dict[str, list[float]] = field(default_factory=dict)

    def median_range(self, item: str, metric: str, fmt: str = ".3g", unit: str = "") -> str:
        """``"1.2 s (0.9-1.6)"``: ``item``'s median of ``metric`` over its rounds with ``unit``,
        and its min-max when it ran more than one round (the median alone otherwise)."""
        p = self.per_key
        text = f"{p.at[item, metric + '_median']:{fmt}}{unit}"
        if p.at[item, "rounds"] > 1:
            text += f" ({p.at[item, metric + '_min']:{fmt}}-{p.at[item, metric + '_max']:{fmt}})"
        return text


def summarize_rounds(
    frame: pd.DataFrame,
    key: str,
    metrics: Iterable[str],
    *,
    baseline: str | None = None,
    system: str | None = None,
    order: Sequence[str] = (),
) -> RoundsSummary:
    """Per value of ``key``, the median, min and max over rounds of each of ``metrics`` present
    in ``frame`` (one row per round and item; a frame without a ``round`` column is one round).
    Items in ``order`` come first, in that order, then the others as they first appear. With
    ``baseline`` and ``system``, also their paired per-round ratios (rounds where the system's
    value is 0 or either is missing are left out)."""
    f = frame if "round" in frame else frame.assign(round=0)
    metrics = [m for m in dict.fromkeys(metrics) if m in f]
    agg = f.groupby(key, sort=False)[metrics].agg(["median", "min", "max"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    agg["rounds"] = f.groupby(key, sort=False)["round"].nunique()
    first = [k for k in order if k in agg.index]
    agg = agg.loc[first + [k for k in agg.index if k not in first]]
    ratios: dict[str, list[float]] = {}
    if baseline is not None and system is not None:
        wide = f.pivot_table(index="round", columns=key, values=metrics, aggfunc="first")
        for m in metrics:
            if (m, baseline) in wide and (m, system) in wide:
                both = wide[[(m, baseline), (m, system)]].dropna()
                ratios[m] = [float(a / b) for a, b in both.to_numpy() if b > 0]
            else:
                ratios[m] = []
    paired = [k for k in (baseline, system) if k in agg.index]
    counted = agg.loc[paired, "rounds"] if paired else agg["rounds"]
    rounds = int(counted.min()) if len(counted) else 0
    return RoundsSummary(rounds, agg, ratios)
