"""Hit-rate sweep (Figs. 7 and 8), TTFT (Fig. 9) and alpha tuning, by cache-level replay.

Each point replays one request stream through one policy's radix cache of a given size
(:func:`.replay.replay_requests`, the engine-free driver that uses the same policy
objects as the engine) and reports the token hit rate, the prefill FLOPs saved, the tuned
alpha, and TTFT: the prefill time of each prompt's uncached part (the paper applies a
TTFT-vs-length curve measured on Jamba-1.5-Mini the same way), twice:

- on an H100 for the paper's 7B hybrid, from the roofline cost model;
- for the real mode's tiny hybrid on a CPU, from a step profile (engine steps measured by
  ``scripts.calibrate``): this CPU's own profile when ``nox -s calibrate`` has made one, else
  the shipped one, measured where the artifact was developed (:func:`cpu_profile`). The uncached part is
  prefilled in chunks of the profile's token budget, each after the tokens before it. Every
  point's config names the profile file and its sha256, so stored points are never reused
  across profiles.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from core.artifact import RunContext, Scale
from core.data import REPO_ROOT
from core.sim.cost import CostModel, RooflineCostModel
from core.sim.profiled import load_pinned_profile, pinned_profile

from .policies import MarconiCosts
from .replay import replay_requests
from .workloads import MOONCAKE, NUM_SESSIONS, session_workload, stream_stats, trace_workload

GB = 2**30
POLICIES = ("marconi", "sglang+", "vllm+", "marconi-alpha0")
MODEL = "marconi-hybrid-7b"
GPU = "h100"
MOONCAKE_PATH = "data/traces/mooncake/synthetic_trace.jsonl"
# The real mode's tiny hybrid: `nox -s calibrate -- --model <dir>/marconi-hybrid-tiny.json
# --max-num-batched-tokens 512 --max-model-len 4096` (README: "TTFT on your CPU") writes
# data/profiles/<this CPU>-1t-marconi-hybrid-tiny.json, which cpu_profile() then prefers to the
# shipped fallback, calibrated on the host the artifact was developed on.
CPU_PROFILE_MODEL = "marconi-hybrid-tiny"
CPU_PROFILE_THREADS = 1
CPU_PROFILE_FALLBACK = "profiles/cpu-amd-epyc-1t-marconi-hybrid-tiny.json"

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
        return [
            {
                "workload": "trace",
                "path": str(ctx.trace),
                "limit": limit,
                "rate": 0.0,
                "response_s": 0.0,
                "sessions": 0,
                "cache_gb": round(f * need / GB, 4),
            }
            for f in TRACE_CACHE_FRACTIONS
        ]
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
                    out.append(
                        {
                            "workload": w,
                            "rate": rate,
                            "response_s": resp,
                            "sessions": sessions,
                            "cache_gb": gb,
                        }
                    )
    out += [
        {
            "workload": MOONCAKE,
            "path": MOONCAKE_PATH,
            "limit": MOONCAKE_REQUESTS[ctx.scale],
            "rate": 0.0,
            "response_s": 0.0,
            "sessions": 0,
            "cache_gb": gb,
        }
        for gb in MOONCAKE_CACHE_GB
    ]
    return out


def cpu_profile() -> dict[str, str]:
    """The step profile that times TTFT on a CPU: this CPU's own (``data/profiles/<this CPU's
    slug>-marconi-hybrid-tiny.json``, from ``nox -s calibrate``) when it exists, else the shipped
    fallback. Returns the config entries every hit-rate point carries: the file (relative to
    ``data/`` when it is under it) and its sha256. Raises :class:`ArtifactInputError` when the
    profile was measured on another model than the real mode's tiny hybrid."""
    from core.artifact import ArtifactInputError

    from .real import model_config  # the main process only: it loads torch

    pin = pinned_profile(
        CPU_PROFILE_MODEL, threads=CPU_PROFILE_THREADS, fallback=CPU_PROFILE_FALLBACK
    )
    model = load_pinned_profile(pin["profile"], pin["profile_sha256"])
    measured = ((model.profile.get("model") or {}).get("config")) or {}
    want = model_config()
    differ = sorted(k for k in set(want) | set(measured) if want.get(k) != measured.get(k))
    if differ:
        raise ArtifactInputError(
            f"{model.source}: the step profile was measured on another model than the real "
            f"mode's tiny hybrid (config keys differ: {', '.join(differ)}); recalibrate it "
            "(README: TTFT on your CPU)"
        )
    return {"cpu_profile": pin["profile"], "cpu_profile_sha256": pin["profile_sha256"]}


