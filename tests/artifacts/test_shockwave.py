"""The Shockwave artifact: the trace parser (and its errors), dynamic batch sizes, the MILP
against brute force on tiny instances and its time limit, the re-ranking, the baselines'
allocations, and smoke scale end to end."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from artifacts.shockwave import baselines as bl
from artifacts.shockwave.artifact import ARTIFACT
from artifacts.shockwave.milp import Milp
from artifacts.shockwave.policy import (
    PlanInput,
    Shockwave,
    predicted_remaining_s,
    pwl_log,
    rank_rounds,
    solve_plan,
)
from artifacts.shockwave.trace import (
    TraceError,
    accordion_schedule,
    gns_schedule,
    load_jobs,
    load_throughputs,
    parse_trace,
    shipped_trace,
)
from core.artifact import RunOptions, Scale, run_artifact
from core.jobsim import EpochWork, GpuJob, JobRecord, JobState, RoundView, simulate_rounds

GOOD = (
    "LM (batch size 10)\tpython3 main.py\tlanguage_modeling\t--steps\t1\t13458\t1\taccordion\t1"
    "\t-1.000000\t141\t7\n"
)


def test_parse_a_trace_line_and_build_its_epochs(tmp_path):
    p = tmp_path / "t.trace"
    p.write_text(GOOD)
    (job,) = parse_trace(p)
    assert (job.model, job.batch_size, job.total_steps, job.mode, job.arrival_s) == (
        "LM",
        10,
        13458,
        "accordion",
        7.0,
    )
    (gj,) = load_jobs(p, load_throughputs())
    # 59675 samples / 10 per step -> 5968 steps an epoch -> 3 epochs
    assert gj.work.epochs == 3 and gj.gpus == 1 and gj.arrival == 7.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "LM (batch size 10)\tonly\tthree\n",
            r"t.trace:2: expected 12 tab-separated fields, got 3",
        ),
        (GOOD.replace("LM (batch size 10)", "LM bs 10"), r"t.trace:2: job type 'LM bs 10'"),
        (GOOD.replace("accordion", "sometimes"), r"t.trace:2: mode 'sometimes'"),
        (GOOD.replace("\t13458\t", "\tmany\t"), r"t.trace:2: bad number"),
        (GOOD.replace("LM (batch", "GPT-9 (batch"), r"t.trace:2: unknown model 'GPT-9'"),
    ],
)
def test_a_malformed_line_names_file_and_line(tmp_path, line, message):
    p = tmp_path / "t.trace"
    p.write_text(GOOD + line)
    with pytest.raises(TraceError, match=message):
        parse_trace(p)


def test_a_batch_size_without_throughput_names_the_line(tmp_path):
    p = tmp_path / "t.trace"
    p.write_text(GOOD.replace("batch size 10)", "batch size 11)"))
    with pytest.raises(TraceError, match=r"t.trace:1: no v100 throughput for LM at batch size 11"):
        load_jobs(p, load_throughputs())


def test_batch_size_schedules():
    acc = accordion_schedule("LM", 10, 40)
    assert acc[:13] == [10] * 13 and set(acc[13:]) == {80}  # critical first 10 and first 30%
    gns = gns_schedule("ResNet-18", 32, 80)
    assert gns[19] == 32 and gns[20] == 64 and gns[30] == 128 and gns[50] == 256 and gns[79] == 256
    assert accordion_schedule("Transformer", 16, 50) == [16] * 50


def test_shipped_trace_jobs_speed_up_when_their_batch_size_grows():
    jobs = load_jobs(shipped_trace(32), load_throughputs())
    assert len(jobs) == 120 and [j.arrival for j in jobs] == sorted(j.arrival for j in jobs)
    dynamic = [j for j in jobs if len(set(j.work.batch_sizes)) > 1]
    assert len(dynamic) > 30
    for j in dynamic:
        secs, bss = j.work.epoch_seconds["v100"], j.work.batch_sizes
        by_bs = {bs: s for bs, s in zip(bss, secs, strict=True)}
        assert len(by_bs) == len(set(bss))  # one epoch time per batch size


def _inp(**kw):
    base = dict(
        w=[1, 1, 2],
        E=[10.0, 4.0, 6.0],
        e=[2.0, 0.0, 1.0],
        d=[100.0, 150.0, 60.0],
        rem=[800.0, 600.0, 300.0],
        ft=[3000.0, 1200.0, 2000.0],
        prio=[1.0, 1.0, 1.0],
        gpus=2,
        rounds=3,
        round_s=120.0,
        t_next=360.0,
        k=1e-3,
    )
    base.update(kw)
    return PlanInput(**base)


def brute_force(inp: PlanInput) -> float:
    """The best objective over every x, each completed optimally (p as large as allowed)."""
    n, T = inp.n, inp.rounds
    best = -math.inf
    for bits in itertools.product((0, 1), repeat=n * T):
        x = np.array(bits).reshape(n, T)
        if any(sum(inp.w[j] * x[j, t] for j in range(n)) > inp.gpus for t in range(T)):
            continue
        util, rs = 0.0, []
        for j in range(n):
            p = min(inp.E[j] - inp.e[j], inp.round_s * x[j].sum() / inp.d[j])
            util += inp.prio[j] * pwl_log((inp.e[j] + p) / inp.E[j], inp) / (n * T)
            rs.append(max(0.0, inp.rem[j] - p * inp.d[j]))
        if inp.fairness and any(
            r > (inp.rho_max * ft - inp.t_next) * inp.share + 1e-9
            for r, ft in zip(rs, inp.ft, strict=True)
        ):
            continue
        best = max(best, util - inp.k * max(rs))
    return best


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"fairness": False},
        {"k": 1.0},
        {"prio": [1.0, 50.0, 1.0], "fairness": False},
        {"w": [1, 1, 1], "gpus": 1, "rounds": 2},
        {"ft": [9000.0, 9000.0, 9000.0]},
    ],
)
def test_the_milp_matches_brute_force(kw):
    inp = _inp(**kw)
    res = solve_plan(inp, time_limit=30.0, rel_gap=1e-9)
    want = brute_force(inp)
    if want == -math.inf:
        assert res.x is None and res.status == "Infeasible"
        return
    assert res.x is not None
    assert res.objective == pytest.approx(want, rel=1e-6, abs=1e-9)
    for t in range(inp.rounds):  # the plan itself respects the GPUs
        assert sum(inp.w[j] * res.x[j, t] for j in range(inp.n)) <= inp.gpus


def test_an_unreachable_fairness_target_is_infeasible():
    res = solve_plan(_inp(ft=[100.0, 100.0, 100.0]), time_limit=10.0)
    assert res.status == "Infeasible" and res.x is None


def test_the_time_limit_is_honored():
    rng = np.random.default_rng(0)
    n = 80
    inp = PlanInput(
        w=list(rng.choice([1, 2, 4], n)),
        E=list(rng.uniform(20, 200, n)),
        e=[0.0] * n,
        d=list(rng.uniform(20, 200, n)),
        rem=list(rng.uniform(1e3, 3e4, n)),
        ft=[1e9] * n,
        prio=list(rng.uniform(1, 100, n)),
        gpus=16,
        rounds=20,
        round_s=120.0,
        t_next=2400.0,
        k=1e-3,
    )
    res = solve_plan(inp, time_limit=0.5, rel_gap=0.0)
    # HiGHS checks the clock between nodes: the solve stops near the limit (a generous margin
    # for a loaded machine), with or without a plan
    assert res.seconds < 5.0
    assert res.status in ("Time limit reached", "Optimal")
    assert res.status == "Optimal" or res.gap > 0 or res.x is None


def test_shockwave_still_schedules_when_the_solver_runs_out_of_time():
    jobs = _jobs(30)
    pol = Shockwave(4, horizon=10, time_limit=1e-3)
    run = simulate_rounds(pol, jobs, {"v100": 4})
    assert all(r.status == "finished" for r in run.records)
    assert any("Time limit" in s.status for s in pol.solves)


def test_milp_builder_maximizes_with_integers():
    m = Milp(2, maximize=True)
    m.binary(0)
    m.bounds(1, 0.0, 1.5, integer=True)
    m.cost[:] = [2.0, 3.0]
    m.row({0: 1.0, 1: 1.0}, upper=2.5)
    sol = m.solve(time_limit=5.0)
    assert sol.status == "Optimal" and list(sol.x) == [1.0, 1.0] and sol.objective == 5.0


def test_rank_rounds_puts_urgent_jobs_first_and_keeps_round_counts():
    x = np.array([[0, 0, 1], [1, 1, 0], [1, 0, 0]], dtype=bool)
    rounds = rank_rounds(x, [1, 1, 1], 1, [(-5.0,), (0.0,), (-1.0,)])
    assert rounds == [[0], [2], [1]]  # job 1's two rounds: one is squeezed out
    rounds = rank_rounds(x, [1, 1, 1], 2, [(-5.0,), (0.0,), (-1.0,)])
    assert rounds == [[0, 2], [1], [1]]


def _state(job, progress=0.0, rounds_run=0, seen=1):
    rec = JobRecord(
        job.job_id, job.arrival, gpus=job.gpus, exclusive_s=job.work.total_seconds("v100")
    )
    rec.rounds_run, rec.contention_n = rounds_run, seen
    return JobState(job, progress, rec)


def test_dirichlet_prediction_moves_toward_the_observed_regime():
    work = EpochWork({"v100": [100.0] * 4 + [25.0] * 6}, [16] * 4 + [128] * 6)
    job = GpuJob(
        0, 0.0, 1, work, info={"bs_modes": (16, 128), "mode_seconds": {16: 100.0, 128: 25.0}}
    )
    start = predicted_remaining_s(_state(job))
    # prior 5 + 5 epochs, one observed at bs 16: 10 * (6/11 * 100 + 5/11 * 25)
    assert start == pytest.approx(10 * (6 / 11 * 100 + 5 / 11 * 25))
    later = predicted_remaining_s(_state(job, progress=6.0))  # 4 at 16 and 3 at 128 seen
    assert later == pytest.approx(4 * (9 / 17 * 100 + 8 / 17 * 25))


def _jobs(n, gpus=(1, 1, 2)):
    return [
        GpuJob(i, 0.0, gpus[i % len(gpus)], EpochWork({"v100": [100.0 * (1 + i % 4)] * 5}))
        for i in range(n)
    ]


def test_baseline_allocations():
    assert bl.water_fill([1, 1, 2], 2) == pytest.approx([0.5, 0.5, 0.5])
    assert bl.water_fill([1, 1], 4) == [1.0, 1.0]
    view = RoundView(0.0, 0, 120.0, {"v100": 2}, [_state(j) for j in _jobs(3)])
    x = bl.FinishTimeFairness().allocation(view)
    assert sum(x[s.job_id] * s.job.gpus for s in view.jobs) <= 2 + 1e-6
    mst = bl.MaxSumThroughput().allocation(view)
    assert mst[0] == pytest.approx(1.0) and mst[1] == pytest.approx(1.0)  # 1-GPU jobs first
    assert list(bl.SRTF().schedule(view)) == [0, 1]  # shortest first


@pytest.mark.parametrize("name", ["Shockwave", *bl.BASELINES])
def test_every_policy_finishes_every_job_without_oversubscribing(name):
    jobs = _jobs(7)
    pol = Shockwave(2, horizon=3, time_limit=5.0) if name == "Shockwave" else bl.make_baseline(name)
    run = simulate_rounds(pol, jobs, {"v100": 2}, keep_allocations=True)
    assert all(r.status == "finished" for r in run.records)
    for alloc in run.allocations.values():
        assert sum(jobs[j].gpus for j in alloc) <= 2


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown policy 'LAS'"):
        bl.make_baseline("LAS")


@pytest.mark.slow
def test_smoke_scale_end_to_end(tmp_path):
    run_artifact(ARTIFACT, RunOptions(scale=Scale.SMOKE, out=tmp_path, jobs=2, progress=False))
    for f in ("claims.json", "CHECKLIST.md", "metrics.csv", "provenance.json", "fig-jct-cdf.png"):
        assert (tmp_path / f).is_file(), f
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert set(m.policy) == {"Shockwave", *bl.BASELINES}
    assert (m.finished == m.jobs).all() and (m.makespan_s >= m.work_bound_s - 1e-6).all()
    claims = {c["id"]: c for c in json.loads((tmp_path / "claims.json").read_text())}
    assert claims["scale-makespan"]["status"] == "not checked"
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert any(p.endswith("tacc_throughputs.json") for p in prov["data_files"])
