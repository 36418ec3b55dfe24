"""Marconi (MLSys'25): prefix caching for hybrid LLMs, reproduced on a CPU.

Two experiments:

- ``hitrate``: every request stream (LMSys-, ShareGPT-, SWE-bench-like sessions, the Mooncake
  trace, or ``--trace``) replayed through each policy's radix cache at each cache size, with
  the paper's 7B hybrid's FLOP and byte formulas: token hit rate, FLOPs saved, alpha tuning, and
  TTFT applied to each prompt's uncached part, from the H100 roofline of the 7B hybrid and from
  a step profile of the real mode's tiny hybrid on a CPU (Figs. 7, 8, 9);
- ``real``: a tiny hybrid model served by the real engine on this CPU with each policy, timed
  on the engine thread's CPU clock in interleaved rounds: measured hit rate and TTFT, outputs
  checked against an uncached run, and the ordering of the per-policy medians set beside the
  cache replay of the same sequences.

The policies live in :mod:`.policies`, the replay in :mod:`.replay`. Claim notes
and figure titles are built from the run's own rows (:mod:`.describe`); a measure raises
:class:`~core.artifact.NotApplicable` only when its quantity does not exist in the run.
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
    NotApplicable,
    Paper,
    Results,
    RunContext,
    Scale,
    TraceOption,
    at_least,
)
from core.sim.profiled import cpu_model_name

from . import hitrate, real
from .describe import (
    NAMES,
    profile_words,
    real_hit_words,
    real_run_words,
    stream_title,
    stream_words,
    tuning_words,
)
from .plots import KEY, comparisons, plot_hitrate, plot_real, real_summary
from .workloads import check_trace

REAL_SCALE = {
    Scale.SMOKE: {"sessions": 2, "kv_tokens": 1024, "state_slots": 8, "max_seqs": 2, "rounds": 2},
    Scale.DEFAULT: {
        "sessions": 6,
        "kv_tokens": 3072,
        "state_slots": 12,
        "max_seqs": 3,
        "rounds": 3,
    },
    Scale.FULL: {"sessions": 12, "kv_tokens": 6144, "state_slots": 20, "max_seqs": 4, "rounds": 5},
}
"""Per scale: the sessions, the engine's pools, and the interleaved rounds of the policies."""


def real_points(ctx: RunContext) -> list[dict[str, Any]]:
    return [{**REAL_SCALE[ctx.scale], "clock": real.CLOCK}]


# ---------------------------------------------------------------------------------- measures
#
# A measure raises NotApplicable only when the quantity does not exist in this run (a --trace
# run has no agent sessions to set beside chat sessions; no configuration finished tuning
# alpha); a quantity that exists but misses the expectation is a failure, never n/a.


def _cmp(r: Results) -> pd.DataFrame:
    return comparisons(r["hitrate"])


def _what_ran(r: Results) -> str:
    """The replayed streams in a few words, for n/a reasons."""
    if r.ctx.trace is not None:
        return f"only the trace {r.ctx.trace.name}"
    names = [NAMES.get(w, w) for w in dict.fromkeys(r["hitrate"]["workload"])]
    return "only " + ", ".join(names)


def share_marconi_at_least_sglang(r: Results) -> float:
    """Share of configurations where Marconi's token hit rate is at least SGLang+'s (within
    0.5 points, the resolution of a few requests)."""
    gain = _cmp(r)["gain_vs_sglang_pp"]
    return float((gain >= -0.5).mean())


