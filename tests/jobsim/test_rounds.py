"""The round-based GPU simulator: GPUs never oversubscribed, jobs finish exactly when their work
is done, arrivals wait for the next round, and the fairness metrics on hand-made records."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.jobsim import (
    EpochWork,
    GpuJob,
    InvalidDecision,
    JobRecord,
    RoundView,
    makespan,
    simulate_rounds,
)


class FirstFit:
    """Every round, in arrival order, each job that still fits on some GPU type."""

    name = "first-fit"

    def schedule(self, view: RoundView) -> dict[int, str]:
        free = dict(view.cluster)
        out = {}
        for s in view.jobs:
            for t in sorted(free):
                if free[t] >= s.job.gpus:
                    free[t] -= s.job.gpus
                    out[s.job_id] = t
                    break
        return out


class Everyone:
    name = "everyone"

    def schedule(self, view: RoundView) -> dict[int, str]:
        return {s.job_id: "v100" for s in view.jobs}


jobs_strategy = st.lists(
    st.tuples(
        st.floats(0.0, 2000.0),
        st.sampled_from([1, 2, 4]),
        st.lists(st.floats(5.0, 400.0), min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=12,
)


def _jobs(raw):
    return [
        GpuJob(i, t, g, EpochWork({"v100": secs, "k80": [3 * s for s in secs]}))
        for i, (t, g, secs) in enumerate(raw)
    ]


@settings(max_examples=50, deadline=None)
@given(jobs_strategy)
def test_jobs_finish_exactly_when_their_work_is_done(raw):
    jobs = _jobs(raw)
    run = simulate_rounds(FirstFit(), jobs, {"v100": 4, "k80": 2}, keep_allocations=True)
    by_id = {j.job_id: j for j in jobs}
    for alloc in run.allocations.values():  # never oversubscribed
        for t, cap in {"v100": 4, "k80": 2}.items():
            assert sum(by_id[j].gpus for j, ty in alloc.items() if ty == t) <= cap
    for r in run.records:
        assert r.status == "finished" and r.finish is not None
        assert r.start is not None and r.arrival <= r.start <= r.finish
        assert r.start == pytest.approx(math.ceil(r.start / 120.0) * 120.0)  # at a round start
        # it finishes inside the last round it ran in, and ran in rounds_run rounds
        ran = [k for k, a in run.allocations.items() if r.job_id in a]
        assert len(ran) == r.rounds_run and ran[0] * 120.0 == r.start
        assert ran[-1] * 120.0 < r.finish <= ran[-1] * 120.0 + 120.0
    # a job that only ever ran on one type used exactly its work's seconds
    for r in run.records:
        types = {a[r.job_id] for a in run.allocations.values() if r.job_id in a}
        if len(types) == 1:
            (t,) = types
            assert r.gpu_seconds / by_id[r.job_id].gpus == pytest.approx(
                by_id[r.job_id].work.total_seconds(t), rel=1e-9
            )


def test_a_lone_job_finishes_at_round_start_plus_its_work():
    job = GpuJob(0, 130.0, 1, EpochWork({"v100": [100.0, 200.0, 50.0]}))
    run = simulate_rounds(FirstFit(), [job], {"v100": 1})
    r = run.records[0]
    # arrives mid-round 1, starts at round 2 (240 s), needs 350 s
    assert (r.start, r.finish, r.rounds_run) == (240.0, 590.0, 3)
    assert r.jct == 460.0 and r.exclusive_s == 350.0
    assert run.summary()["makespan_s"] == 460.0


def test_oversubscription_is_refused():
    jobs = [GpuJob(i, 0.0, 2, EpochWork({"v100": [10.0]})) for i in range(3)]
    with pytest.raises(
        InvalidDecision, match=r"everyone: round 0: GPUs oversubscribed \{'v100': 6\}"
    ):
        simulate_rounds(Everyone(), jobs, {"v100": 4})


def test_jobs_too_big_for_the_cluster_are_refused():
    with pytest.raises(ValueError, match="needs 8 GPUs"):
        simulate_rounds(FirstFit(), [GpuJob(0, 0.0, 8, EpochWork({"v100": [1.0]}))], {"v100": 4})


def test_idle_gaps_are_skipped_and_contention_is_sampled_per_round():
    jobs = [
        GpuJob(0, 0.0, 1, EpochWork({"v100": [240.0]})),
        GpuJob(1, 0.0, 1, EpochWork({"v100": [240.0]})),
        GpuJob(2, 10_000.0, 1, EpochWork({"v100": [60.0]})),
    ]
    run = simulate_rounds(FirstFit(), jobs, {"v100": 1})
    r0, r1, r2 = run.records
    assert (r0.finish, r1.finish) == (240.0, 480.0)
    assert r2.start == 10_080.0 and r2.finish == 10_140.0
    # job 1 waited two rounds beside job 0 and ran two rounds alone -> mean contention 1.5
    assert r1.mean_contention == pytest.approx(1.5)
    # fair share: 1 GPU / 1.5 jobs -> fair time 360 s; JCT 480 -> rho 4/3
    assert r1.ftf(1) == pytest.approx(480 / 360)
    assert run.rounds < 100


def test_makespan_and_ftf_on_hand_made_records():
    a = JobRecord(0, 0.0, finish=100.0, gpus=1, exclusive_s=50.0)
    b = JobRecord(1, 20.0, finish=300.0, gpus=2, exclusive_s=100.0)
    b.contention_sum, b.contention_n = 8.0, 2  # 4 jobs on average
    assert makespan([a, b]) == 300.0
    assert a.ftf(4) == 2.0  # alone: fair time = exclusive time
    assert b.ftf(4) == pytest.approx(280.0 / (100.0 / (4 / 8)))
    assert math.isnan(makespan([JobRecord(2, 0.0)]))
