"""Real mode: two engine replicas of a tiny model on this CPU, one core each, behind E2 or
round-robin.

The replicas are Ray actors (:class:`core.cluster.serving.Fleet` with ``backend="ray"``), each
an :class:`~core.engine.LLM` of the same random-initialized ~20M-parameter Llama with its own
radix prefix cache, sized to hold about half of the workload's videos. The workload is VideoQA
(:func:`core.workload.generate_preble_workload`) with lengths scaled by 0.1 to the model's 2K
context: prompts of ~950 tokens, 88% of them a video shared by ~6 questions, one-token answers,
so a request's cost is its prefill, as on the paper's GPUs. A router that spreads a video's
questions over both replicas makes each replica cache every video and evict what the next
question needs; E2 keeps each video where it is cached. E2 sees this CPU's step times through
the tiny model's profiled cost model (``data/profiles``), as Preble's router uses its GPU's
fitted prefill equations.

Latencies are wall-clock on a shared 2-core machine, so they vary by some percent from run to
run; both routers serve the identical request stream in the same session, each on a fresh
fleet (cold caches).
"""

from __future__ import annotations

from typing import Any

from core.artifact import RunContext, Scale
from core.cluster import E2Costs, E2Router, Router, make_router
from core.cluster.serving import Fleet, ReplicaSpec
from core.metrics import RequestRecord, summarize
from core.sim.profiled import ProfiledCostModel, shipped_profile
from core.workload import Workload, generate_preble_workload, preble_workload_stats

PROFILE = "profiles/cpu-amd-epyc-1t-tiny-llama-20m.json"
BLOCK = 16
ROUTERS = ("round-robin", "e2")

REAL_SCALE = {
    Scale.SMOKE: {"requests": 30, "rate": 4.0, "kv_blocks": 480},
    Scale.DEFAULT: {"requests": 120, "rate": 6.0, "kv_blocks": 480},
    Scale.FULL: {"requests": 400, "rate": 6.0, "kv_blocks": 480},
}
WORKLOAD = "videoqa"
LENGTH_SCALE = 0.1


def cpu_cost() -> ProfiledCostModel:
    """This CPU's step times for the tiny model (the file's sha256 goes into provenance.json)."""
    return shipped_profile(PROFILE)


def model_config() -> dict[str, Any]:
    return cpu_cost().require_model_config()


def real_workload(config: dict[str, Any]) -> Workload:
    return generate_preble_workload(
        WORKLOAD, config["requests"], config["rate"], seed=config["seed"],
        length_scale=LENGTH_SCALE, vocab_size=model_config()["vocab_size"],
    )  # fmt: skip


def _router(name: str, kv_tokens: int) -> Router:
    if name == "e2":
        return E2Router(kv_tokens, E2Costs.from_cost_model(cpu_cost(), decode_context=1024))
    return make_router(name)


def points(ctx: RunContext) -> list[dict[str, Any]]:
    return [dict(REAL_SCALE[ctx.scale])]


def run_point(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Both routers on one Ray fleet each (fresh caches), the same request stream."""
    wl = real_workload(config)
    stats = preble_workload_stats(wl)
    spec = ReplicaSpec(model_config(), engine=dict(
        seed=0, block_size=BLOCK, num_kv_blocks=config["kv_blocks"], max_num_batched_tokens=512,
        max_num_seqs=32, max_model_len=2048, prefix_cache="radix"), threads=1)
    rows = []
    for name in ROUTERS:
        with Fleet([spec, spec], _router(name, config["kv_blocks"] * BLOCK), backend="ray") as fleet:
            res = fleet.run(wl, timeout_s=900.0)
        s = summarize([RequestRecord.from_request(r) for r in res.requests])
        rows.append({
            "router": name, "avg_latency_s": s["e2e_mean"],
            "p99_latency_s": s["e2e_p99"], "p50_latency_s": s["e2e_p50"],
            "ttft_mean_s": s["ttft_mean"], "ttft_p99_s": s["ttft_p99"],
            "token_hit_rate": s["token_hit_rate"], "completed": s["num_completed"],
            "failed": len(res.failed), "makespan_s": res.makespan,
            "served_per_replica": "/".join(str(r.served) for r in res.replicas),
            "prompt_mean": stats["prompt_mean"], "shared_fraction": stats["shared_fraction"],
        })  # fmt: skip
    return rows
