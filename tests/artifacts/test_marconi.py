"""The Marconi artifact: smoke scale end to end, a never-seen Mooncake trace, bad input, and the
claim measures on hand-made results."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from artifacts.marconi import artifact as mc
from artifacts.marconi import hitrate
from artifacts.marconi import real as rr
from artifacts.marconi.artifact import ARTIFACT
from artifacts.marconi.plots import plot_hitrate, plot_real
from artifacts.marconi.replay import replay_requests
from artifacts.marconi.workloads import with_outputs
from core.artifact import NotApplicable, Results, RunContext, RunOptions, Scale, main, run_artifact
from core.artifact.runner import build_points
from core.data import sha256_file
from core.metrics import rotated_order
from core.sim import profiled
from core.workload import Workload
from core.workload.mooncake import load_mooncake


def test_smoke_scale_end_to_end(tmp_path):
    s = run_artifact(ARTIFACT, RunOptions(scale=Scale.SMOKE, out=tmp_path, jobs=2, progress=False))
    for f in (
        "claims.json",
        "CHECKLIST.md",
        "metrics.csv",
        "provenance.json",
        "fig-fig7-vs-vllm.png",
        "fig-fig8-vs-sglang.png",
        "fig-fig9-ttft.png",
        "fig-alpha.png",
        "fig-real-mode.png",
    ):
        assert (tmp_path / f).is_file(), f
    m = pd.read_csv(tmp_path / "metrics.csv")
    hit = m[m.experiment == "hitrate"]
    assert set(hit.policy) == {"marconi", "sglang+", "vllm+", "marconi-alpha0"}
    assert hit.token_hit_rate.between(0, 1).all() and (hit.hit_tokens <= hit.prompt_tokens).all()
    # direction: branch-point and leaf checkpoints beat a checkpoint every 32 tokens
    for _, g in hit.groupby(["workload", "cache_gb"]):
        by = g.set_index("policy").token_hit_rate
        assert by["marconi"] > by["vllm+"] and by["sglang+"] > by["vllm+"]
    real = m[m.experiment == "real"]
    rounds = mc.REAL_SCALE[Scale.SMOKE]["rounds"]
    # every policy in every round, in the rotated order, on the CPU clock
    assert list(zip(real["round"], real.policy, strict=True)) == rotated_order(rr.POLICIES, rounds)
    assert (real.clock == rr.CLOCK).all() and (real.clock_s > 0).all()
    assert (real.identical_fraction == 1.0).all()  # the exactness check, every policy and round
    med = real.groupby("policy").real_hit_rate.median()
    assert med["marconi"] > med["vllm+"]
    claims = {c["id"]: c for c in s.claims}
    assert claims["real-exact"]["passed"] is True
    assert set(claims) == {c.id for c in ARTIFACT.claims}
    note = claims["real-ordering"]["note"]
    assert "CPU clock" in note and f"{rounds} rounds" in note and "median (min-max)" in note


def _mooncake_lines(n: int) -> list[str]:
    # requests sharing a 3-block prefix (512-token blocks), then their own blocks
    lines = []
    for i in range(n):
        hashes = [0, 1, 2] + [100 + 10 * i + j for j in range(i % 3 + 1)]
        lines.append(
            json.dumps(
                {
                    "timestamp": 1000 * i,
                    "input_length": 512 * len(hashes) - 7,
                    "output_length": 5,
                    "hash_ids": hashes,
                }
            )
        )
    return lines


def test_a_never_seen_mooncake_trace(tmp_path):
    trace = tmp_path / "mine.jsonl"
    trace.write_text("\n".join(_mooncake_lines(12)) + "\n")
    out = tmp_path / "out"
    code = main(
        ARTIFACT,
        [
            "--trace",
            str(trace),
            "--out",
            str(out),
            "--scale",
            "smoke",
            "--quiet",
            "--jobs",
            "1",
            "--experiments",
            "hitrate",
            "--no-plots",
        ],
    )
    assert code == 0
    m = pd.read_csv(out / "metrics.csv")
    assert set(m.workload) == {"trace"} and (m.requests == 12).all()
    assert (m.stream_sessions == 0).all() and (m.stream_read == 12).all()
    big = m[m.cache_gb == m.cache_gb.max()].set_index("policy")
    # the second request finds the shared 3 blocks (1,536 tokens) without a state there and
    # checkpoints that branch point; every later one reuses it
    assert big.hit_tokens["marconi"] >= 10 * 1536
    assert big.hit_tokens["vllm+"] >= 11 * 1536
    prov = json.loads((out / "provenance.json").read_text())
    assert any(p.endswith("mine.jsonl") for p in prov["data_files"])
    # the profile that timed the CPU TTFT is in provenance and in every point's config
    profile = hitrate.cpu_profile()
    assert (m.cpu_profile == profile["cpu_profile"]).all()
    assert (m.cpu_profile_sha256 == profile["cpu_profile_sha256"]).all()
    assert any(p.endswith(Path(profile["cpu_profile"]).name) for p in prov["data_files"])

    # what a --trace run reports: the agent-vs-chat claim does not exist here (n/a, with the
    # reason), and no note describes the generated sessions a trace run did not replay
    claims = {c["id"]: c for c in json.loads((out / "claims.json").read_text())}
    agentic = claims["gap-largest-agentic"]
    assert agentic["status"] == "n/a" and agentic["passed"] is None
    assert "mine.jsonl" in agentic["reason"] and "chat" in agentic["reason"]
    for c in claims.values():
        assert "synthetic" not in c["note"].lower(), c["id"]
        assert "statistics of the authors' traces" not in c["note"], c["id"]
    for cid in ("marconi-ge-sglang", "marconi-vs-vllm", "ttft-p95", "ttft-p95-cpu"):
        assert "mine.jsonl" in claims[cid]["note"] and "12 requests" in claims[cid]["note"], cid
    assert "no sessions" in claims["marconi-vs-vllm"]["note"]
    cpu = claims["ttft-p95-cpu"]["note"]
    assert Path(profile["cpu_profile"]).name in cpu and "host" in cpu and "this CPU's" not in cpu
    checklist = (out / "CHECKLIST.md").read_text()
    assert "1 not applicable to this run" in checklist and "mine.jsonl" in checklist

    # the figures say the same: titles name the trace, never generated sessions
    frame = m[m.experiment == "hitrate"].drop(columns="experiment")
    ctx = RunContext(Scale.SMOKE, 0, out=out, trace=trace)
    figs = plot_hitrate(frame, ctx)
    try:
        for name, fig in figs.items():
            title = fig._suptitle.get_text()
            assert "mine.jsonl" in title and "synthetic" not in title.lower(), name
        cpu_label = figs["fig9-ttft"].axes[len(set(frame.workload))].get_ylabel()
        assert Path(profile["cpu_profile"]).name in cpu_label and "this CPU" not in cpu_label
    finally:
        for fig in figs.values():
            plt.close(fig)


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


def _row(workload, gb, policy, hit, p95=100.0, flops=None, status=None):
    if status is None:
        status = "tuned" if policy == "marconi" else "fixed"
    return {
        "workload": workload,
        "rate": 1.0,
        "response_s": 0.0,
        "sessions": 10,
        "cache_gb": gb,
        "policy": policy,
        "token_hit_rate": hit,
        "ttft_p95_ms": p95,
        "ttft_cpu_p95_s": p95 / 50,
        "flops_saved_fraction": hit if flops is None else flops,
        "alpha_status": status,
        "tuned_alpha": 0.5 if status == "tuned" else float("nan"),
        "n0": 10,
        "requests": 100,
        "tuning_window": 50 if policy == "marconi" else -1,
    }


def test_claim_measures_on_hand_made_results():
    rows = []
    for w, gb, m, s, v in (
        ("lmsys", 1, 0.30, 0.28, 0.05),
        ("lmsys", 5, 0.50, 0.50, 0.25),
        ("swebench", 40, 0.60, 0.50, 0.20),
        ("swebench", 100, 0.70, 0.69, 0.60),
    ):
        rows += [
            _row(w, gb, "marconi", m, p95=40.0),
            _row(w, gb, "sglang+", s),
            _row(w, gb, "vllm+", v),
            _row(w, gb, "marconi-alpha0", m, flops=m - 0.01),
        ]
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


def test_alpha_gain_averages_the_tuned_configurations_and_is_na_without_any():
    rows = []
    for gb, status, gain in (
        (1, "tuned", 0.02),
        (2, "window not over", 0.0),
        (3, "no eviction", 0.0),
    ):
        rows += [
            _row("lmsys", gb, "marconi", 0.5, flops=0.3 + gain, status=status),
            _row("lmsys", gb, "sglang+", 0.4),
            _row("lmsys", gb, "vllm+", 0.1),
            _row("lmsys", gb, "marconi-alpha0", 0.5, flops=0.3),
        ]
    # the untuned configurations ran alpha = 0 throughout: they are not measurements of tuning
    assert mc.alpha_tuning_gain(_results(rows)) == pytest.approx(2.0)
    untuned = [
        dict(x, alpha_status="window not over") if x["policy"] == "marconi" else x for x in rows
    ]
    with pytest.raises(NotApplicable, match="none of the 3 configurations"):
        mc.alpha_tuning_gain(_results(untuned))
    # an agent-vs-chat comparison needs both kinds of sessions
    with pytest.raises(NotApplicable, match="no SWE-bench-like agent sessions"):
        mc.agentic_gap_minus_chat_gap(_results(rows))
    # a failure stays a failure: a measurable quantity below the expectation is not n/a
    worse = [dict(x, flops_saved_fraction=0.1) if x["policy"] == "marconi" else x for x in rows]
    assert mc.alpha_tuning_gain(_results(worse)) < 0


def test_pairwise_reuse_pays_off_for_vllm_plus_at_once_and_for_marconi_from_the_third_request(
    tmp_path,
):
    """Why Marconi trails vLLM+ on the Mooncake trace: a prefix shared by two requests is a hit
    for vLLM+ (a state every 32 tokens) but not for Marconi, whose state at the branch point is
    taken by the second request's prefill and pays off from the third request on."""
    lines = [
        json.dumps(
            {
                "timestamp": 0,
                "input_length": 4 * 512,
                "output_length": 4,
                "hash_ids": [0, 1, 2, 10 + i],
            }
        )
        for i in range(3)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    wl = load_mooncake(path)
    reqs = with_outputs(Workload(wl.name, wl.requests, [], {}), seed=0).requests
    hits = {
        p: [o.hit_tokens for o in replay_requests(reqs, capacity_bytes=2**40, policy=p).requests]
        for p in ("marconi", "sglang+", "vllm+")
    }
    assert hits["vllm+"] == [0, 1536, 1536]
    assert hits["marconi"] == hits["sglang+"] == [0, 0, 1536]


def test_points_carry_the_profile_so_a_new_profile_recomputes_them(tmp_path, monkeypatch):
    ctx = RunContext(Scale.SMOKE, 0, out=tmp_path)
    chosen = profiled.cpu_profile_path(
        hitrate.CPU_PROFILE_MODEL, threads=1, fallback=hitrate.CPU_PROFILE_FALLBACK
    )
    before = build_points(ARTIFACT, ctx, ["hitrate"])
    assert {p.config["cpu_profile_sha256"] for p in before} == {sha256_file(chosen)}
    # a recalibrated profile (same model, new times) gives new point hashes
    doc = json.loads(chosen.read_text())
    doc["created"] = "2099-01-01T00:00:00Z"
    mine = tmp_path / chosen.name
    mine.write_text(json.dumps(doc))
    monkeypatch.setattr(profiled, "cpu_profile_path", lambda *a, **k: mine)
    after = build_points(ARTIFACT, ctx, ["hitrate"])
    assert {p.config["cpu_profile"] for p in after} == {str(mine)}
    assert not {p.hash for p in before} & {p.hash for p in after}
    # a profile of another model is refused with the file named
    doc["model"]["config"]["hidden_size"] = 256
    mine.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=f"{mine}.*hidden_size"):
        build_points(ARTIFACT, ctx, ["hitrate"])


