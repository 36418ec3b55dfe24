"""compare: relative errors between two runs of the same requests."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from core.metrics import compare, relative_error
from tests.metrics.test_summary import hand_run
from tests.metrics.util import make


def scaled(records, k: float):
    """Every timestamp times ``k``: every latency times ``k``."""
    return [
        replace(
            r,
            arrival=r.arrival * k,
            first_token=None if r.first_token is None else r.first_token * k,
            finish=None if r.finish is None else r.finish * k,
            token_times=tuple(t * k for t in r.token_times),
        )
        for r in records
    ]


def test_identical_runs_have_zero_error():
    c = compare(hand_run(), hand_run())
    assert set(c["relative_error"]) == {
        f"{m}_{s}" for m in ("ttft", "tpot", "e2e") for s in ("mean", "p90")
    }
    assert all(e == 0.0 for e in c["relative_error"].values())
    assert c["max_abs_relative_error"] == 0.0
    assert c["matched"] == 4 and c["incomplete"] == ["ab", "err"]
    assert c["only_in_a"] == [] and c["only_in_b"] == []


@pytest.mark.parametrize("k", [0.5, 1.25, 3.0])
def test_scaled_run_has_error_of_the_scale(k):
    metrics = ("ttft", "tpot", "e2e", "normalized_latency", "itl")
    stats = ("mean", "p50", "p90", "p99", "max")
    c = compare(hand_run(), scaled(hand_run(), k), metrics=metrics, stats=stats)
    assert len(c["relative_error"]) == 25
    for key, e in c["relative_error"].items():
        assert e == pytest.approx(k - 1.0, abs=1e-12), key
    assert c["b"]["ttft_mean"] == pytest.approx(k * c["a"]["ttft_mean"])


def test_requests_are_matched_by_id_and_missing_ones_reported():
    a = hand_run()
    # b lacks r2 and has an extra request with a huge latency; b's order is shuffled
    b = [r for r in reversed(hand_run()) if r.request_id != "r2"]
    b.append(make("extra", 0.0, (50.0, 60.0)))
    c = compare(a, b)
    assert c["only_in_a"] == ["r2"] and c["only_in_b"] == ["extra"]
    assert c["matched"] == 3  # r1, r3, r4: neither r2 nor extra enters either side
    assert c["max_abs_relative_error"] == 0.0
    # a request completed in one run and aborted in the other is left out of both
    b2 = [replace(r, finish_reason="abort") if r.request_id == "r1" else r for r in hand_run()]
    c2 = compare(hand_run(), b2)
    assert c2["incomplete"] == ["ab", "err", "r1"] and c2["matched"] == 3
    assert c2["relative_error"]["ttft_mean"] == 0.0


def test_signed_error_and_edge_conventions():
    a = [make("x", 0.0, (1.0, 2.0))]
    b = [make("x", 0.0, (1.5, 2.5))]
    c = compare(a, b, metrics=("ttft",), stats=("mean",))
    assert c["relative_error"] == {"ttft_mean": 0.5}
    assert compare(b, a, metrics=("ttft",))["relative_error"]["ttft_mean"] == pytest.approx(-1 / 3)
    assert relative_error(0.0, 0.0) == 0.0 and relative_error(0.0, 2.0) == math.inf
    assert math.isnan(relative_error(math.nan, 1.0))
    one = [make("y", 0.0, (1.0,))]
    assert math.isnan(compare(one, one)["relative_error"]["tpot_mean"])


def test_bad_arguments_fail():
    with pytest.raises(ValueError, match="unknown"):
        compare(hand_run(), hand_run(), metrics=("latency",))
    with pytest.raises(ValueError, match="unknown"):
        compare(hand_run(), hand_run(), stats=("count",))
    with pytest.raises(ValueError, match="duplicate"):
        compare(hand_run() + hand_run()[:1], hand_run())


def test_exclude_pauses_on_both_sides():
    real = [make("p", 0.0, (1.0, 2.0, 8.0), pause_spans=((2, 5.0),))]
    sim = [make("p", 0.0, (1.0, 2.0, 4.0), pause_spans=((2, 1.0),))]
    assert compare(real, sim)["relative_error"]["e2e_mean"] == -0.5
    assert compare(real, sim, exclude_pauses=True)["relative_error"]["e2e_mean"] == 0.0