def points(ctx: RunContext) -> list[dict[str, Any]]:
    profile = cpu_profile()
    return [{**c, **profile, "policy": p} for c in _configs(ctx) for p in POLICIES]


def _workload(config: dict[str, Any]) -> Any:
    if "path" in config:
        path = Path(config["path"])  # the shipped Mooncake trace is named from the checkout
        path = path if path.is_absolute() or path.exists() else REPO_ROOT / path
        return trace_workload(str(path), config["limit"], config["seed"])
    return session_workload(
        config["workload"],
        config["rate"],
        config["sessions"],
        config["seed"],
        config["response_s"] or 5.0,
    )


def window_factor(workload: str) -> int:
    """Alpha tuning's window in multiples of N0: 15 for the LMSys-like trace (the note), else 5."""
    return 15 if workload == "lmsys" else 5


def alpha_status(policy: str, n0: int | None, tuned: float | None) -> str:
    """Why a point's alpha is what it is: ``tuned``; ``no eviction`` (the cache never filled, so
    tuning never started); ``window not over`` (the window of ``factor x N0`` requests after the
    first eviction ran past the end of the stream); ``fixed`` for the policies that do not tune."""
    if policy != "marconi":
        return "fixed"
    if tuned is not None:
        return "tuned"
    return "no eviction" if n0 is None else "window not over"


@lru_cache(maxsize=1)
def _gpu_cost() -> RooflineCostModel:
    return RooflineCostModel(MODEL, GPU, dtype="fp16")


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
    wl = _workload(config)
    reqs = wl.requests
    window = window_factor(config["workload"])
    res = replay_requests(
        reqs,
        capacity_bytes=int(config["cache_gb"] * GB),
        policy=config["policy"],
        costs=MarconiCosts.paper_7b(),
        window_factor=window,
    )
    gpu = _gpu_cost()
    cpu = load_pinned_profile(config["cpu_profile"], config.get("cpu_profile_sha256"))
    chunk = int(cpu.profile["engine"]["max_num_batched_tokens"])
    ttft = np.array([ttft_seconds(gpu, o.prompt_len, o.hit_tokens) for o in res.requests])
    ttft_cpu = np.array(
        [ttft_seconds(cpu, o.prompt_len, o.hit_tokens, chunk) for o in res.requests]
    )
    # the profile's grid ends at its largest context plus its largest chunk: beyond, the
    # profiled model extrapolates along the context
    reach = max(cpu.grid["prefill_contexts"]) + max(cpu.grid["prefill_tokens"])
    return {
        **stream_stats(wl),
        "requests": res.num_requests,
        "prompt_tokens": res.prompt_tokens,
        "hit_tokens": res.hit_tokens,
        "token_hit_rate": res.token_hit_rate,
        "request_hit_rate": res.request_hit_rate,
        "flops_saved_fraction": res.flops_saved_fraction,
        "evicted_checkpoints": res.evicted_checkpoints,
        "n0": res.n0 if res.n0 is not None else -1,
        "tuned_alpha": res.tuned_alpha if res.tuned_alpha is not None else float("nan"),
        "alpha_status": alpha_status(config["policy"], res.n0, res.tuned_alpha),
        # requests the tuner waits for after the first eviction (-1: no tuner, or no eviction)
        "tuning_window": (
            window * res.n0 if res.n0 is not None and config["policy"] == "marconi" else -1
        ),
        "ttft_mean_ms": 1e3 * float(ttft.mean()),
        "ttft_p50_ms": 1e3 * float(np.percentile(ttft, 50)),
        "ttft_p95_ms": 1e3 * float(np.percentile(ttft, 95)),
        "ttft_cpu_mean_s": float(ttft_cpu.mean()),
        "ttft_cpu_p95_s": float(np.percentile(ttft_cpu, 95)),
        "ttft_cpu_beyond_profile": float(np.mean([o.prompt_len > reach for o in res.requests])),
        "replay_s": res.wall_seconds,
    }
