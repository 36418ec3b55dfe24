"""Interleaved rounds: the rotated order and the per-item medians over rounds."""

from __future__ import annotations

import pandas as pd
import pytest

from core.metrics import order_words, rotated_order, summarize_rounds


def test_the_order_rotates_from_round_to_round():
    assert rotated_order(("A", "B"), 3) == [
        (0, "A"),
        (0, "B"),
        (1, "B"),
        (1, "A"),
        (2, "A"),
        (2, "B"),
    ]
    three = rotated_order(("a", "b", "c"), 3)
    assert three == [
        (0, "a"),
        (0, "b"),
        (0, "c"),
        (1, "b"),
        (1, "c"),
        (1, "a"),
        (2, "c"),
        (2, "a"),
        (2, "b"),
    ]
    # every item runs first once, and no item runs all its rounds in a row
    firsts = [three[3 * r][1] for r in range(3)]
    assert sorted(firsts) == ["a", "b", "c"]
    assert rotated_order(("a", "b"), 1) == [(0, "a"), (0, "b")]
    assert rotated_order(("a", "b"), 0) == []


def test_later_rounds_can_run_only_the_compared_items():
    order = rotated_order(("v", "x", "y", "i"), 3, all_rounds=1, compared=("v", "i"))
    assert order == [(0, "v"), (0, "x"), (0, "y"), (0, "i"), (1, "i"), (1, "v"), (2, "v"), (2, "i")]
    assert {r for r, p in order if p == "v"} == {r for r, p in order if p == "i"} == {0, 1, 2}


def _frame() -> pd.DataFrame:
    rows = []
    # round 1 is an outlier for B: its mean would flip the ordering, the median does not
    for rnd, a, b in ((0, 2.0, 1.0), (1, 2.2, 9.0), (2, 1.8, 1.2)):
        rows += [
            {"round": rnd, "item": "A", "latency": a, "tokens": 100},
            {"round": rnd, "item": "B", "latency": b, "tokens": 40},
        ]
    rows.append({"round": 0, "item": "C", "latency": 5.0, "tokens": 7})
    return pd.DataFrame(rows)


def test_medians_min_max_and_rounds_per_item():
    s = summarize_rounds(_frame(), "item", ["latency", "tokens", "absent"], order=["B"])
    p = s.per_key
    assert list(p.index) == ["B", "A", "C"]
    assert p.at["A", "latency_median"] == 2.0 and p.at["B", "latency_median"] == 1.2
    assert (p.at["B", "latency_min"], p.at["B", "latency_max"]) == (1.0, 9.0)
    assert p.at["B", "latency_median"] < p.at["A", "latency_median"]
    assert _frame().groupby("item")["latency"].mean()["B"] > 2.0  # what a mean would have said
    assert list(p["rounds"]) == [3, 3, 1]
    assert "absent_median" not in p and s.ratios == {}
    assert s.rounds == 1  # no pair named: the fewest rounds of any item


def test_paired_ratios_within_each_round():
    s = summarize_rounds(_frame(), "item", ["latency"], baseline="A", system="B")
    assert s.ratios["latency"] == pytest.approx([2.0, 2.2 / 9.0, 1.8 / 1.2])
    assert s.rounds == 3  # the pair's rounds; C ran once
    missing = summarize_rounds(_frame(), "item", ["latency"], baseline="A", system="D")
    assert missing.ratios == {"latency": []}
    one = summarize_rounds(_frame().drop(columns="round").head(2), "item", ["latency"])
    assert one.rounds == 1 and one.per_key.at["A", "latency_median"] == 2.0


def test_words_for_the_order_and_a_median_with_its_range():
    f = _frame().assign(position=range(7))
    f.loc[f["round"] == 1, "position"] = [3, 2]  # round 1 ran B first
    assert order_words(f[f["item"] != "C"], "item") == "A, B | B, A | A, B"
    assert order_words(f.drop(columns=["round", "position"]).head(2), "item", {"A": "a"}) == "a, B"
    s = summarize_rounds(f, "item", ["latency"])
    assert s.median_range("B", "latency") == "1.2 (1-9)"
    assert s.median_range("A", "latency", ".2f", unit=" s") == "2.00 s (1.80-2.20)"
    assert s.median_range("C", "latency") == "5"  # one round: no range