def test_real_ordering_agreement_counts_pairs():
    real = [
        {
            "policy": "marconi",
            "real_hit_rate": 0.8,
            "replay_hit_rate": 0.85,
            "identical_fraction": 1.0,
        },
        {
            "policy": "sglang+",
            "real_hit_rate": 0.7,
            "replay_hit_rate": 0.86,
            "identical_fraction": 1.0,
        },
        {
            "policy": "vllm+",
            "real_hit_rate": 0.5,
            "replay_hit_rate": 0.55,
            "identical_fraction": 0.9,
        },
    ]
    r = _results([], real)
    # marconi > sglang+ in the engine, a tie in the replay: one pair of three disagrees
    assert mc.real_ordering_agreement(r) == pytest.approx(2 / 3)
    assert mc.real_identical(r) == 0.9


def _real_round(rnd, hits, replay=(0.86, 0.85, 0.55), same=1.0):
    order = [p for r, p in rotated_order(rr.POLICIES, rnd + 1) if r == rnd]
    return [
        {
            "policy": p,
            "round": rnd,
            "position": 3 * rnd + k,
            "sessions": 2,
            "requests": 10,
            "real_hit_rate": hits[rr.POLICIES.index(p)],
            "replay_hit_rate": replay[rr.POLICIES.index(p)],
            "ttft_mean_ms": 50.0 + k,
            "ttft_p95_ms": 90.0,
            "identical_fraction": same,
        }
        for k, p in enumerate(order)
    ]


