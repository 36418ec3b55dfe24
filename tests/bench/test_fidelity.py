"""Calibration and the fidelity benchmark at smoke scale: they run, write what they promise and
stop with one clear message on a bad profile. Their numbers are measured, never asserted."""

from __future__ import annotations

import json
import math

import pytest

from core.sim import ProfiledCostModel
from scripts.bench import BENCHMARKS, fidelity
from scripts.calibrate.__main__ import main as calibrate_main

KEYS = {f"{m}_{s}" for m in ("ttft", "tpot", "e2e") for s in ("mean", "p50", "p90", "p99")}


@pytest.fixture(scope="module")
def quick_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrate") / "smoke.json"
    assert (
        calibrate_main(
            ["--quick", "--model", "tiny-llama-smoke", "--device", "cpu", "--out", str(out)]
        )
        == 0
    )
    return out


def test_calibration_writes_a_profile_with_provenance(quick_profile, capsys):
    doc = json.loads(quick_profile.read_text())
    assert doc["schema"] == "servelab.step-profile/1"
    assert doc["device"]["type"] == "cpu" and doc["device"]["name"] and doc["threads"] == 1
    assert (
        doc["model"]["name"] == "tiny-llama-smoke" and doc["model"]["config"]["hidden_size"] == 64
    )
    assert doc["dtype"] == "float32" and doc["torch_version"] and doc["created"]
    assert doc["engine"]["max_model_len"] == 512  # the model's positions
    assert "git" in doc["provenance"]
    kinds = {s["cell"][0] for s in doc["samples"]}
    assert kinds == {"prefill", "decode", "decode-mix", "mixed", "chunks", "check"}
    assert all(s["seconds"] > 0 for s in doc["samples"])
    model = ProfiledCostModel.load(quick_profile)
    assert 0 < model.step_time([(8, 0)]) and 0 < model.step_time([], [8, 8])
    assert set(doc["checks"]) >= {"prefill", "decode", "mixed", "check:decode-spread"}


def test_fidelity_smoke_run(quick_profile, tmp_path, capsys):
    doc = json.loads(quick_profile.read_text())
    doc["device"]["hostname"] = "elsewhere"  # a profile from another machine: a warning
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(doc))
    argv = [
        "--quick",
        "--profile",
        str(profile),
        "--requests",
        "6",
        "--loads",
        "0.5",
        "--out",
        str(tmp_path),
    ]
    assert fidelity.main(argv) == 0
    out = capsys.readouterr()
    assert "another machine" in out.err and "MAPE anchor-corrected" in out.out
    report = json.loads((tmp_path / "fidelity.json").read_text())
    assert report["benchmark"] == "fidelity"
    assert (tmp_path / "fig-fidelity.png").stat().st_size > 0
    res, cfg = report["results"]["engine"], report["config"]["engine"]
    assert report["config"]["levels"] == ["engine"] and "vllm" not in report["results"]
    assert res["capacity_per_s"] > 0 and cfg["requests"] == 6
    assert any("hostname" in m for m in cfg["profile_machine_mismatch"])
    assert cfg["profile_calibrated_in_this_run"] is False
    # level 1: every served step compared, by kind, raw and drift-corrected
    steps = res["steps"]
    assert steps["raw"]["steps"] == steps["corrected"]["steps"] > 0
    assert set(steps["corrected"]["by_kind"]) <= {"prefill", "decode", "mixed"}
    assert set(steps["by_run"]) == {"offline", "load-50-a", "load-50-b"}
    # anchors before the offline run, after it and after each stream
    assert len(res["anchors"]) == 3 and all(a["ratio"] > 0 for a in res["anchors"])
    assert (
        res["probes"]["count"] >= 4 and steps["probe_corrected"]["steps"] == steps["raw"]["steps"]
    )
    # level 2: each statistic against the mean of two engine runs, beside their spread
    (pt,) = res["loads"]
    assert pt["load"] == 0.5 and pt["drift_factor"] > 0
    assert set(pt["requests"]) == KEYS
    for e in pt["requests"].values():
        assert len(e["engine_runs"]) == 2 and math.isfinite(e["error"])
        assert e["spread"] >= 0 and e["bound"] == max(0.05, e["spread"])
        assert e["measured"] == pytest.approx(sum(e["engine_runs"]) / 2)
    ids = {t["id"] for t in report["targets"]}
    assert {
        f"engine-load-50-{m}_{s}" for m in ("ttft", "tpot", "e2e") for s in ("mean", "p90")
    } <= ids
    assert any(i.startswith("engine-steps-") for i in ids) or not steps["quiet_corrected"]["steps"]


def test_fidelity_bad_profile_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert fidelity.main(["--profile", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.strip().count("\n") == 0
    assert not (tmp_path / "fidelity.json").exists()
    assert "fidelity" in BENCHMARKS
