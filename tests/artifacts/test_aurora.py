"""The Aurora artifact: its systems on hand-checkable inputs, the ILP point, bad input, and
smoke scale end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from artifacts.aurora.artifact import ARTIFACT, run_alltoall, run_optimality, run_speedup
from artifacts.aurora.systems import SYSTEMS, evaluate, layer, make_cluster
from core.artifact import RunOptions, Scale, run_artifact


def test_every_system_is_evaluated_and_aurora_is_never_slower_than_its_steps():
    rng = np.random.default_rng(0)
    a = layer(np.asarray(rng.integers(0, 50, (8, 8)), dtype=float))
    b = layer(np.asarray(rng.integers(0, 50, (8, 8)), dtype=float))
    rows = {r["system"]: r for r in evaluate(a, b, make_cluster("heterogeneous", 8, "25G"), 0)}
    assert list(rows) == [s.name for s in SYSTEMS]
    for r in rows.values():
        assert r["time_ms"] > 0 and 0 < r["utilization"] <= 1
    # taking turns costs the sum; co-location overlaps, so it never takes longer
    assert rows["+ placement"]["time_ms"] == pytest.approx(
        rows["+ placement"]["comm_ms"] + rows["+ placement"]["compute_ms"]
    )
    assert rows["Aurora"]["time_ms"] <= rows["+ placement"]["time_ms"] * (1 + 1e-9)
    # the matching order meets the bound, so it never loses to the rotation with equal placement
    assert rows["+ Aurora order"]["time_ms"] <= rows["EP (rotation)"]["time_ms"] * (1 + 1e-9)


def test_points_return_their_rows():
    rows = run_alltoall(
        {
            "gpus": 4,
            "skew": 1.0,
            "popularity": "per-source",
            "bandwidth": "heterogeneous",
            "reps": 1,
            "tokens": 64,
            "seed": 0,
        }
    )
    by = {r["ordering"]: r["time_over_bound"] for r in rows}
    assert by["Aurora"] == pytest.approx(1.0) and by["rotation"] >= 1.0 - 1e-9
    rows = run_speedup(
        {
            "cluster": "homogeneous",
            "network": "10G",
            "skew": 0.5,
            "popularity": "shared",
            "gpus": 4,
            "reps": 1,
            "tokens": 64,
            "seed": 0,
        }
    )
    assert {r["system"] for r in rows} == {s.name for s in SYSTEMS}
    opt = run_optimality(
        {"gpus": 4, "rep": 0, "models": 2, "time_limit": 10.0, "tokens": 64, "seed": 0}
    )
    assert opt["optimal"] and opt["ratio"] >= 1.0 - 1e-9


def test_an_unknown_cluster_kind_is_named():
    with pytest.raises(ValueError, match="unknown cluster kind 'mixed'"):
        make_cluster("mixed", 8, "25G")


@pytest.mark.slow
def test_smoke_scale_end_to_end(tmp_path):
    run_artifact(ARTIFACT, RunOptions(scale=Scale.SMOKE, out=tmp_path, jobs=1, progress=False))
    for f in (
        "claims.json",
        "CHECKLIST.md",
        "metrics.csv",
        "provenance.json",
        "fig-speedup.png",
        "fig-alltoall.png",
        "fig-optimality.png",
        "fig-recorded.png",
    ):
        assert (tmp_path / f).is_file(), f
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert set(m.experiment) == {"alltoall", "speedup", "optimality", "recorded"}
    a2a = m[m.experiment == "alltoall"]
    assert (a2a[a2a.ordering == "Aurora"].time_over_bound.sub(1).abs() < 1e-6).all()
    claims = {c["id"]: c for c in json.loads((tmp_path / "claims.json").read_text())}
    assert set(claims) == {c.id for c in ARTIFACT.claims}
    assert all(c["passed"] is not None for c in claims.values())
