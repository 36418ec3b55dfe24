"""Real mode: the five interception policies in the real engine on this CPU.

One :class:`~core.engine.LLM` of the random-initialized ~20M-parameter Llama from this CPU's
profile (``data/profiles/cpu-amd-epyc-1t-tiny-llama-20m.json``), one thread, no prefix cache,
serves the same mixed InferCept stream once per policy (a fresh engine each time, the policy
set on its scheduler). Requests arrive on the wall clock and really pause: an external call is
a sleep of its duration (:func:`core.engine.replay`). Lengths are scaled by
:data:`LENGTH_SCALE` (prompts of ~80 tokens, contexts of ~130 at a call) and durations by
:data:`DURATION_SCALE` (calls of ~0.5-1 s for chat, image and speech, milliseconds for the
fast tools), so a policy's run takes about half a minute. The KV pool is
:data:`KV_BLOCKS` blocks of 16 tokens, less than the stream's running and paused requests hold
at once when every paused context is kept: preserving competes with running requests for
memory, the regime the paper's GPUs are in under load (Preserve has to preempt).

InferCept's min-waste policy needs ``T_fwd`` of this machine: the authors fit ``a*tokens + c``
to their GPU's iteration times; here the same line is fitted (least squares) to the profile's
measured prefill steps (:func:`fitted_cost`), and the saturation point, the token count below
which a step costs mostly its fixed part, is where the line's two terms are equal (``c / a``).
Swapping is a copy to a host pool in the same memory; its bandwidth (:data:`HOST_BANDWIDTH`)
only sizes the policy's per-iteration swap budget.

Greedy decoding of a random-initialized model: every policy must produce the same tokens for
every request (the returned tokens are the same, only when KV is kept, dropped or moved
differs). Latencies are wall-clock on a shared 2-core machine: a few percent of noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.artifact import RunContext, Scale
from core.engine import LLM
from core.engine.serve import replay
from core.metrics import RequestRecord, summarize
from core.model.spec import ModelSpec
from core.sched import make_intercept_policy
from core.sched.intercept import InterceptPolicy, LinearIterationCost
from core.sim.profiled import ProfiledCostModel, shipped_profile
from core.workload import Workload
from core.workload.infercept import generate_infercept_workload, infercept_workload_stats

from .sim import ESTIMATED, POLICIES

PROFILE = "profiles/cpu-amd-epyc-1t-tiny-llama-20m.json"
BLOCK = 16
LENGTH_SCALE = 0.1
DURATION_SCALE = 0.05
HOST_BANDWIDTH = 5e9  # bytes/s of a host-to-host copy (assumption; sizes the swap budget only)
MAX_BATCHED_TOKENS = 512
MAX_SEQS = 64
THREADS = 1  # the profile's
REAL_POLICIES = POLICIES

REAL_SCALE = {
    Scale.SMOKE: {"requests": 8, "rate": 4.0, "kv_blocks": 48, "duration_scale": 0.01},
    Scale.DEFAULT: {"requests": 40, "rate": 2.0, "kv_blocks": 48, "duration_scale": DURATION_SCALE},
    Scale.FULL: {"requests": 120, "rate": 2.0, "kv_blocks": 48, "duration_scale": DURATION_SCALE},
}
KV_BLOCKS = REAL_SCALE[Scale.DEFAULT]["kv_blocks"]


def cpu_cost() -> ProfiledCostModel:
    """This CPU's step times for the tiny model (the file's sha256 goes into provenance.json)."""
    return shipped_profile(PROFILE)


def model_config() -> dict[str, Any]:
    return cpu_cost().require_model_config()


def kv_bytes_per_token() -> int:
    return ModelSpec.from_hf_config(model_config(), name="real-tiny").kv_bytes_per_token("float32")


def fitted_cost() -> tuple[LinearIterationCost, int]:
    """``a*tokens + c`` fitted to the profile's prefill steps without context (the authors'
    ``f_ch``), and the saturation point ``round(c / a)``."""
    p = cpu_cost().profile
    tokens = np.asarray(p["grid"]["prefill_tokens"], dtype=float)
    seconds = np.asarray([row[0] for row in p["tables"]["prefill"]], dtype=float)
    a, c = np.polyfit(tokens, seconds, 1)
    a, c = float(max(a, 1e-9)), float(max(c, 0.0))
    cost = LinearIterationCost(a, c, kv_bytes_per_token=kv_bytes_per_token(),
                               host_bandwidth=HOST_BANDWIDTH)
    return cost, max(1, round(c / a))


def make_policy(name: str, wl: Workload) -> InterceptPolicy:
    if name in ("infercept", ESTIMATED):
        cost, saturation = fitted_cost()
        extra = ({} if name == "infercept"
                 else {"oracle": False, "mean_duration_s": wl.params["mean_duration_s"]})
        return make_intercept_policy("infercept", cost=cost, saturation=saturation, **extra)
    return make_intercept_policy(name)


def real_workload(config: dict[str, Any]) -> Workload:
    return generate_infercept_workload(
        "mixed", config["requests"], config["rate"], seed=config["seed"],
        length_scale=LENGTH_SCALE, duration_scale=config["duration_scale"],
        vocab_size=model_config()["vocab_size"],
    )  # fmt: skip


def points(ctx: RunContext) -> list[dict[str, Any]]:
    return [dict(REAL_SCALE[ctx.scale])]


def serve(policy: str, wl: Workload, kv_blocks: int) -> tuple[list[Any], float]:
    """The stream on a fresh engine under ``policy``: its finished engine requests and the
    run's wall time."""
    llm = LLM(model_config(), dtype="float32", device="cpu", seed=0, block_size=BLOCK,
              num_kv_blocks=kv_blocks, num_host_blocks=4 * kv_blocks,
              enable_prefix_caching=False, prefix_cache="block",
              max_num_seqs=MAX_SEQS, max_num_batched_tokens=MAX_BATCHED_TOKENS,
              max_model_len=2048)  # fmt: skip
    llm.engine.scheduler.intercept = make_policy(policy, wl)
    t0 = llm.engine.clock()
    reqs = replay(llm.engine, wl.requests)
    return reqs, llm.engine.clock() - t0


