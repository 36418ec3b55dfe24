"""Marconi (MLSys'25): prefix caching for hybrid LLMs, reproduced on a CPU.

Two experiments:

- ``hitrate``: every request stream (LMSys-, ShareGPT-, SWE-bench-like sessions, the Mooncake
  trace, or ``--trace``) replayed through each policy's radix cache at each cache size, with
  the paper's 7B hybrid's FLOP and byte formulas: token hit rate, FLOPs saved, alpha tuning, and
  TTFT from the H100 roofline applied to each prompt's uncached part (Figs. 7, 8, 9);
- ``real``: a tiny hybrid model served by the real engine on this CPU with each policy:
  measured hit rate and TTFT, outputs checked against an uncached run, and the ordering set
  beside the cache replay of the same sequences.

The policies live in :mod:`core.kv.marconi`; the replay in :mod:`core.kv.replay`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from core.artifact import (
    Artifact,
    Claim,
    Experiment,
    Paper,
    Results,
    RunContext,
    Scale,
    TraceOption,
    at_least,
)

from . import hitrate, real
from .plots import comparisons, plot_hitrate, plot_real
from .workloads import check_trace

REAL_SCALE = {
    Scale.SMOKE: {"sessions": 2, "kv_tokens": 1024, "state_slots": 8, "max_seqs": 2},
    Scale.DEFAULT: {"sessions": 6, "kv_tokens": 3072, "state_slots": 12, "max_seqs": 3},
    Scale.FULL: {"sessions": 12, "kv_tokens": 6144, "state_slots": 20, "max_seqs": 4},
}


def real_points(ctx: RunContext) -> list[dict[str, Any]]:
    return [dict(REAL_SCALE[ctx.scale])]


# ---------------------------------------------------------------------------------- measures


def _cmp(r: Results) -> pd.DataFrame:
    return comparisons(r["hitrate"])


def share_marconi_at_least_sglang(r: Results) -> float:
    """Share of configurations where Marconi's token hit rate is at least SGLang+'s (within
    0.5 points, the resolution of a few requests)."""
    gain = _cmp(r)["gain_vs_sglang_pp"]
    return float((gain >= -0.5).mean())


def max_ratio_vs_vllm(r: Results) -> float:
    ratio = _cmp(r)["ratio_vs_vllm"].replace([np.inf, -np.inf], np.nan)
    return float(ratio.max())


def vllm_gap_narrows(r: Results) -> float:
    """Mean over (workload, rate) of Marconi/vLLM+ at the smallest cache over the same at the
    largest: > 1 when the gap narrows as the cache grows."""
    c = _cmp(r)
    vals = []
    for _, g in c.groupby(["workload", "rate", "response_s"]):
        g = g.sort_values("cache_gb")
        small, large = g["ratio_vs_vllm"].iloc[0], g["ratio_vs_vllm"].iloc[-1]
        if len(g) > 1 and math.isfinite(small) and math.isfinite(large) and large > 0:
            vals.append(small / large)
    return float(np.mean(vals)) if vals else float("nan")


def max_p95_cut_vs_vllm(r: Results) -> float:
    return float(_cmp(r)["p95_cut_vs_vllm_pct"].max())


def max_cpu_p95_cut_vs_vllm(r: Results) -> float:
    return float(_cmp(r)["cpu_p95_cut_vs_vllm_pct"].max())


def agentic_gap_minus_chat_gap(r: Results) -> float:
    """Marconi's mean hit-rate gain over SGLang+ on SWE-bench-like sessions minus its mean gain
    on the chat workloads (points)."""
    c = _cmp(r)
    agent = c[c["workload"] == "swebench"]["gain_vs_sglang_pp"]
    chat = c[c["workload"].isin(["lmsys", "sharegpt"])]["gain_vs_sglang_pp"]
    if agent.empty or chat.empty:
        return float("nan")
    return float(agent.mean() - chat.mean())


def small_cache_gap_minus_large(r: Results) -> float:
    """Mean over (workload, rate) of Marconi's gain over SGLang+ at the smallest cache minus at
    the largest (points)."""
    c = _cmp(r)
    vals = []
    for _, g in c.groupby(["workload", "rate", "response_s"]):
        g = g.sort_values("cache_gb")
        if len(g) > 1:
            vals.append(g["gain_vs_sglang_pp"].iloc[0] - g["gain_vs_sglang_pp"].iloc[-1])
    return float(np.mean(vals)) if vals else float("nan")


def alpha_tuning_gain(r: Results) -> float:
    """Mean FLOPs-saved gain (points) of the tuned alpha over alpha = 0."""
    c = _cmp(r)
    return float(c["alpha_gain_pp"].mean()) if "alpha_gain_pp" in c else float("nan")


def real_identical(r: Results) -> float:
    return float(r["real"]["identical_fraction"].min())


def _order_agrees(a: float, b: float, x: float, y: float, tie: float = 0.01) -> bool:
    """Whether (a vs b) and (x vs y) are ordered alike; differences under ``tie`` are ties."""
    s1 = 0 if abs(a - b) < tie else int(np.sign(a - b))
    s2 = 0 if abs(x - y) < tie else int(np.sign(x - y))
    return s1 == s2


def real_ordering_agreement(r: Results) -> float:
    """Share of policy pairs the real engine and the cache replay order alike."""
    f = r["real"].set_index("policy")
    pairs = [("marconi", "sglang+"), ("marconi", "vllm+"), ("sglang+", "vllm+")]
    agree = [
        _order_agrees(f.at[a, "real_hit_rate"], f.at[b, "real_hit_rate"],
                      f.at[a, "replay_hit_rate"], f.at[b, "replay_hit_rate"])
        for a, b in pairs
    ]  # fmt: skip
    return float(np.mean(agree))


SIM_NOTE = ("Cache-level replay of synthetic sessions with the statistics of the authors' traces "
            "(100 sessions per trace, as theirs; fewer SWE-bench sessions at default scale), "
            "not the LMSys/ShareGPT/SWE-bench traces themselves.")

ARTIFACT = Artifact(
    name="marconi",
    paper=Paper(
        title="Marconi: Prefix Caching for the Era of Hybrid LLMs",
        venue="MLSys'25",
        authors="Rui Pan et al.",
        code="https://github.com/ruipeterpan/marconi",
    ),
    summary="Admission (leaf + branch-point SSM checkpoints) and FLOP-aware eviction for hybrid "
    "attention/SSM models, against vLLM+ and SGLang+: token hit rate, FLOPs saved and TTFT by "
    "replay, and a tiny hybrid model in the real engine.",
    experiments=[
        Experiment("hitrate", "token hit rate, FLOPs saved, alpha and H100 TTFT of each policy "
                   "over cache sizes and session rates (Figs. 7-9)", hitrate.points,
                   hitrate.run_point, plot_hitrate),
        Experiment("real", "a tiny hybrid model served by the engine on this CPU with each "
                   "policy; outputs checked against an uncached run", real_points,
                   real.run_point, plot_real),
    ],
    claims=[
        Claim(
            "marconi-ge-sglang",
            "Marconi's token hit rate is at least SGLang+'s on (nearly) every configuration.",
            "higher on nearly all configurations (Fig. 8)",
            measure=share_marconi_at_least_sglang, expect=at_least(0.9), unit="of configs",
            experiments=("hitrate",), note=SIM_NOTE,
        ),
        Claim(
            "marconi-vs-vllm",
            "Marconi's token hit rate is far above vLLM+'s: up to 34.4x.",
            "up to 34.4x (Fig. 7)",
            measure=max_ratio_vs_vllm, expect=at_least(3.0), unit="x",
            experiments=("hitrate",),
            expected=">= 3x on some configuration (the note: several-fold at small caches)",
            note=SIM_NOTE,
        ),
        Claim(
            "vllm-gap-narrows",
            "The gap to vLLM+ is largest at small caches and narrows as the cache grows.",
            "Fig. 7 trend",
            measure=vllm_gap_narrows, expect=at_least(1.0), unit="x (small / large cache)",
            experiments=("hitrate",), note=SIM_NOTE,
        ),
        Claim(
            "ttft-p95",
            "Marconi cuts P95 TTFT by up to 71.1% (617 ms).",
            "up to 71.1% (Fig. 9)",
            measure=max_p95_cut_vs_vllm, expect=at_least(30.0), unit="% vs vLLM+",
            experiments=("hitrate",),
            note="TTFT from the H100 roofline cost model of the 7B hybrid applied to each "
            "prompt's uncached part (the paper applies a TTFT curve measured on Jamba-1.5-Mini "
            "the same way); reduction against vLLM+, the larger of the paper's two baselines.",
        ),
        Claim(
            "ttft-p95-cpu",
            "Marconi cuts P95 TTFT by up to 71.1% (617 ms).",
            "up to 71.1% (Fig. 9)",
            measure=max_cpu_p95_cut_vs_vllm, expect=at_least(30.0), unit="% vs vLLM+",
            experiments=("hitrate",),
            note="The same uncached parts timed by this CPU's profiled cost model of the real "
            "mode's tiny hybrid (engine steps measured by scripts.calibrate, chunks of 512 "
            "tokens; prompts beyond the profile's 1.5K-token context are extrapolated).",
        ),
        Claim(
            "gap-largest-agentic",
            "Marconi's gain over SGLang+ is largest on long agentic (SWE-bench) sessions.",
            "largest on SWE-bench (Fig. 8)",
            measure=agentic_gap_minus_chat_gap, expect=at_least(0.0),
            unit="points (agent gain - chat gain)", experiments=("hitrate",), note=SIM_NOTE,
        ),
        Claim(
            "gap-largest-small-cache",
            "Marconi's gain over SGLang+ is largest at small caches.",
            "largest at small caches (Fig. 8)",
            measure=small_cache_gap_minus_large, expect=at_least(0.0),
            unit="points (small - large cache)", experiments=("hitrate",), note=SIM_NOTE,
        ),
        Claim(
            "alpha-tuning-helps",
            "Tuning alpha once by replay saves more FLOPs than recency alone (alpha = 0).",
            "tuned alpha >= alpha 0 (Sec. 4)",
            measure=alpha_tuning_gain, expect=at_least(0.0), unit="points of FLOPs saved",
            experiments=("hitrate",), note=SIM_NOTE,
        ),
        Claim(
            "real-exact",
            "A cache hit gives exactly the tokens of an uncached run (hybrid model, greedy).",
            "(correctness, implied)",
            measure=real_identical, expect=at_least(1.0), unit="of requests",
            experiments=("real",),
            note="Every turn of every session, each policy, against prefix caching off.",
        ),
        Claim(
            "real-ordering",
            "The real engine orders the policies' hit rates as the cache replay does.",
            "(this artifact's check of its simulator)",
            measure=real_ordering_agreement, expect=at_least(1.0), unit="of policy pairs",
            experiments=("real",),
            note="Tiny hybrid model on this CPU, alpha fixed at 0 in both; the replay uses one "
            "byte budget equal to the engine's KV and SSM-slot pools.",
        ),
    ],
    trace=TraceOption(
        help="a trace in the Marconi JSONL schema, the Mooncake schema or Servelab JSONL to "
        "replay instead of the built-in workloads (outputs without token ids get random ones)",
        check=check_trace,
    ),
)
