"""The Splitwise stand-in artifact: smoke scale end to end, the CLI, and a foreign trace."""

import json
import subprocess
import sys

import pandas as pd

from artifacts.splitwise import ARTIFACT
from core.artifact import RunOptions, Scale, main, run_artifact
from core.data import REPO_ROOT


def test_smoke_scale_end_to_end(tmp_path):
    s = run_artifact(ARTIFACT, RunOptions(scale=Scale.SMOKE, out=tmp_path, jobs=1, progress=False))
    for f in (
        "claims.json",
        "CHECKLIST.md",
        "metrics.csv",
        "provenance.json",
        "fig-token-cdfs.png",
        "fig-token-cdfs.pdf",
        "fig-arrivals.png",
    ):
        assert (tmp_path / f).is_file(), f
    m = pd.read_csv(tmp_path / "metrics.csv")
    lengths = m[m.experiment == "lengths"]
    assert set(lengths.service) == {"coding", "conversation"}
    assert (lengths.requests == 2000).all()
    claims = {c["id"]: c for c in s.claims}
    # direction at smoke scale: conversation generates several times more tokens than coding
    assert claims["output-ratio"]["measured"] > 3
    prov = json.loads((tmp_path / "provenance.json").read_text())
    names = {p.rsplit("/", 1)[-1] for p in prov["data_files"]}
    assert names == {"AzureLLMInferenceTrace_code.csv", "AzureLLMInferenceTrace_conv.csv"}


def test_default_scale_medians_match_the_released_trace(tmp_path):
    s = run_artifact(
        ARTIFACT,
        RunOptions(
            scale=Scale.DEFAULT, out=tmp_path, jobs=1, progress=False, experiments=("lengths",)
        ),
    )
    measured = {c["id"]: c["measured"] for c in s.claims}
    # medians of the shipped files, computed independently of the artifact
    import csv
    import statistics

    for kind, service in (("code", "coding"), ("conv", "conversation")):
        path = REPO_ROOT / "data/traces/azure-llm-2023" / f"AzureLLMInferenceTrace_{kind}.csv"
        rows = list(csv.DictReader(path.open()))
        assert measured[f"{service}-prompt-median"] == statistics.median(
            int(r["ContextTokens"]) for r in rows
        )
        assert measured[f"{service}-output-median"] == statistics.median(
            int(r["GeneratedTokens"]) for r in rows
        )


def test_foreign_trace_and_malformed_trace(tmp_path, capsys):
    good = tmp_path / "mine.csv"
    good.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-01-01 00:00:00.0,100,10\n2024-01-01 00:00:30.0,300,30\n"
        "2024-01-01 00:01:10.0,200,20\n"
    )
    out = tmp_path / "out"
    assert main(ARTIFACT, ["--trace", str(good), "--out", str(out), "--quiet", "--jobs", "1"]) == 0
    m = pd.read_csv(out / "metrics.csv")
    assert set(m.service) == {"mine"}
    med = m[(m.experiment == "lengths") & (m["quantile"] == 0.5)]
    assert med.prompt_tokens.item() == 200 and med.output_tokens.item() == 20
    claims = json.loads((out / "claims.json").read_text())
    assert {c["status"] for c in claims} == {"n/a"}
    assert all("mine.csv" in c["reason"] for c in claims)
    assert all("mine.csv (mine 3 requests)" in c["note"] for c in claims)
    assert not any("one-hour sample" in c["note"] for c in claims)
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-01-01 00:00:00.0,100,ten\n")
    assert main(ARTIFACT, ["--trace", str(bad), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:2:" in err


def test_module_help_lists_options():
    out = subprocess.run(
        [sys.executable, "-m", "artifacts.splitwise", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    ).stdout
    assert "--scale" in out and "Azure-LLM-format CSV" in out