def run_point(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every policy on a fresh engine, the same stream; one row per policy."""
    wl = real_workload(config)
    stats = infercept_workload_stats(wl)["all"]
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        runs = {p: serve(p, wl, config["kv_blocks"]) for p in REAL_POLICIES}
    finally:
        torch.set_num_threads(threads)
    reference = {r.request_id: list(r.output_token_ids) for r in runs["preserve"][0]}
    cost, saturation = fitted_cost()
    rows = []
    for policy, (reqs, wall) in runs.items():
        records = [RequestRecord.from_request(r) for r in reqs]
        s = summarize(records, exclude_pauses=True)
        same = sum(list(r.output_token_ids) == reference.get(r.request_id) for r in reqs)
        rows.append({
            "policy": policy, "norm_latency_mean": s["normalized_latency_mean"],
            "norm_latency_p50": s["normalized_latency_p50"],
            "norm_latency_p90": s["normalized_latency_p90"],
            "norm_latency_p99": s["normalized_latency_p99"],
            "ttft_mean_s": s["ttft_mean"], "completed": s["num_completed"],
            "failed": s["num_error"] + s["num_abort"], "recomputed_tokens": s["recomputed_tokens"],
            "preemptions": s["preemptions"], "pauses": s["pauses"],
            "output_tokens": int(sum(r.num_output_tokens for r in reqs)),
            "identical_outputs": same, "wall_s": wall,
            "prompt_mean": stats["prompt_len_mean"],
            "context_at_call_mean": stats["context_at_interception_mean"],
            "policy_a_ms": cost.a_s * 1e3, "policy_c_ms": cost.c_s * 1e3,
            "policy_saturation": saturation,
        })  # fmt: skip
    return rows
