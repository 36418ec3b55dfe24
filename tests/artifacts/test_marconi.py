"""The Marconi artifact: smoke scale end to end, a never-seen Mooncake trace, bad input, and the
claim measures on hand-made results."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from artifacts.marconi import artifact as mc
from artifacts.marconi.artifact import ARTIFACT
from core.artifact import Results, RunContext, RunOptions, Scale, main, run_artifact


def test_smoke_scale_end_to_end(tmp_path):
    s = run_artifact(ARTIFACT, RunOptions(scale=Scale.SMOKE, out=tmp_path, jobs=2, progress=False))
    for f in ("claims.json", "CHECKLIST.md", "metrics.csv", "provenance.json", "fig-fig7-vs-vllm.png",
              "fig-fig8-vs-sglang.png", "fig-fig9-ttft.png", "fig-alpha.png", "fig-real-mode.png"):
        assert (tmp_path / f).is_file(), f
    m = pd.read_csv(tmp_path / "metrics.csv")
    hit = m[m.experiment == "hitrate"]
    assert set(hit.policy) == {"marconi", "sglang+", "vllm+", "marconi-alpha0"}
    assert hit.token_hit_rate.between(0, 1).all() and (hit.hit_tokens <= hit.prompt_tokens).all()
    # direction: branch-point and leaf checkpoints beat a checkpoint every 32 tokens
    for _, g in hit.groupby(["workload", "cache_gb"]):
        by = g.set_index("policy").token_hit_rate
        assert by["marconi"] > by["vllm+"] and by["sglang+"] > by["vllm+"]
    real = m[m.experiment == "real"].set_index("policy")
    assert (real.identical_fraction == 1.0).all()  # the exactness check, every policy
    assert real.real_hit_rate["marconi"] > real.real_hit_rate["vllm+"]
    claims = {c["id"]: c for c in s.claims}
    assert claims["real-exact"]["passed"] is True
    assert set(claims) == {c.id for c in ARTIFACT.claims}


def _mooncake_lines(n: int) -> list[str]:
    # requests sharing a 3-block prefix (512-token blocks), then their own blocks
    lines = []
    for i in range(n):
        hashes = [0, 1, 2] + [100 + 10 * i + j for j in range(i % 3 + 1)]
        lines.append(json.dumps({"timestamp": 1000 * i, "input_length": 512 * len(hashes) - 7,
                                 "output_length": 5, "hash_ids": hashes}))
    return lines


def test_a_never_seen_mooncake_trace(tmp_path):
    trace = tmp_path / "mine.jsonl"
    trace.write_text("\n".join(_mooncake_lines(12)) + "\n")
    out = tmp_path / "out"
    code = main(ARTIFACT, ["--trace", str(trace), "--out", str(out), "--scale", "smoke", "--quiet",
                           "--jobs", "1", "--experiments", "hitrate", "--no-plots"])
    assert code == 0
    m = pd.read_csv(out / "metrics.csv")
    assert set(m.workload) == {"trace"} and (m.requests == 12).all()
    big = m[m.cache_gb == m.cache_gb.max()].set_index("policy")
    # the second request finds the shared 3 blocks (1,536 tokens) without a state there and
    # checkpoints that branch point; every later one reuses it
    assert big.hit_tokens["marconi"] >= 10 * 1536
    assert big.hit_tokens["vllm+"] >= 11 * 1536
    prov = json.loads((out / "provenance.json").read_text())
    assert any(p.endswith("mine.jsonl") for p in prov["data_files"])


def test_malformed_trace_is_one_line_naming_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = _mooncake_lines(3)
    lines[1] = lines[1].replace('"input_length": ', '"input_length": -')
    bad.write_text("\n".join(lines) + "\n")
    assert main(ARTIFACT, ["--trace", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:2" in err


def _results(rows: list[dict], real_rows: list[dict] | None = None) -> Results:
    frames = {"hitrate": pd.DataFrame(rows)}
    if real_rows is not None:
        frames["real"] = pd.DataFrame(real_rows)
    return Results(frames, RunContext(Scale.SMOKE, 0, out=None))  # type: ignore[arg-type]


def _row(workload, gb, policy, hit, p95=100.0, flops=None):
    return {"workload": workload, "rate": 1.0, "response_s": 0.0, "sessions": 10, "cache_gb": gb,
            "policy": policy, "token_hit_rate": hit, "ttft_p95_ms": p95, "ttft_cpu_p95_s": p95 / 50,
            "flops_saved_fraction": hit if flops is None else flops}


def test_claim_measures_on_hand_made_results():
    rows = []
    for w, gb, m, s, v in (("lmsys", 1, 0.30, 0.28, 0.05), ("lmsys", 5, 0.50, 0.50, 0.25),
                           ("swebench", 40, 0.60, 0.50, 0.20), ("swebench", 100, 0.70, 0.69, 0.60)):
        rows += [_row(w, gb, "marconi", m, p95=40.0), _row(w, gb, "sglang+", s),
                 _row(w, gb, "vllm+", v), _row(w, gb, "marconi-alpha0", m, flops=m - 0.01)]
    r = _results(rows)
    assert mc.share_marconi_at_least_sglang(r) == 1.0
    assert mc.max_ratio_vs_vllm(r) == pytest.approx(6.0)
    # lmsys: 6 / 2 = 3; swebench: 3 / (0.7 / 0.6)
    assert mc.vllm_gap_narrows(r) == pytest.approx((3 + 3 / (0.7 / 0.6)) / 2)
    assert mc.max_p95_cut_vs_vllm(r) == pytest.approx(60.0)
    assert mc.max_cpu_p95_cut_vs_vllm(r) == pytest.approx(60.0)
    # agent gains 10 and 1 points, chat 2 and 0
    assert mc.agentic_gap_minus_chat_gap(r) == pytest.approx(5.5 - 1.0)
    assert mc.small_cache_gap_minus_large(r) == pytest.approx(((2 - 0) + (10 - 1)) / 2)
    assert mc.alpha_tuning_gain(r) == pytest.approx(1.0)
    worse = [dict(x, token_hit_rate=0.1) if x["policy"] == "marconi" else x for x in rows]
    assert mc.share_marconi_at_least_sglang(_results(worse)) == 0.0


def test_real_ordering_agreement_counts_pairs():
    real = [{"policy": "marconi", "real_hit_rate": 0.8, "replay_hit_rate": 0.85, "identical_fraction": 1.0},
            {"policy": "sglang+", "real_hit_rate": 0.7, "replay_hit_rate": 0.86, "identical_fraction": 1.0},
            {"policy": "vllm+", "real_hit_rate": 0.5, "replay_hit_rate": 0.55, "identical_fraction": 0.9}]
    r = _results([], real)
    # marconi > sglang+ in the engine, a tie in the replay: one pair of three disagrees
    assert mc.real_ordering_agreement(r) == pytest.approx(2 / 3)
    assert mc.real_identical(r) == 0.9
