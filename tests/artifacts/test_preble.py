"""The Preble artifact: smoke scale end to end (simulated fleets, the ablation ladder and two real
replicas on Ray), and the claim measures on hand-made results."""

from __future__ import annotations

import pandas as pd
import pytest

from artifacts.preble import artifact as pb
from artifacts.preble.artifact import ARTIFACT
from artifacts.preble.fleet import LADDER
from artifacts.preble.plots import SLO_FACTOR, slo_rates
from core.artifact import Results, RunContext, RunOptions, Scale, run_artifact


@pytest.mark.slow
def test_smoke_scale_end_to_end(tmp_path):
    s = run_artifact(ARTIFACT, RunOptions(scale=Scale.SMOKE, out=tmp_path, jobs=2, progress=False))
    for f in ("claims.json", "CHECKLIST.md", "metrics.csv", "provenance.json", "fig-fleet-avg.png",
              "fig-fleet-p99.png", "fig-slo-rate.png", "fig-ablation.png", "fig-real.png"):
        assert (tmp_path / f).is_file(), f
    m = pd.read_csv(tmp_path / "metrics.csv")
    sim = m[m.experiment.isin(["fleet", "ablation"])]
    assert sim.token_hit_rate.between(0, 1).all() and (sim.completed == sim.requests).all()
    assert set(m[m.experiment == "ablation"].router) == set(LADDER)
    # direction: E2 keeps a prefix where it is cached, round-robin spreads it
    fleet = m[m.experiment == "fleet"]
    for _, g in fleet.groupby("rate"):
        by = g.set_index("router").token_hit_rate
        assert by["preble"] > by["round-robin"]
    real = m[m.experiment == "real"].set_index("router")
    assert set(real.index) == {"round-robin", "e2"}
    assert (real.completed == real.requests).all() and (real.failed == 0).all()
    assert real.token_hit_rate["e2"] > real.token_hit_rate["round-robin"]
    claims = {c["id"]: c for c in s.claims}
    assert set(claims) == {c.id for c in ARTIFACT.claims}
    assert claims["real-complete"]["passed"] is True


def _fleet_rows() -> pd.DataFrame:
    rows = []
    # (workload, rate, router) -> (avg, p99); unloaded latency 1 s, so the SLO is 5 s
    table = {
        ("toolbench", 1.0): {"round-robin": (2, 4), "preble": (1, 2), "prefix-affinity": (2, 9)},
        ("toolbench", 2.0): {"round-robin": (8, 20), "preble": (4, 6), "prefix-affinity": (7, 30)},
        ("programming", 1.0): {"round-robin": (2, 4), "preble": (1.8, 4), "prefix-affinity": (2, 4)},
        ("programming", 2.0): {"round-robin": (6, 9), "preble": (5, 8), "prefix-affinity": (6, 9)},
    }
    for (w, rate), routers in table.items():
        for router, (avg, p99) in routers.items():
            rows.append({"setup": "s", "gpus": 4, "workload": w, "load": rate, "rate": rate,
                         "router": router, "avg_latency_s": avg, "p99_latency_s": p99,
                         "unloaded_latency_s": 1.0})
    return pd.DataFrame(rows)


def _results(**frames: pd.DataFrame) -> Results:
    return Results(frames, RunContext(Scale.SMOKE, 0, None))


def test_gain_measures_on_hand_made_rows():
    r = _results(fleet=_fleet_rows())
    assert pb.max_avg_gain(r) == pytest.approx(2.0)  # toolbench at rate 2: 8 / 4
    assert pb.max_p99_gain(r) == pytest.approx(20 / 6)
    assert pb.min_avg_gain_prefill_heavy(r) == pytest.approx(2.0)  # toolbench only
    assert pb.programming_gain_smallest(r) == 1.0  # programming's best is 1.2x < 2x
    assert pb.prefix_affinity_p99_vs_preble(r) == pytest.approx(30 / 6)


def test_slo_rate_interpolates_between_the_last_rate_that_meets_it_and_the_first_that_does_not():
    s = slo_rates(_fleet_rows()).set_index(["workload", "router"])
    assert SLO_FACTOR == 5.0
    # round-robin on toolbench: 2 s at rate 1 meets 5 s, 8 s at rate 2 does not: 1 + 3/6
    assert s.at[("toolbench", "round-robin"), "slo_rate"] == pytest.approx(1.5)
    assert s.at[("toolbench", "preble"), "slo_rate"] == pytest.approx(2.0)  # meets at every rate
    assert s.at[("toolbench", "preble"), "saturated"] == False  # noqa: E712 (numpy bool)
    assert pb.slo_rate_share(_results(fleet=_fleet_rows())) == 1.0


def test_ladder_measures_read_the_highest_rate_in_ladder_order():
    avg = {"round-robin": 10, "e2": 8, "e2+rebalance": 9, "e2+rebalance+pd": 7, "preble": 7}
    p99 = {"round-robin": 30, "e2": 25, "e2+rebalance": 24, "e2+rebalance+pd": 22, "preble": 20}
    rows = [{"router": k, "rate": 2.0, "avg_latency_s": avg[k], "p99_latency_s": p99[k]} for k in LADDER]
    rows += [{"router": k, "rate": 1.0, "avg_latency_s": 1, "p99_latency_s": 1} for k in LADDER]
    r = _results(ablation=pd.DataFrame(rows))
    assert pb.ladder_steps_helping(r) == pytest.approx(2 / 3)  # +rebalancing made it worse
    assert pb.priority_step_p99_gain(r) == pytest.approx(22 / 20)


def test_real_measures():
    f = pd.DataFrame([{"router": "round-robin", "avg_latency_s": 3.0, "completed": 10, "requests": 10},
                      {"router": "e2", "avg_latency_s": 2.0, "completed": 9, "requests": 10}])
    r = _results(real=f)
    assert pb.real_gain(r) == pytest.approx(1.5)
    assert pb.real_complete(r) == pytest.approx(0.9)
