"""MegaScale-Infer: the ping-pong schedule on hand-computed cases and against the paper's closed
form, the planner against brute force on a small grid, the baselines, the claims on hand-made
frames, and the artifact end to end at smoke scale."""

from __future__ import annotations

import importlib
import json
import random

import pandas as pd
import pytest

from core.artifact import Results, RunContext, RunOptions, Scale, run_artifact
from core.model.spec import ModelSpec
from core.sim.pingpong import (
    ATTENTION,
    EXPERT,
    pingpong_iteration_s,
    pingpong_timeline,
    timeline_iteration_s,
)

artifact = importlib.import_module("artifacts.megascale-infer.artifact")
models = importlib.import_module("artifacts.megascale-infer.models")
cost = importlib.import_module("artifacts.megascale-infer.cost")
Deployment = cost.Deployment
DisaggCostModel = cost.DisaggCostModel
brute_force = cost.brute_force
closed_form_iteration_s = cost.closed_form_iteration_s
colocated_ep = cost.colocated_ep
colocated_tp = cost.colocated_tp
hides_communication = cost.hides_communication
min_microbatches = cost.min_microbatches
plan = cost.plan


def _spans(slots, side):
    return [(s.layer, s.micro_batch, s.start, s.end) for s in slots if s.side == side]


def test_one_micro_batch_leaves_each_side_idle_while_the_other_works():
    # T_a = 1, T_e = 2, T_c = 0.5, two layers
    slots = pingpong_timeline(1.0, 2.0, 0.5, m=1, layers=2)
    assert _spans(slots, ATTENTION) == [(0, 0, 0.0, 1.0), (1, 0, 4.0, 5.0)]
    assert _spans(slots, EXPERT) == [(0, 0, 1.5, 3.5), (1, 0, 5.5, 7.5)]
    assert timeline_iteration_s(slots, 0.5) == 8.0
    assert not hides_communication(1.0, 2.0, 0.5, 1)
    assert closed_form_iteration_s(1.0, 2.0, 0.5, 1, 2) == 6.0  # a lower bound here


def test_two_micro_batches_are_too_few_to_hide_this_communication():
    slots = pingpong_timeline(1.0, 1.0, 0.5, m=2, layers=2)
    assert _spans(slots, ATTENTION) == [
        (0, 0, 0.0, 1.0), (0, 1, 1.0, 2.0), (1, 0, 3.0, 4.0), (1, 1, 4.0, 5.0)
    ]  # fmt: skip
    assert _spans(slots, EXPERT) == [
        (0, 0, 1.5, 2.5), (0, 1, 2.5, 3.5), (1, 0, 4.5, 5.5), (1, 1, 5.5, 6.5)
    ]  # fmt: skip
    assert timeline_iteration_s(slots, 0.5) == 7.0
    assert closed_form_iteration_s(1.0, 1.0, 0.5, 2, 2) == 6.0


def test_three_micro_batches_keep_both_sides_busy_and_meet_the_closed_form():
    slots = pingpong_timeline(1.0, 1.0, 0.5, m=3, layers=2)
    assert [s[2:] for s in _spans(slots, ATTENTION)] == [(t, t + 1.0) for t in range(6)]
    assert [s[2:] for s in _spans(slots, EXPERT)] == [(1.5 + t, 2.5 + t) for t in range(6)]
    assert timeline_iteration_s(slots, 0.5) == 8.0 == closed_form_iteration_s(1, 1, 0.5, 3, 2)
    assert min_microbatches(1.0, 1.0, 0.5) == 3  # m >= 2 (1 + T_c / T_f)
    assert min_microbatches(1.0, 1.0, 0.4) == 3
    assert min_microbatches(1.0, 1.0, 1.0) == 4
    assert min_microbatches(1.0, 1.0, 0.0) == 2


def test_schedule_respects_dependencies_and_matches_the_closed_form_exactly_when_it_holds():
    rng = random.Random(0)
    for _ in range(300):
        t_a, t_e, t_c = rng.uniform(0.1, 2), rng.uniform(0.1, 2), rng.uniform(0, 2)
        m, layers = rng.randint(1, 5), rng.randint(1, 6)
        slots = pingpong_timeline(t_a, t_e, t_c, m, layers)
        for side in (ATTENTION, EXPERT):  # one op at a time per side
            spans = _spans(slots, side)
            assert all(a[3] <= b[2] + 1e-12 for a, b in zip(spans, spans[1:], strict=False))
        ends = {(s.side, s.layer, s.micro_batch): s for s in slots}
        for s in slots:  # inputs arrive before use
            if s.side == EXPERT:
                assert s.start >= ends[(ATTENTION, s.layer, s.micro_batch)].end + t_c - 1e-12
            elif s.layer > 0:
                assert s.start >= ends[(EXPERT, s.layer - 1, s.micro_batch)].end + t_c - 1e-12
        exact = timeline_iteration_s(slots, t_c)
        closed = closed_form_iteration_s(t_a, t_e, t_c, m, layers)
        assert exact == pytest.approx(pingpong_iteration_s(t_a, t_e, t_c, m, layers))
        if hides_communication(t_a, t_e, t_c, m):
            assert exact == pytest.approx(closed, rel=1e-12)
        else:
            assert exact >= closed - 1e-12


@pytest.fixture(scope="module")
def mixtral_h100():
    return DisaggCostModel(ModelSpec.from_preset("mixtral-8x7b"), "h100", "h100",
                           prices=models.PRICES)  # fmt: skip