def max_ratio_vs_vllm(r: Results) -> float:
    """The largest Marconi/vLLM+ hit-rate ratio; n/a when vLLM+ hit nothing anywhere (the ratio
    does not exist; the reason gives Marconi's hit rates)."""
    c = _cmp(r)
    ratio = c["ratio_vs_vllm"].replace([np.inf, -np.inf], np.nan)
    if ratio.notna().any():
        return float(ratio.max())
    hit = r["hitrate"]
    best = hit[hit["policy"] == "marconi"]["token_hit_rate"].max()
    raise NotApplicable(
        f"vLLM+ hit no token on any configuration, so Marconi/vLLM+ has no value "
        f"(Marconi's best hit rate: {100 * best:.2f}%)"
    )


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
    if not vals:
        raise NotApplicable(
            "no stream has two cache sizes with a finite Marconi/vLLM+ ratio at "
            "both ends (vLLM+ hit nothing at one of them, or one size only)"
        )
    return float(np.mean(vals))


def max_p95_cut_vs_vllm(r: Results) -> float:
    return float(_cmp(r)["p95_cut_vs_vllm_pct"].max())


def max_cpu_p95_cut_vs_vllm(r: Results) -> float:
    return float(_cmp(r)["cpu_p95_cut_vs_vllm_pct"].max())


def agentic_gap_minus_chat_gap(r: Results) -> float:
    """Marconi's mean hit-rate gain over SGLang+ on SWE-bench-like sessions minus its mean gain
    on the chat workloads (points); n/a when the run lacks either kind."""
    c = _cmp(r)
    agent = c[c["workload"] == "swebench"]["gain_vs_sglang_pp"]
    chat = c[c["workload"].isin(["lmsys", "sharegpt"])]["gain_vs_sglang_pp"]
    if agent.empty or chat.empty:
        missing = " and no ".join(
            x
            for x, e in (
                ("SWE-bench-like agent sessions", agent.empty),
                ("LMSys-/ShareGPT-like chat sessions", chat.empty),
            )
            if e
        )
        raise NotApplicable(
            f"the claim compares agent sessions with chat sessions; this run "
            f"replayed {_what_ran(r)}: it has no {missing} to compare"
        )
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
    if not vals:
        raise NotApplicable("no stream was replayed at more than one cache size")
    return float(np.mean(vals))


def alpha_tuning_gain(r: Results) -> float:
    """Mean FLOPs-saved gain (points) of the tuned alpha over alpha = 0, over the configurations
    where tuning finished (elsewhere Marconi ran with alpha = 0 throughout, the same policy as
    the baseline: a gain of 0 by construction, not a measurement); n/a when none finished."""
    c = _cmp(r)
    hit = r["hitrate"]
    m = hit[hit["policy"] == "marconi"]
    if "alpha_status" in m:
        tuned = m[m["alpha_status"] == "tuned"][KEY]
    else:  # rows of a run that did not record why
        tuned = m[m["tuned_alpha"].notna()][KEY]
    if tuned.empty:
        raise NotApplicable(
            f"alpha tuning finished on none of the {len(m)} configurations ({tuning_words(hit)})"
        )
    return float(c.merge(tuned, on=KEY)["alpha_gain_pp"].mean())


def real_identical(r: Results) -> float:
    """The smallest share of turns whose tokens equal the uncached run's, over every policy
    and round."""
    return float(r["real"]["identical_fraction"].min())


def _order_agrees(a: float, b: float, x: float, y: float, tie: float = 0.01) -> bool:
    """Whether (a vs b) and (x vs y) are ordered alike; differences under ``tie`` are ties."""
    s1 = 0 if abs(a - b) < tie else int(np.sign(a - b))
    s2 = 0 if abs(x - y) < tie else int(np.sign(x - y))
    return s1 == s2


def real_ordering_agreement(r: Results) -> float:
    """Share of policy pairs the real engine and the cache replay order alike, each policy's
    hit rates taken as their medians over its rounds (one round's batching moves the engine's
    by a point or two)."""
    m = real_summary(r["real"]).per_key
    pairs = [("marconi", "sglang+"), ("marconi", "vllm+"), ("sglang+", "vllm+")]
    agree = [
        _order_agrees(
            m.at[a, "real_hit_rate_median"],
            m.at[b, "real_hit_rate_median"],
            m.at[a, "replay_hit_rate_median"],
            m.at[b, "replay_hit_rate_median"],
        )
        for a, b in pairs
    ]
    return float(np.mean(agree))


