"""The load client replays a shipped trace against the server and reports core metrics."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.metrics import summarize
from scripts.loadgen import build_requests, load_workload, main, replay
from tests.serve.conftest import MODEL

ROOT = Path(__file__).resolve().parents[2]


def test_replay_azure_trace_against_the_server(server):
    wl = load_workload("azure-conv", limit=12)
    reqs = build_requests(wl, vocab_size=512, max_prompt_len=40, max_output_len=6, rate=40.0)
    assert [r.max_tokens for r in reqs] == [min(6, r.output_len) for r in wl.requests]
    assert all(1 <= len(r.prompt) <= 40 and max(r.prompt) < 512 for r in reqs)
    assert [r.arrival for r in reqs] == sorted(r.arrival for r in reqs) and reqs[0].arrival > 0
    records, duration = asyncio.run(replay(server.url, MODEL, reqs))
    assert [r.request_id for r in records] == [r.request_id for r in reqs]
    for rec, req in zip(records, reqs, strict=True):
        assert rec.finish_reason == "length" and rec.output_tokens == req.max_tokens
        assert len(rec.token_times) == req.max_tokens
        assert 0 <= rec.ttft <= rec.e2e
    s = summarize(records, duration=duration)
    assert s["num_completed"] == 12 and s["ttft_p50"] > 0 and s["tpot_p50"] > 0


def test_trace_arrival_times_are_kept_and_scaled():
    wl = load_workload("mooncake", limit=5)
    reqs = build_requests(wl, max_prompt_len=8, max_output_len=2, time_scale=0.5)
    want = [0.5 * (r.arrival_time - wl.requests[0].arrival_time) for r in wl.requests]
    assert [r.arrival for r in reqs] == want


def test_failures_are_counted_not_timed(server, capsys):
    # the wrong model name: every request fails with a 404 and is counted as an error
    code = main(["--url", server.url, "--model", "nope", "--trace", "azure-code", "--limit", "3",
                 "--rate", "100", "--max-prompt-len", "8", "--max-output-len", "2", "--vocab-size", "512"])  # fmt: skip
    assert code == 1
    assert "0/3 completed (3 failed)" in capsys.readouterr().out


def test_bench_summary_and_target():
    from scripts.bench.serve import make_targets, summarize_rounds

    def point(makespan):
        return {"makespan_s": makespan, "e2e_p50": makespan / 2}

    rounds = [
        {"saturation": {"rate": None, "offline": point(10.0), "server": point(10.5)}},
        {"saturation": {"rate": None, "offline": point(10.0), "server": point(12.0)}},
        {"saturation": {"rate": None, "offline": point(8.0), "server": point(8.4)}},
    ]
    s = summarize_rounds(rounds)["saturation"]
    assert s["makespan_overhead_per_round"] == pytest.approx([0.05, 0.2, 0.05])
    assert s["makespan_overhead"] == pytest.approx(0.05)
    assert s["server"]["makespan_s"] == 10.5
    (target,) = make_targets({"summary": {"saturation": s}})
    assert target["measured"] == pytest.approx(5.0) and target["passed"] is True
    assert make_targets({})[0]["passed"] is None


@pytest.mark.slow
def test_bench_quick_run(tmp_path):
    """`nox -s bench -- serve --quick` end to end (a server subprocess on the 125M preset)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "serve", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "serve.json").read_text())
    summary = report["results"]["summary"]
    assert set(summary) == {"saturation", "rate-0.5"}
    for point in summary.values():
        for system in ("offline", "server"):
            assert point[system]["num_completed"] == 4 and point[system]["num_error"] == 0
    assert summary["saturation"]["engine-loop"]["num_completed"] == 4
    assert report["targets"][0]["measured"] is not None
    assert "server-overhead-saturation" in out.stdout
