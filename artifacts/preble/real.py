"""Real mode: two engine replicas of a tiny model on this CPU, one core each, behind E2 or
round-robin.

The replicas are Ray actors (:class:`core.cluster.serving.Fleet` with ``backend="ray"``), each
an :class:`~core.engine.LLM` of the same random-initialized ~20M-parameter Llama with its own
radix prefix cache, sized to hold about half of the workload's videos. The workload is VideoQA
(:func:`core.workload.generate_preble_workload`) with lengths scaled by 0.1 to the model's 2K
context: prompts of ~950 tokens, 88% of them a video shared by ~6 questions, one-token answers,
so a request's cost is its prefill, as on the paper's GPUs. A router that spreads a video's
questions over both replicas makes each replica cache every video and evict what the next
question needs; E2 keeps each video where it is cached. E2 (with rebalancing and P/D balance;
the replicas schedule first-come first-served, so it is the ladder's ``e2+rebalance+pd`` rung)
sees step times through the tiny model's profiled cost model, as Preble's router uses its
GPU's fitted prefill equations: the profile of this machine's CPU model when
``data/profiles`` has one, else the shipped one measured on another host
(:func:`core.sim.profiled.pinned_profile`). The point's config carries the profile's path
and sha256, so a stored point is never reused with another profile.

Latencies are wall-clock on a shared 2-core machine and move between runs, so the routers are
measured in ``rounds``: every round serves the identical request stream once under each
router, each on a fresh fleet (cold caches), and the order rotates from round to round
(:func:`core.metrics.rotated_order`: RR, E2 | E2, RR | RR, E2 ...), so a slow phase of the
machine falls on both.
The claim compares the median over rounds of the paired ratio (round-robin's average latency
over E2's in the same round); the spread over rounds is reported beside it. The prefill tokens
each replica computed (prompt tokens not served from its cache) are counted too: the work E2
saves, which timing noise does not move.
"""

from __future__ import annotations

from typing import Any

from core.artifact import RunContext, Scale
from core.cluster import Router, make_router
from core.cluster.serving import Fleet, ReplicaSpec
from core.metrics import RequestRecord, rotated_order, summarize
from core.sim.profiled import load_pinned_profile, pinned_profile
from core.workload import Workload

from .fleet import latency_metrics
from .router import E2Costs, E2Router
from .workloads import generate_preble_workload, preble_workload_stats

PROFILE_MODEL = "tiny-llama-20m"
SHIPPED_PROFILE = "profiles/cpu-amd-epyc-1t-tiny-llama-20m.json"
"""Used when ``data/profiles`` has no profile of the model for this machine's CPU model."""
THREADS = 1  # one core per replica, the profile's thread count
BLOCK = 16
E2_LABEL = "e2+rebalance+pd"
ROUTERS = ("round-robin", E2_LABEL)
MIN_ROUNDS = 3
"""Fewest rounds on which the wall-clock ordering is decided (a median of fewer is noise)."""

REAL_SCALE = {
    Scale.SMOKE: {"requests": 30, "rate": 4.0, "kv_blocks": 480, "rounds": 1},
    Scale.DEFAULT: {"requests": 120, "rate": 6.0, "kv_blocks": 480, "rounds": 3},
    Scale.FULL: {"requests": 400, "rate": 6.0, "kv_blocks": 480, "rounds": 5},
}
WORKLOAD = "videoqa"
LENGTH_SCALE = 0.1


# -- the step profile --------------------------------------------------------------------------


def model_config(config: dict[str, Any]) -> dict[str, Any]:
    return load_pinned_profile(config["profile"], config["profile_sha256"]).require_model_config()


# -- the run -----------------------------------------------------------------------------------


def real_workload(config: dict[str, Any]) -> Workload:
    return generate_preble_workload(
        WORKLOAD,
        config["requests"],
        config["rate"],
        seed=config["seed"],
        length_scale=LENGTH_SCALE,
        vocab_size=model_config(config)["vocab_size"],
    )


def _router(name: str, kv_tokens: int, config: dict[str, Any]) -> Router:
    if name == E2_LABEL:
        cost = load_pinned_profile(config["profile"], config["profile_sha256"])
        return E2Router(
            kv_tokens,
            E2Costs.from_cost_model(cost, decode_context=1024),
            rebalance=True,
            pd_balance=True,
        )
    return make_router(name)


def points(ctx: RunContext) -> list[dict[str, Any]]:
    pin = pinned_profile(PROFILE_MODEL, threads=THREADS, fallback=SHIPPED_PROFILE)
    return [{**REAL_SCALE[ctx.scale], **pin}]


def serve_once(router: str, wl: Workload, config: dict[str, Any]) -> dict[str, Any]:
    """The stream on a fresh 2-replica Ray fleet behind ``router``: its metrics."""
    spec = ReplicaSpec(
        model_config(config),
        engine=dict(
            seed=0,
            block_size=BLOCK,
            num_kv_blocks=config["kv_blocks"],
            max_num_batched_tokens=512,
            max_num_seqs=32,
            max_model_len=2048,
            prefix_cache="radix",
        ),
        threads=THREADS,
    )
    kv_tokens = config["kv_blocks"] * BLOCK
    with Fleet([spec, spec], _router(router, kv_tokens, config), backend="ray") as fleet:
        res = fleet.run(wl, timeout_s=900.0)
    records = [RequestRecord.from_request(r) for r in res.requests]
    s = summarize(records)
    # prefill work: prompt tokens each replica computed (not served from its prefix cache)
    computed = [0] * len(res.replicas)
    for rec, req in zip(records, res.requests, strict=True):
        i = res.replica_of.get(req.request_id)
        if i is not None:
            computed[i] += rec.prompt_tokens - (rec.cached_tokens or 0)
    return {
        **latency_metrics(s),
        "failed": len(res.failed),
        "makespan_s": res.makespan,
        "prefill_tokens": sum(computed),
        "prefill_tokens_max_replica": max(computed),
        "busy_s": sum(res.busy_time),
        "busy_s_max_replica": max(res.busy_time),
        "served_per_replica": "/".join(str(r.served) for r in res.replicas),
    }


def run_point(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every router on a fresh fleet, ``rounds`` times interleaved
    (:func:`core.metrics.rotated_order`), the same request stream each time; one row per (round,
    router)."""
    wl = real_workload(config)
    stats = preble_workload_stats(wl)
    rows = []
    for position, (rnd, router) in enumerate(rotated_order(ROUTERS, config["rounds"])):
        row = serve_once(router, wl, config)  # a fresh fleet (and Ray instance) each time
        rows.append(
            {
                "router": router,
                "round": rnd,
                "position": position,
                **row,
                "prompt_mean": stats["prompt_mean"],
                "shared_fraction": stats["shared_fraction"],
            }
        )
    return rows