# ------------------------------------------------------------------------------------- notes
# Each note is built from the run's rows and context (describe.py), so it names what was
# replayed (the --trace file and its size, or the generated sessions) and which profile timed
# the CPU TTFT.


def _hit(r: Results) -> pd.DataFrame:
    return r["hitrate"] if "hitrate" in r else pd.DataFrame()


def sim_note(r: Results) -> str:
    frame = _hit(r)
    return stream_words(frame, r.ctx) if not frame.empty else "Cache-level replay (not run)."


def _replayed(r: Results) -> str:
    frame = _hit(r)
    return f" Replayed: {stream_title(frame, r.ctx)}." if not frame.empty else ""


def ttft_note(r: Results) -> str:
    return (
        "TTFT from the H100 roofline cost model of the 7B hybrid applied to each prompt's "
        "uncached part (the paper applies a TTFT curve measured on Jamba-1.5-Mini the same "
        "way); reduction against vLLM+, the larger of the paper's two baselines." + _replayed(r)
    )


def ttft_cpu_note(r: Results) -> str:
    frame = _hit(r)
    if frame.empty:
        return "(hit-rate replay not run)"
    beyond = 100 * frame["ttft_cpu_beyond_profile"].max()
    return (
        "The same uncached parts timed by a step profile of the real mode's tiny hybrid, "
        f"prefilled in chunks of the profile's token budget; {profile_words(frame)}. "
        "Prompts longer than the profile's grid (its largest context plus its largest chunk) "
        f"are extrapolated along the context: up to {beyond:.0f}% of a configuration's "
        "prompts." + _replayed(r)
    )


def alpha_note(r: Results) -> str:
    frame = _hit(r)
    if frame.empty:
        return sim_note(r)
    return (
        f"Averaged over the configurations that tuned alpha: {tuning_words(frame)}. {sim_note(r)}"
    )


def _real_words(r: Results) -> str:
    if "real" not in r:
        return "the real mode (not run)"
    return real_run_words(r["real"], cpu_model_name())


def real_exact_note(r: Results) -> str:
    return (
        f"Every turn of every session, each policy, in every round, against one run with "
        f"prefix caching off: {_real_words(r)}."
    )


