import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.workload import (
    ChatSessionParams,
    GammaProcess,
    PoissonProcess,
    TraceReplay,
    assign_arrivals,
    gamma_arrivals,
    generate_chat_sessions,
    load_azure,
    load_loogle,
    poisson_arrivals,
    scale_arrivals,
)


def rate_and_cv(times: np.ndarray) -> tuple[float, float]:
    gaps = np.diff(np.concatenate([[0.0], times]))
    return 1.0 / gaps.mean(), gaps.std() / gaps.mean()


# Tolerances: with 50,000 gaps the standard error of the mean gap is cv/224 (< 2% at cv=4)
# and of the CV below 3% even at cv=4 (Gamma kurtosis 6*cv^2); 8% is > 3 standard errors.
@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_gamma_rate_and_cv(cv):
    times = gamma_arrivals(50_000, rate=8.0, cv=cv, seed=3)
    rate, measured_cv = rate_and_cv(times)
    assert rate == pytest.approx(8.0, rel=0.08)
    assert measured_cv == pytest.approx(cv, rel=0.08)


def test_poisson_is_gamma_with_cv_one_and_seeded():
    times = poisson_arrivals(50_000, rate=2.0, seed=1)
    rate, cv = rate_and_cv(times)
    assert rate == pytest.approx(2.0, rel=0.03) and cv == pytest.approx(1.0, rel=0.03)
    assert np.array_equal(times, PoissonProcess(2.0).times(50_000, seed=1))
    assert not np.array_equal(times, poisson_arrivals(50_000, rate=2.0, seed=2))
    # Burstier processes put more gaps far below the mean.
    bursty = np.diff(gamma_arrivals(50_000, rate=2.0, cv=3.0, seed=1))
    assert (bursty < 0.05).mean() > 3 * (np.diff(times) < 0.05).mean()


@settings(max_examples=40, deadline=None)
@given(st.floats(0.01, 1e3), st.floats(0.1, 5), st.integers(0, 200), st.integers(0, 2**32 - 1))
def test_times_are_sorted_non_negative_and_reproducible(rate, cv, n, seed):
    t = GammaProcess(rate, cv).times(n, seed)
    assert len(t) == n and np.all(np.diff(t) >= 0) and np.all(t >= 0)
    assert np.array_equal(t, GammaProcess(rate, cv).times(n, seed))


def test_bad_process_parameters():
    for bad in (lambda: PoissonProcess(0), lambda: GammaProcess(1, 0), lambda: GammaProcess(-1)):
        with pytest.raises(ValueError):
            bad()


def test_trace_replay_speedup_and_target_rate():
    azure = load_azure(kind="conv", limit=2000)
    replay = TraceReplay.from_workload(azure, speedup=4.0)
    t = replay.times(1000)
    assert t[0] == 0.0
    assert t[-1] == pytest.approx(azure[999].arrival_time / 4.0)
    at_rate = TraceReplay.from_workload(azure, rate=50.0).times(1000)
    assert 999 / at_rate[-1] == pytest.approx(50.0)
    # Rescaling keeps the trace's shape: gaps are proportional.
    raw = np.array([r.arrival_time for r in azure.requests[:1000]])
    assert np.allclose(np.diff(at_rate) * (raw[-1] / at_rate[-1]), np.diff(raw))
    with pytest.raises(ValueError, match="2000 arrivals, 2001 requested"):
        TraceReplay.from_workload(azure).times(2001)
    with pytest.raises(ValueError):
        TraceReplay((0.0, 1.0), speedup=2.0, rate=1.0)


def test_scale_arrivals():
    azure = load_azure(kind="code", limit=500)
    fast = scale_arrivals(azure, speedup=10.0)
    assert fast.duration == pytest.approx(azure.duration / 10)
    at = scale_arrivals(azure, rate=3.0)
    assert (len(at) - 1) / at.duration == pytest.approx(3.0)
    assert [r.request_id for r in at] == [r.request_id for r in azure]
    with pytest.raises(ValueError):
        scale_arrivals(azure, speedup=2.0, rate=1.0)


def test_assign_per_request_interleaves_sessions_but_keeps_turn_order():
    w = load_loogle(task="longdep", max_prompt_len=512)
    out = assign_arrivals(w, PoissonProcess(5.0), by="request", seed=7)
    expected = PoissonProcess(5.0).times(len(w), np.random.default_rng(7))
    assert np.allclose(sorted(r.arrival_time for r in out), expected)
    for turns in out.sessions().values():
        times = [r.arrival_time for r in turns]
        assert times == sorted(times)
    # Consecutive arrivals come from different documents most of the time.
    sids = [r.session_id for r in out]
    switches = sum(a != b for a, b in zip(sids, sids[1:], strict=False))
    assert switches > len(sids) / 2
    assert out == assign_arrivals(w, PoissonProcess(5.0), by="request", seed=7)
    assert out != assign_arrivals(w, PoissonProcess(5.0), by="request", seed=8)
    same_order = assign_arrivals(w, list(range(len(w))), by="request", shuffle=False)
    assert [r.request_id for r in same_order] == [r.request_id for r in w]


def test_assign_per_session_follows_think_times():
    w = generate_chat_sessions(ChatSessionParams(num_sessions=30, think_time_mean_s=3.0), seed=2)
    out = assign_arrivals(w, GammaProcess(0.5, cv=2.0), by="session", seed=1)
    starts = sorted(t[0].arrival_time for t in out.sessions().values())
    assert np.allclose(starts, GammaProcess(0.5, cv=2.0).times(30, np.random.default_rng(1)))
    for turns in out.sessions().values():
        for prev, nxt in zip(turns, turns[1:], strict=False):
            assert nxt.arrival_time == pytest.approx(prev.arrival_time + nxt.think_time_s)
    with pytest.raises(ValueError, match="3 arrival times for 30 sessions"):
        assign_arrivals(w, [0.0, 1.0, 2.0], by="session")
