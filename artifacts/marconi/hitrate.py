"""Hit-rate sweep (Figs. 7 and 8), TTFT (Fig. 9) and alpha tuning, by cache-level replay.

Each point replays one request stream through one policy's radix cache of a given size
(:func:`core.kv.replay.replay_requests`, the engine-free driver that uses the same policy
objects as the engine) and reports the token hit rate, the prefill FLOPs saved, the tuned
alpha, and TTFT: the prefill time of each prompt's uncached part (the paper applies a
TTFT-vs-length curve measured on Jamba-1.5-Mini the same way), twice:

- on an H100 for the paper's 7B hybrid, from the roofline cost model;
- on this CPU for the real mode's tiny hybrid, from its profiled cost model (engine steps
  measured by ``scripts.calibrate``, shipped in ``data/profiles/``): the uncached part is
  prefilled in chunks of the profile's token budget, each after the tokens before it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from core.artifact import RunContext, Scale
from core.kv.marconi import MarconiCosts
from core.kv.replay import replay_requests
from core.sim.cost import CostModel, RooflineCostModel
from core.sim.profiled import ProfiledCostModel, shipped_profile

from .workloads import MOONCAKE, NUM_SESSIONS, session_workload, trace_workload

GB = 2**30
POLICIES = ("marconi", "sglang+", "vllm+", "marconi-alpha0")
MODEL = "marconi-hybrid-7b"
GPU = "h100"
MOONCAKE_PATH = "data/traces/mooncake/synthetic_trace.jsonl"
# the real mode's tiny hybrid, calibrated on the machine the artifact was developed on; run
# `nox -s calibrate -- --model <its config.json> --max-num-batched-tokens 512
# --max-model-len 4096 --out <this file>` to measure yours
CPU_PROFILE = "profiles/cpu-amd-epyc-1t-marconi-hybrid-tiny.json"

# The paper's grid as the note gives it (cache sizes per workload, session rates, SWE-bench
# response times): 5 x 6 + 6 x 6 + 4 x 6 x 3 = 138 configurations.
RATES_FULL = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
CACHE_GB_FULL = {
    "lmsys": (1, 2, 3, 4, 5),
    "sharegpt": (1, 2, 4, 6, 8, 10),
    "swebench": (40, 60, 80, 100),
}
RESPONSE_TIMES_FULL = (5.0, 7.5, 10.0)

# default: a reduced grid (both ends and the middle of each cache range, two rates)
RATES_DEFAULT = (0.5, 2.0)
CACHE_GB_DEFAULT = {"lmsys": (1, 3, 5), "sharegpt": (1, 4, 10), "swebench": (40, 70, 100)}
SWE_SESSIONS_DEFAULT = 50
# Mooncake (no sessions; reuse comes from shared hash_ids, mostly far apart: an unbounded cache
# would hit 17% of the first 1,000 requests' blocks, 57% of the first 3,500's), so its caches
# are sized like Mooncake's host-memory pools rather than one GPU's
MOONCAKE_REQUESTS = {Scale.SMOKE: 60, Scale.DEFAULT: 1000, Scale.FULL: None}
MOONCAKE_CACHE_GB = (100, 300, 1000)
TRACE_CACHE_FRACTIONS = (0.05, 0.2, 1.0)


def _configs(ctx: RunContext) -> list[dict[str, Any]]:
    """One configuration per (stream, cache size); policies are added by :func:`points`."""
    if ctx.trace is not None:
        # a trace of unknown size: caches of 5%, 20% and 100% of the KV its sequences need
        limit = MOONCAKE_REQUESTS[ctx.scale]
        wl = trace_workload(str(ctx.trace), limit, ctx.seed)
        need = sum(r.prompt_len + r.output_len for r in wl.requests)
        need *= MarconiCosts.paper_7b().kv_bytes_per_token
        return [{"workload": "trace", "path": str(ctx.trace), "limit": limit, "rate": 0.0,
                 "response_s": 0.0, "sessions": 0, "cache_gb": round(f * need / GB, 4)}
                for f in TRACE_CACHE_FRACTIONS]  # fmt: skip
    if ctx.scale is Scale.SMOKE:
        return [
            {"workload": "lmsys", "rate": 1.0, "response_s": 0.0, "sessions": 12, "cache_gb": gb}
            for gb in (0.5, 2.0)
        ] + [{"workload": "swebench", "rate": 1.0, "response_s": 5.0, "sessions": 4, "cache_gb": 4}]
    full = ctx.scale is Scale.FULL
    rates = RATES_FULL if full else RATES_DEFAULT
    caches = CACHE_GB_FULL if full else CACHE_GB_DEFAULT
    out = []
    for w, sizes in caches.items():
        responses = (RESPONSE_TIMES_FULL if full else (5.0,)) if w == "swebench" else (0.0,)
        sessions = SWE_SESSIONS_DEFAULT if (w == "swebench" and not full) else NUM_SESSIONS
        for rate in rates:
            for resp in responses:
                for gb in sizes:
                    out.append({"workload": w, "rate": rate, "response_s": resp,
                                "sessions": sessions, "cache_gb": gb})  # fmt: skip
    out += [{"workload": MOONCAKE, "path": MOONCAKE_PATH, "limit": MOONCAKE_REQUESTS[ctx.scale],
             "rate": 0.0, "response_s": 0.0, "sessions": 0, "cache_gb": gb}
            for gb in MOONCAKE_CACHE_GB]  # fmt: skip
    return out


def points(ctx: RunContext) -> list[dict[str, Any]]:
    return [{**c, "policy": p} for c in _configs(ctx) for p in POLICIES]


def _requests(config: dict[str, Any]) -> list[Any]:
    if "path" in config:
        return trace_workload(config["path"], config["limit"], config["seed"]).requests
    return session_workload(config["workload"], config["rate"], config["sessions"], config["seed"],
                            config["response_s"] or 5.0).requests


@lru_cache(maxsize=1)
def _gpu_cost() -> RooflineCostModel:
    return RooflineCostModel(MODEL, GPU, dtype="fp16")


def _cpu_cost() -> ProfiledCostModel:
    return shipped_profile(CPU_PROFILE)  # recorded in provenance.json with its sha256


def ttft_seconds(cost: CostModel, prompt_len: int, hit: int, chunk: int | None = None) -> float:
    """Prefill time of the prompt's uncached part: at least its last token is computed, since
    the first output token needs its logits. With ``chunk``, the part is prefilled in chunks of
    at most that many tokens (chunked prefill), each after the tokens before it."""
    cached = min(hit, prompt_len - 1)
    if chunk is None:
        return cost.step_time([(prompt_len - cached, cached)])
    total = 0.0
    while cached < prompt_len:
        n = min(chunk, prompt_len - cached)
        total += cost.step_time([(n, cached)])
        cached += n
    return total


def run_point(config: dict[str, Any]) -> dict[str, Any]:
    """Replay one stream through one policy's cache; hit rate, FLOPs saved, alpha and TTFT."""
    reqs = _requests(config)
    # the LMSys-like trace tunes over a longer window (the note: 15 x N0 instead of 5 x N0)
    window = 15 if config["workload"] == "lmsys" else 5
    res = replay_requests(reqs, capacity_bytes=int(config["cache_gb"] * GB),
                          policy=config["policy"], costs=MarconiCosts.paper_7b(),
                          window_factor=window)
    gpu, cpu = _gpu_cost(), _cpu_cost()
    chunk = int(cpu.profile["engine"]["max_num_batched_tokens"])
    ttft = np.array([ttft_seconds(gpu, o.prompt_len, o.hit_tokens) for o in res.requests])
    ttft_cpu = np.array([ttft_seconds(cpu, o.prompt_len, o.hit_tokens, chunk)
                         for o in res.requests])
    return {
        "requests": res.num_requests,
        "prompt_tokens": res.prompt_tokens,
        "hit_tokens": res.hit_tokens,
        "token_hit_rate": res.token_hit_rate,
        "request_hit_rate": res.request_hit_rate,
        "flops_saved_fraction": res.flops_saved_fraction,
        "evicted_checkpoints": res.evicted_checkpoints,
        "n0": res.n0 if res.n0 is not None else -1,
        "tuned_alpha": res.tuned_alpha if res.tuned_alpha is not None else float("nan"),
        "ttft_mean_ms": 1e3 * float(ttft.mean()),
        "ttft_p50_ms": 1e3 * float(np.percentile(ttft, 50)),
        "ttft_p95_ms": 1e3 * float(np.percentile(ttft, 95)),
        "ttft_cpu_mean_s": float(ttft_cpu.mean()),
        "ttft_cpu_p95_s": float(np.percentile(ttft_cpu, 95)),
        "replay_s": res.wall_seconds,
    }