def test_planner_finds_the_brute_force_optimum_on_a_small_grid(mixtral_h100):
    grid = dict(tp_a=(1, 2), tp_e=(1, 2), n_a=range(1, 5), m=(1, 2, 3))
    best, found = plan(mixtral_h100, max_b_a=96, slo_s=0.05, **grid)
    brute = brute_force(mixtral_h100, b_a=range(1, 97), slo_s=0.05, **grid)
    assert best is not None and brute is not None
    assert best.per_gpu == pytest.approx(brute.per_gpu, rel=1e-9)
    assert best.feasible and best.iteration_s <= 0.05
    cheapest = max(found, key=lambda e: e.per_dollar)
    brute_dollar = brute_force(mixtral_h100, b_a=range(1, 97), slo_s=0.05, objective="per_dollar",
                               **grid)  # fmt: skip
    assert brute_dollar is not None
    assert cheapest.per_dollar == pytest.approx(brute_dollar.per_dollar, rel=1e-9)


def test_a_deployment_that_misses_the_slo_or_memory_is_infeasible(mixtral_h100):
    ok = mixtral_h100.evaluate(Deployment(1, 1, 2, 2, 64), slo_s=1.0)
    assert ok.feasible and ok.gpus == 2 * 1 + 8 * 1
    slow = mixtral_h100.evaluate(Deployment(1, 1, 2, 2, 64), slo_s=ok.iteration_s / 2)
    assert not slow.feasible and "SLO" in slow.why
    huge = mixtral_h100.evaluate(Deployment(1, 1, 1, 1, 100_000), slo_s=100.0)
    assert not huge.feasible and "attention node" in huge.why
    ragged = mixtral_h100.evaluate(Deployment(1, 1, 2, 3, 64))
    assert not ragged.feasible and "whole micro-batches" in ragged.why


def test_baselines_fit_only_where_the_model_fits(mixtral_h100):
    assert not colocated_tp(mixtral_h100, 1).feasible  # ~93 GB of weights on one 80 GB GPU
    tp2 = colocated_tp(mixtral_h100, 2, slo_s=0.15)
    assert tp2.feasible and tp2.iteration_s <= 0.15 and tp2.gpus == 2
    ep8 = colocated_ep(mixtral_h100, 8, slo_s=0.15)
    assert ep8.feasible and ep8.batch % 8 == 0
    assert not colocated_ep(mixtral_h100, 3).feasible  # 8 experts do not split 3 ways


def _deployments_frame():
    rows = []
    for gpu, (dis, tp, m1, m2, m3) in {
        "a": (3.0, 2.0, 1.0, 2.0, 2.4),
        "b": (4.0, 4.0, 2.0, 3.0, 3.0),
    }.items():
        for system, v in (("disaggregated", dis), ("colocated-tp", tp), ("m=1", m1), ("m=2", m2),
                          ("m=3", m3)):  # fmt: skip
            rows.append({"model": "x", "attention_gpu": gpu, "system": system, "per_gpu": v})
    rows.append({"model": "x", "attention_gpu": "a", "system": "colocated-ep", "per_gpu": 2.5})
    return pd.DataFrame(rows)


def test_claim_measures_read_the_frames_as_documented():
    ctx = RunContext(Scale.SMOKE, 0, out=None)  # type: ignore[arg-type]
    res = Results({"deployments": _deployments_frame()}, ctx)
    # against the better of TP and EP: 3.0 / 2.5 on GPU a, 4.0 / 4.0 on GPU b
    assert artifact.per_gpu_vs_colocated(res) == pytest.approx(1.2)
    assert artifact.m_ratio(2, 1)(res) == pytest.approx(1.75)  # median of 2.0 and 1.5
    assert artifact.m_ratio(3, 2)(res) == pytest.approx(1.1)  # median of 1.2 and 1.0
    real = pd.DataFrame(
        [{"kind": "run", "round": r, "m": m, "tokens_per_s": v, "tokens_equal": True}
         for r, vals in enumerate([(10, 8, 12, 9), (10, 6, 9, 9)])
         for m, v in zip((0, 1, 2, 3), vals, strict=True)]
    )  # fmt: skip
    res = Results({"real": real}, ctx)
    assert artifact.real_exact(res) == 1.0
    assert artifact.real_ratio(2, 1)(res) == pytest.approx(1.5)
    assert artifact.real_best_per_process(res) == pytest.approx((0.6 + 0.45) / 2)


def test_pingpong_experiment_at_smoke_scale(tmp_path):
    summary = run_artifact(
        artifact.ARTIFACT,
        RunOptions(scale=Scale.SMOKE, out=tmp_path, jobs=1, experiments=("pingpong",),
                   progress=False, plots=False),
    )  # fmt: skip
    claims = {c["id"]: c for c in json.loads((tmp_path / "claims.json").read_text())}
    assert claims["closed-form"]["passed"] is True
    assert claims["real-exact"]["status"] == "not checked"  # its experiment did not run
    assert summary.outcome.computed == 16


@pytest.mark.slow
def test_smoke_scale_end_to_end(tmp_path):
    summary = run_artifact(
        artifact.ARTIFACT, RunOptions(scale=Scale.SMOKE, out=tmp_path, jobs=1, progress=False)
    )
    claims = {c["id"]: c for c in summary.claims}
    assert claims["real-exact"]["passed"] is True
    assert claims["closed-form"]["passed"] is True
    for name in ("per-gpu-throughput", "microbatches", "heterogeneous", "pingpong-schedule",
                 "real-timeline"):  # fmt: skip
        assert (tmp_path / f"fig-{name}.png").exists()
    assert "megascale-infer" in (tmp_path / "CHECKLIST.md").read_text()