def test_real_ordering_is_decided_on_the_medians_over_rounds():
    # round 1's batching put SGLang+ 2 points above Marconi: its mean would tie the two, the
    # median keeps Marconi ahead as in the replay
    rows = (
        _real_round(0, (0.86, 0.83, 0.50))
        + _real_round(1, (0.80, 0.82, 0.49))
        + _real_round(2, (0.85, 0.83, 0.51))
    )
    r = _results([], rows)
    assert mc.real_ordering_agreement(r) == 1.0
    mean = pd.DataFrame(rows).groupby("policy").real_hit_rate.mean()
    assert abs(mean["marconi"] - mean["sglang+"]) < 0.01  # a tie: the mean would disagree
    one = _results([], _real_round(1, (0.80, 0.82, 0.49)))
    assert mc.real_ordering_agreement(one) == pytest.approx(2 / 3)  # that round alone
    # the exactness check reads every round
    bad = rows[:-1] + [dict(rows[-1], identical_fraction=0.9)]
    assert (
        mc.real_identical(_results([], rows)) == 1.0 and mc.real_identical(_results([], bad)) == 0.9
    )
    # the note gives the rounds, their order, the clock and each policy's median (min-max)
    note = mc.real_ordering_note(r)
    assert "3 rounds" in note and "CPU clock" in note
    assert "marconi, sglang+, vllm+ | sglang+, vllm+, marconi | vllm+, marconi, sglang+" in note
    assert "marconi 0.85 (0.8-0.86) against 0.86 (0.86-0.86)" in note
    assert "ms" in note and "TTFT" in note


def test_the_real_figure_has_spread_bars_and_names_the_clock():
    rows = (
        _real_round(0, (0.86, 0.83, 0.50))
        + _real_round(1, (0.80, 0.82, 0.49))
        + _real_round(2, (0.85, 0.83, 0.51))
    )
    figs = plot_real(pd.DataFrame(rows), RunContext(Scale.SMOKE, 0, out=None))
    try:
        fig = figs["real-mode"]
        hit_ax = fig.axes[0]
        heights = sorted(round(b.get_height(), 6) for b in hit_ax.patches)
        assert 0.85 in heights and 0.83 in heights and 0.5 in heights  # engine medians
        text = fig._suptitle.get_text() + " ".join(t.get_text() for t in fig.texts)
        assert "CPU clock" in text and "3 interleaved rounds" in text and "median" in text
        assert "CPU clock" in fig.axes[1].get_ylabel()
    finally:
        for f in figs.values():
            plt.close(f)
