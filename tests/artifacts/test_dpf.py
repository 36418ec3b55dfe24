"""The DPF artifact: the policies on hand-made cases (dominant-share order, unlocking by arrivals
and by time, round-robin's equal shares, FCFS), the workloads' shape, and smoke scale end to
end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from artifacts.dpf import artifact as dpf
from artifacts.dpf.artifact import ARTIFACT
from artifacts.dpf.policies import DPF, FCFS, RoundRobin, dominant_share_key, water_fill
from artifacts.dpf.workloads import MICE_EPS, multi_block, single_block
from core.artifact import NotApplicable, Results, RunContext, RunOptions, Scale, run_artifact
from core.jobsim import GRANTED, BlockArrival, Pipeline, PrivacyBlock, simulate_budget

TWO_BLOCKS = [BlockArrival(0, 0.0, (1.0,)), BlockArrival(1, 0.0, (1.0,))]


def _grants(policy, pipes, until=200.0, tick=1.0):
    run = simulate_budget(policy, TWO_BLOCKS, pipes, until=until, tick_s=tick)
    return [(t, pid) for t, pid in run.grants], run


def test_dominant_share_orders_by_largest_share_then_the_next():
    blocks = {0: PrivacyBlock(0, 0, (1.0,)), 1: PrivacyBlock(1, 0, (2.0,))}
    one = dominant_share_key(Pipeline(0, 0, (0,), (0.3,)), blocks)
    both = dominant_share_key(Pipeline(1, 0, (0, 1), (0.3,)), blocks)
    big = dominant_share_key(Pipeline(2, 0, (1,), (0.8,)), blocks)
    assert one == (0.3,) and both == (0.3, 0.15) and big == (0.4,)
    assert one < both < big


def test_dpf_t_serves_the_smallest_dominant_share_first_and_skips_what_does_not_fit():
    pipes = [
        Pipeline(0, 1.0, (0,), (0.5,)),  # arrives first, largest share
        Pipeline(1, 2.0, (0, 1), (0.3,)),  # key (0.3, 0.3)
        Pipeline(2, 3.0, (0,), (0.3,)),  # key (0.3,): first
    ]
    grants, run = _grants(DPF("T", lifetime=100.0), pipes)
    # 0.3 unlocked at t=30 -> pipeline 2; 0.6 at t=60 -> pipeline 1; pipeline 0 (0.5) never
    # fits the 0.4 left, although FCFS would have granted it first
    assert grants == [(30.0, 2), (60.0, 1)]
    assert run.records[0].status != GRANTED
    fcfs, _ = _grants(FCFS(), pipes)
    assert fcfs == [(1.0, 0), (2.0, 1)]  # pipeline 2 finds 0.2 left on block 0


def test_dpf_n_unlocks_one_nth_per_arrival_on_the_blocks_it_demands():
    pipes = [Pipeline(i, 1.0 + i, (0,), (0.25,)) for i in range(3)]
    pipes.append(Pipeline(3, 10.0, (1,), (0.25,)))
    grants, run = _grants(DPF("N", n=4), pipes, tick=None)
    # each arrival on block 0 unlocks 0.25 of it: one grant per arrival
    assert grants == [(1.0, 0), (2.0, 1), (3.0, 2), (10.0, 3)]
    assert run.blocks[0].spent == [0.75] and run.blocks[1].spent == [0.25]
    # with N = 8 two arrivals are needed per grant
    grants8, _ = _grants(DPF("N", n=8), pipes[:3], tick=None)
    assert grants8 == [(2.0, 0)]


def test_water_fill_is_max_min_fair():
    assert water_fill(0.9, [0.1, 0.5, 0.5]) == pytest.approx([0.1, 0.4, 0.4])
    assert water_fill(2.0, [0.1, 0.5]) == pytest.approx([0.1, 0.5])
    assert water_fill(0.0, [0.1]) == [0.0]


def test_round_robin_shares_equally_and_loses_timed_out_shares():
    pipes = [
        Pipeline(0, 0.5, (0,), (0.1,)),
        Pipeline(1, 0.6, (0,), (0.8,), timeout=10.0),
    ]
    grants, run = _grants(RoundRobin("T", lifetime=100.0), pipes, until=100.0)
    # 0.01 unlocked a second, split in two until pipeline 1 times out at 10.6 holding 0.05;
    # that share is lost, and pipeline 0 (0.05 held) takes the whole 0.01/s from then: 0.1 at
    # t=15 (had the lost share come back, at t=11)
    assert grants == [(15.0, 0)]
    assert run.records[1].status == "timed_out"
    with pytest.raises(ValueError, match="basic composition only"):
        simulate_budget(
            RoundRobin("N", n=10), TWO_BLOCKS, [Pipeline(0, 1, (0,), (0.1, 0.2))], until=5
        )


def test_workloads_follow_the_papers_mix_and_are_seeded():
    w = single_block(3)
    mice = np.mean([p.demand == (MICE_EPS,) for p in w.pipelines])
    assert 0.6 < mice < 0.9 and 180 < len(w.pipelines) < 300
    assert [p.arrival for p in single_block(3).pipelines] == [p.arrival for p in w.pipelines]
    m = multi_block(0, blocks=5)
    assert len(m.blocks) == 5 and m.until == 50.0
    for p in m.pipelines:  # the latest block, or the last (up to) 10
        latest = int(p.arrival // 10)
        assert p.blocks[-1] == latest and len(p.blocks) in (1, min(10, latest + 1))


def test_policy_names_and_bad_parameters():
    assert dpf.make_policy("DPF-T", lifetime=5.0).name == "DPF-T"
    with pytest.raises(ValueError, match="unknown policy 'LIFO'"):
        dpf.make_policy("LIFO")
    with pytest.raises(ValueError, match="N > 0"):
        DPF("N", n=0)


def _results(rows, experiment):
    ctx = RunContext(Scale.SMOKE, 0, out=None)  # type: ignore[arg-type]
    return Results({experiment: pd.DataFrame(rows)}, ctx)


def test_claim_measures_on_hand_made_rows():
    rows = [{"policy": "FCFS", "n": 0, "granted": 1000}]
    rows += [{"policy": "DPF-N", "n": n, "granted": g} for n, g in ((100, 2500), (750, 1500))]
    rows += [{"policy": "DPF-T", "n": n, "granted": g} for n, g in ((100, 2400), (750, 2100))]
    r = _results(rows, "multi-block")
    assert dpf.multi_ratio_above_400(r) == pytest.approx(2.1)  # better variant at N=750
    with pytest.raises(NotApplicable):
        dpf.multi_ratio_above_400(_results([r for r in rows if r["n"] < 400], "multi-block"))


@pytest.mark.slow
def test_smoke_scale_end_to_end(tmp_path):
    s = run_artifact(ARTIFACT, RunOptions(scale=Scale.SMOKE, out=tmp_path, jobs=2, progress=False))
    for f in ("claims.json", "CHECKLIST.md", "metrics.csv", "provenance.json"):
        assert (tmp_path / f).is_file(), f
    for fig in ("single-block", "multi-block", "renyi"):
        assert (tmp_path / f"fig-{fig}.png").is_file()
    claims = {c["id"]: c for c in json.loads((tmp_path / "claims.json").read_text())}
    assert claims["fig6a-dpf"]["measured"] >= 90
    assert claims["renyi-17x"]["measured"] > 10
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert (m.granted + m.timed_out + m.pending == m.pipelines).all()
    assert (m.budget_used <= 1 + 1e-9).all()
    assert s.outcome.computed == len(m)
