"""Property tests: metric identities and summary invariants on random timelines."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.metrics import LATENCY_METRICS, SLO, RequestRecord, compare, summarize
from tests.metrics.test_compare import scaled

times = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)
gaps = st.floats(min_value=0.0, max_value=100.0, allow_nan=False, allow_infinity=False)
REASONS = ["stop", "length", "abort", "error", None]


@st.composite
def records(
    draw, rid: str = "r", min_tokens: int = 0, reasons=REASONS, pauses: bool = False
) -> RequestRecord:
    arrival = draw(times)
    reason = draw(st.sampled_from(reasons))
    n = 0 if reason == "error" else draw(st.integers(min_tokens, 12))
    if n < min_tokens:
        n = min_tokens
    t, token_times = arrival + draw(gaps), []
    for _ in range(n):
        token_times.append(t)
        t += draw(gaps)
    finish = None if reason is None else (token_times[-1] if token_times else arrival)
    spans: tuple = ()
    if pauses and n >= 2:
        k = draw(st.integers(1, n - 1))
        spans = ((k, draw(gaps)),)
    prompt = draw(st.integers(0, 500))
    return RequestRecord(
        rid,
        arrival,
        token_times[0] if token_times else None,
        finish,
        tuple(token_times),
        prompt_tokens=prompt,
        output_tokens=n,
        cached_tokens=draw(st.integers(0, 600)),
        finish_reason=reason,
        pause_spans=spans,
        preemptions=draw(st.integers(0, 3)),
    )


@st.composite
def runs(draw, **kw) -> list[RequestRecord]:
    n = draw(st.integers(0, 12))
    return [draw(records(rid=f"r{i}", **kw)) for i in range(n)]


@settings(max_examples=150, deadline=None)
@given(records(min_tokens=2, reasons=["stop", "length"]))
def test_tpot_ttft_sum_to_e2e_without_pauses(r):
    n = r.output_tokens
    assert r.tpot * (n - 1) + r.ttft == pytest.approx(r.e2e, rel=1e-9, abs=1e-9)
    # the engine finishes at the last token, so TPOT is also the mean inter-token latency
    assert len(r.itl) == n - 1
    assert r.tpot == pytest.approx(sum(r.itl) / (n - 1), rel=1e-9, abs=1e-9)
    assert r.normalized_latency * n == pytest.approx(r.e2e, rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(records(min_tokens=2, reasons=["stop", "length"], pauses=True))
def test_removing_pauses_keeps_identities_and_never_adds_latency(r):
    q = r.without_pauses()
    n = q.output_tokens
    assert q.tpot * (n - 1) + q.ttft == pytest.approx(q.e2e, rel=1e-9, abs=1e-9)
    assert q.ttft == r.ttft  # calls happen after the first token
    assert r.e2e - r.pause_time - 1e-9 <= q.e2e <= r.e2e + 1e-9
    assert all(x >= 0 for x in q.itl) and len(q.itl) == len(r.itl)
    gap_after = r.itl[r.pause_spans[0][0] - 1]
    if gap_after >= r.pause_time:  # the call fits in its gap: exactly its time is cut
        assert q.e2e == pytest.approx(r.e2e - r.pause_time, rel=1e-9, abs=1e-9)


@settings(max_examples=80, deadline=None)
@given(
    runs(),
    st.one_of(st.none(), st.builds(SLO, ttft=st.floats(0.01, 100), tpot=st.floats(0.01, 10))),
)
def test_summary_invariants(recs, slo):
    d = summarize(recs, slo=slo)
    done = [r for r in recs if r.finish_reason in ("stop", "length")]
    assert d["num_requests"] == len(recs) and d["num_completed"] == len(done)
    assert sum(d[f"num_{k}"] for k in ("stop", "length", "abort", "error", "unfinished")) == len(
        recs
    )
    assert d["ttft_count"] == sum(r.first_token is not None for r in done)
    for m in LATENCY_METRICS:
        if d[f"{m}_count"] == 0:
            assert math.isnan(d[f"{m}_mean"])
            continue
        chain = [d[f"{m}_{s}"] for s in ("min", "p50", "p90", "p95", "p99", "max")]
        assert all(a <= b for a, b in zip(chain, chain[1:], strict=False)), (m, chain)
        assert d[f"{m}_min"] <= d[f"{m}_mean"] <= d[f"{m}_max"]
        assert d[f"{m}_min"] >= 0
    if not math.isnan(d["token_hit_rate"]):
        assert 0.0 <= d["token_hit_rate"] <= 1.0
    if slo is not None and recs:
        assert 0.0 <= d["slo_attainment"] <= 1.0 and d["slo_met"] <= d["num_completed"]
        if not math.isnan(d["duration"]):
            assert d["goodput"] <= d["request_throughput"] + 1e-12
            assert d["token_goodput"] <= d["output_throughput"] + 1e-12


@settings(max_examples=40, deadline=None)
@given(runs(reasons=["stop", "length"]), st.floats(0.1, 10))
def test_compare_identity_and_scale(recs, k):
    same = compare(recs, recs)
    assert all(e == 0 or math.isnan(e) for e in same["relative_error"].values())
    c = compare(recs, scaled(recs, k))
    for key, e in c["relative_error"].items():
        a = same["a"][key]
        if math.isnan(a):
            assert math.isnan(e)
        elif a > 1e-6:  # away from zero, where rounding of k * x - x dominates
            assert e == pytest.approx(k - 1, rel=1e-6, abs=1e-6), key
