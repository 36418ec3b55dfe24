"""The dLoRA artifact: smoke scale end to end, and the claim measures on hand-made results."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from artifacts.dlora import artifact as dl
from artifacts.dlora import zoo
from artifacts.dlora.artifact import ARTIFACT
from core.artifact import NotApplicable, Results, RunContext, RunOptions, Scale, run_artifact


@pytest.mark.slow
def test_smoke_scale_end_to_end(tmp_path):
    s = run_artifact(ARTIFACT, RunOptions(scale=Scale.SMOKE, out=tmp_path, jobs=2, progress=False))
    for f in (
        "claims.json",
        "CHECKLIST.md",
        "metrics.csv",
        "provenance.json",
        "fig-fig10-llama-2-7b.png",
        "fig-skew.png",
        "fig-fig11a-queueing.png",
        "fig-fig11a-ilp.png",
        "fig-real-mode.png",
    ):
        assert (tmp_path / f).is_file(), f
    m = pd.read_csv(tmp_path / "metrics.csv")
    batching = m[m.experiment == "batching"]
    assert set(batching.system) == {"vllm", "slora", "peft", "dlora"}
    assert (batching.completed == 60).all()
    real = m[m.experiment == "real"]
    assert (real.identical_fraction == 1.0).all() and len(real) == 4
    claims = {c["id"]: c for c in s.claims}
    assert claims["real-identical"]["passed"] is True
    assert claims["skew-crossover"]["passed"] is True
    if not zoo.missing():  # the trained model and adapters are shipped: real mode on them
        assert (tmp_path / "fig-zoo.png").is_file()
        assert claims["zoo-identical"]["passed"] is True
        assert claims["zoo-adapters-help"]["passed"] is True
    assert json.loads((tmp_path / "claims.json").read_text())


def results(**frames):
    return Results({k: pd.DataFrame(v) for k, v in frames.items()}, RunContext(Scale.SMOKE, 0, "."))


def test_measures_on_hand_made_results():
    rows = [
        dict(system=s, rate=rate, throughput_tok_s=t, latency_s=lat, per_token_latency_s=lat / 10)
        for rate, vals in {
            2.0: dict(vllm=(100, 5), peft=(50, 9), slora=(200, 2), dlora=(220, 1.5)),
            4.0: dict(vllm=(120, 8), peft=(60, 12), slora=(210, 6), dlora=(300, 3)),
        }.items()
        for s, (t, lat) in vals.items()
    ]
    r = results(batching=rows)
    assert dl.throughput_vs("vllm")(r) == pytest.approx(2.5)
    assert dl.throughput_vs("peft")(r) == pytest.approx(5.0)
    assert dl.latency_vs_slora(r) == pytest.approx(2.0)
    assert dl.fig10_latency(r) == pytest.approx(0.3)
    assert dl.fig10_order(r) == pytest.approx(0.75)
    skew = [
        dict(system=s, skew=k, per_token_latency_s=v)
        for k, vals in {
            0.0: dict(vllm=3, slora=1, dlora=1),
            3.0: dict(vllm=1, slora=2, dlora=1.2),
        }.items()
        for s, v in vals.items()
    ]
    r = results(skew=skew)
    assert dl.skew_crossover(r) == 1.0
    assert dl.skew_dlora_tracks_best(r) == pytest.approx(1.2)
    cluster = [
        dict(system=s, rate=8.0, queueing_s=q, ilp_solves=0, ilp_solve_max_s=float("nan"))
        for s, q in [("round-robin", 9), ("rr-migration", 3), ("proactive", 4), ("dlora", 1)]
    ]
    r = results(cluster=cluster)
    assert dl.migration_gain(r) == pytest.approx(4.0)
    assert dl.rr_vs_dlora(r) == pytest.approx(9.0)
    assert dl.rr_migration_gain(r) == pytest.approx(3.0)
    with pytest.raises(NotApplicable, match="never fired"):
        dl.ilp_solve_max(r)