def real_ordering_note(r: Results) -> str:
    words = _real_words(r)
    if "real" not in r:
        return words
    return (
        f"{words[0].upper()}{words[1:]}; alpha fixed at 0 in both; the replay uses one byte "
        "budget equal to the engine's KV and SSM-slot pools. Which turns share a batch "
        "decides what can be cached, so each policy's hit rates are read as their medians "
        "over its rounds; differences under 1 point count as ties. "
        f"{real_hit_words(r['real'])}"
    )


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
        Experiment(
            "hitrate",
            "token hit rate, FLOPs saved, alpha, and TTFT (H100 roofline and a "
            "CPU step profile) of each policy over cache sizes and session rates "
            "(Figs. 7-9)",
            hitrate.points,
            hitrate.run_point,
            plot_hitrate,
        ),
        Experiment(
            "real",
            "a tiny hybrid model served by the engine on this CPU with each "
            "policy in interleaved rounds, on the engine thread's CPU clock; outputs "
            "checked against an uncached run",
            real_points,
            real.run_point,
            plot_real,
        ),
    ],
    claims=[
        Claim(
            "marconi-ge-sglang",
            "Marconi's token hit rate is at least SGLang+'s on (nearly) every configuration.",
            "higher on nearly all configurations (Fig. 8)",
            measure=share_marconi_at_least_sglang,
            expect=at_least(0.9),
            unit="of configs",
            experiments=("hitrate",),
            note=sim_note,
        ),
        Claim(
            "marconi-vs-vllm",
            "Marconi's token hit rate is far above vLLM+'s: up to 34.4x.",
            "up to 34.4x (Fig. 7)",
            measure=max_ratio_vs_vllm,
            expect=at_least(3.0),
            unit="x",
            experiments=("hitrate",),
            expected=">= 3x on some configuration (the note: several-fold at small caches)",
            note=sim_note,
        ),
        Claim(
            "vllm-gap-narrows",
            "The gap to vLLM+ is largest at small caches and narrows as the cache grows.",
            "Fig. 7 trend",
            measure=vllm_gap_narrows,
            expect=at_least(1.0),
            unit="x (small / large cache)",
            experiments=("hitrate",),
            note=sim_note,
        ),
        Claim(
            "ttft-p95",
            "Marconi cuts P95 TTFT by up to 71.1% (617 ms).",
            "up to 71.1% (Fig. 9)",
            measure=max_p95_cut_vs_vllm,
            expect=at_least(30.0),
            unit="% vs vLLM+",
            experiments=("hitrate",),
            note=ttft_note,
        ),
        Claim(
            "ttft-p95-cpu",
            "Marconi cuts P95 TTFT by up to 71.1% (617 ms).",
            "up to 71.1% (Fig. 9)",
            measure=max_cpu_p95_cut_vs_vllm,
            expect=at_least(30.0),
            unit="% vs vLLM+",
            experiments=("hitrate",),
            note=ttft_cpu_note,
        ),
        Claim(
            "gap-largest-agentic",
            "Marconi's gain over SGLang+ is largest on long agentic (SWE-bench) sessions.",
            "largest on SWE-bench (Fig. 8)",
            measure=agentic_gap_minus_chat_gap,
            expect=at_least(0.0),
            unit="points (agent gain - chat gain)",
            experiments=("hitrate",),
            note=sim_note,
        ),
        Claim(
            "gap-largest-small-cache",
            "Marconi's gain over SGLang+ is largest at small caches.",
            "largest at small caches (Fig. 8)",
            measure=small_cache_gap_minus_large,
            expect=at_least(0.0),
            unit="points (small - large cache)",
            experiments=("hitrate",),
            note=sim_note,
        ),
        Claim(
            "alpha-tuning-helps",
            "Tuning alpha once by replay saves more FLOPs than recency alone (alpha = 0).",
            "tuned alpha >= alpha 0 (Sec. 4)",
            measure=alpha_tuning_gain,
            expect=at_least(0.0),
            unit="points of FLOPs saved",
            experiments=("hitrate",),
            note=alpha_note,
        ),
        Claim(
            "real-exact",
            "A cache hit gives exactly the tokens of an uncached run (hybrid model, greedy).",
            "(correctness, implied)",
            measure=real_identical,
            expect=at_least(1.0),
            unit="of requests (every round)",
            experiments=("real",),
            note=real_exact_note,
        ),
        Claim(
            "real-ordering",
            "The real engine orders the policies' hit rates as the cache replay does.",
            "(this artifact's check of its simulator)",
            measure=real_ordering_agreement,
            expect=at_least(1.0),
            unit="of policy pairs",
            experiments=("real",),
            expected="all 3 policy pairs ordered as the replay orders them, on the per-policy "
            "medians over rounds",
            note=real_ordering_note,
        ),
    ],
    # 2: points name the CPU step profile (and its sha256) and record the stream's size and why
    # alpha was or was not tuned; alpha-tuning-helps averages the configurations that tuned
    # 3: the real mode runs on the engine thread's CPU clock, in interleaved rounds; its claims
    # read per-policy medians over rounds
    version="3",
    trace=TraceOption(
        help="a trace in the Marconi JSONL schema, the Mooncake schema or Servelab JSONL to "
        "replay instead of the built-in workloads (outputs without token ids get random ones)",
        check=check_trace,
    ),
)
