"""summarize / MetricsSummary / to_frame on hand-made runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.metrics import (
    FRAME_COLUMNS,
    LATENCY_METRICS,
    SLO,
    STAT_NAMES,
    MetricsSummary,
    Stats,
    percentile,
    summarize,
    to_frame,
)
from tests.metrics.util import make


def hand_run():
    """Four completed requests, one aborted, one rejected.

    ======  =======  ======  =====  =====  ===
    id      arrival  ttft    tpot   e2e    out
    ======  =======  ======  =====  =====  ===
    r1      0.0      0.5     0.2    0.9    3
    r2      0.0      2.0     0.1    2.1    2
    r3      1.0      0.25    0.5    1.25   3
    r4      1.0      0.125   --     0.125  1
    ab      0.0      0.0625  0.25   0.3125 2   (abort)
    err     0.0      --      --     0.0    0   (error)
    ======  =======  ======  =====  =====  ===
    """
    return [
        make("r1", 0.0, (0.5, 0.7, 0.9), prompt_tokens=100, cached_tokens=50),
        make("r2", 0.0, (2.0, 2.1), prompt_tokens=300, cached_tokens=0),
        make(
            "r3",
            1.0,
            (1.25, 1.75, 2.25),
            prompt_tokens=60,
            cached_tokens=60,
            preemptions=2,
            recomputed_tokens=30,
        ),
        make("r4", 1.0, (1.125,), prompt_tokens=40, cached_tokens=90),
        make(
            "ab",
            0.0,
            (0.0625, 0.3125),
            reason="abort",
            prompt_tokens=500,
            cached_tokens=500,
            preemptions=1,
        ),
        make("err", 0.0, (), reason="error", prompt_tokens=1000),
    ]


def test_stats_hand_values_use_linear_percentiles():
    s = Stats.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.count, s.mean, s.min, s.max) == (5, 3.0, 1.0, 5.0)
    # linear: rank (n-1) q/100 -> p90 at rank 3.6 = 4.6, p99 at 3.96 = 4.96
    assert s.p50 == 3.0
    assert s.p90 == pytest.approx(4.6, abs=1e-12)
    assert s.p95 == pytest.approx(4.8, abs=1e-12)
    assert s.p99 == pytest.approx(4.96, abs=1e-12)
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 90) == s.p90
    empty = Stats.of([])
    assert empty.count == 0 and all(math.isnan(getattr(empty, k)) for k in STAT_NAMES[1:])
    assert math.isnan(percentile([], 50))


def test_stats_match_numpy():
    x = np.random.default_rng(0).lognormal(size=101)
    s = Stats.of(x.tolist())
    for q in (50, 90, 95, 99):
        assert getattr(s, f"p{q}") == pytest.approx(np.percentile(x, q), rel=1e-12)
    assert s.mean == pytest.approx(x.mean(), rel=1e-12)


def test_latency_stats_of_hand_run():
    d = summarize(hand_run())
    assert d["ttft_count"] == 4
    assert d["ttft_mean"] == pytest.approx((0.5 + 2.0 + 0.25 + 0.125) / 4)
    assert d["ttft_min"] == 0.125 and d["ttft_max"] == 2.0
    assert d["ttft_p50"] == pytest.approx(np.percentile([0.5, 2.0, 0.25, 0.125], 50))
    assert d["tpot_count"] == 3  # r4 has one token
    assert d["tpot_mean"] == pytest.approx((0.2 + 0.1 + 0.5) / 3)
    assert d["e2e_max"] == pytest.approx(2.1)
    assert d["normalized_latency_mean"] == pytest.approx((0.9 / 3 + 2.1 / 2 + 1.25 / 3 + 0.125) / 4)
    # ITL pools every gap: r1 two, r2 one, r3 two
    assert d["itl_count"] == 5 and d["itl_max"] == pytest.approx(0.5)


def test_aborts_and_errors_are_counted_but_excluded_from_latency():
    run = hand_run()
    full, completed_only = summarize(run), summarize(run[:4], duration=2.25)
    for m in LATENCY_METRICS:
        for s in STAT_NAMES:
            assert full[f"{m}_{s}"] == completed_only[f"{m}_{s}"], (m, s)
    assert full["num_requests"] == 6 and full["num_completed"] == 4
    assert (
        full["num_stop"],
        full["num_abort"],
        full["num_error"],
        full["num_length"],
        full["num_unfinished"],
    ) == (4, 1, 1, 0, 0)
    assert full["preemptions"] == 3 and full["recomputed_tokens"] == 30


def test_token_hit_rate_over_completed_requests():
    # (50 + 0 + 60 + min(90, 40)) / (100 + 300 + 60 + 40); the aborted and rejected are left out
    assert summarize(hand_run())["token_hit_rate"] == pytest.approx(150 / 500)


def test_throughput_over_makespan_or_given_duration():
    d = summarize(hand_run())
    assert d["duration"] == 2.25  # arrivals from 0.0, last finish r3 at 2.25
    assert d["request_throughput"] == pytest.approx(4 / 2.25)
    assert d["output_throughput"] == pytest.approx(9 / 2.25)
    assert d["total_throughput"] == pytest.approx((9 + 500) / 2.25)
    g = summarize(hand_run(), duration=4.0)
    assert (g["request_throughput"], g["output_throughput"]) == (1.0, 2.25)
    with pytest.raises(ValueError, match="duration"):
        summarize(hand_run(), duration=0.0)
    assert math.isnan(summarize([])["request_throughput"])


def test_slo_attainment_and_goodput():
    slo = SLO(ttft=1.0, tpot=0.3)
    # r1 meets; r2 misses TTFT; r3 misses TPOT; r4 meets (one token: no TPOT to bound);
    # the abort met both bounds but did not complete; the error has no token
    d = summarize(hand_run(), slo=slo, duration=4.0)
    assert d["slo_met"] == 2 and d["slo_attainment"] == pytest.approx(2 / 6)
    assert d["goodput"] == 0.5 and d["token_goodput"] == 1.0  # (3 + 1) tokens / 4 s
    assert d["slo_ttft"] == 1.0 and d["slo_tpot"] == 0.3 and math.isnan(d["slo_e2e"])

    e2e = summarize(hand_run(), slo=SLO(e2e=1.0))
    assert e2e["slo_met"] == 2  # r1 (0.9) and r4 (0.125)
    norm = summarize(hand_run(), slo=SLO(normalized=0.35))
    assert norm["slo_met"] == 2  # r1 0.3, r4 0.125; r2 1.05 and r3 0.4167 miss
    bound = summarize(hand_run(), slo=SLO(ttft=0.5))
    assert bound["slo_met"] == 3  # the bound is inclusive: r1's 0.5 meets it


def test_no_slo_means_nan_attainment_and_invalid_slos_fail():
    d = summarize(hand_run())
    assert math.isnan(d["slo_attainment"]) and d["slo_met"] == 0
    with pytest.raises(ValueError, match="at least one"):
        SLO()
    with pytest.raises(ValueError, match="ttft"):
        SLO(ttft=-1.0)


def test_exclude_pauses_changes_only_paused_requests():
    paused = make("p", 0.0, (1.0, 2.0, 8.0), pause_spans=((2, 5.0),))
    plain = make("q", 0.0, (1.0, 2.0, 3.0))
    raw = summarize([paused, plain])
    cut = summarize([paused, plain], exclude_pauses=True)
    assert raw["e2e_max"] == 8.0 and cut["e2e_max"] == 3.0
    assert cut["duration"] == 3.0 and cut["exclude_pauses"] is True


def test_summary_table_and_dict_agree():
    s = MetricsSummary.from_records(hand_run(), slo=SLO(ttft=1.0))
    t = s.table()
    assert list(t.index) == list(LATENCY_METRICS) and list(t.columns) == list(STAT_NAMES)
    d = s.to_dict()
    assert t.loc["tpot", "p90"] == d["tpot_p90"] and t.loc["ttft", "count"] == 4
    assert s.finish_reasons["abort"] == 1


def test_to_frame_is_one_tidy_row_per_request():
    df = to_frame(hand_run())
    assert list(df.columns) == list(FRAME_COLUMNS) and len(df) == 6
    row = df.set_index("request_id").loc["r1"]
    assert (row.ttft, row.e2e, row.output_tokens, row.hit_rate) == (0.5, 0.9, 3, 0.5)
    assert row.tpot == pytest.approx(0.2)
    err = df.set_index("request_id").loc["err"]
    assert math.isnan(err.ttft) and math.isnan(err.tpot) and not err.completed
    assert math.isnan(df.set_index("request_id").loc["r4", "itl_max"])
    paused = to_frame(
        [make("p", 0.0, (1.0, 2.0, 8.0), pause_spans=((2, 5.0),))], exclude_pauses=True
    )
    assert paused.loc[0, "e2e"] == 3.0 and paused.loc[0, "pause_time"] == 5.0
