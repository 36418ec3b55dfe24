"""Simulated fleets (Fig. 3) and the ablation ladder (Table 1).

Every point replays one Preble workload through the simulator (:class:`core.sim.Simulator`):
``gpus / tp`` replicas of a model on a GPU type, each the engine's own scheduler and radix
prefix cache with the roofline cost model in place of the forward pass, behind one router. The
routers are :mod:`core.cluster`'s round-robin, least outstanding work, pure prefix affinity and
Preble's E2 (:class:`.router.E2Router`), whose ladder of features gives Table 1.

Request rates are set per (setup, fleet, workload) as multiples of a *nominal capacity*: the
fleet's requests/s if every replica prefilled only each request's unshared part and decoded
its output in batches of :data:`NOMINAL_BATCH` (:func:`nominal_rate`). The multiples span light
load to past saturation, so every router's latency curve bends within the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from core.artifact import RunContext, Scale
from core.cluster import Router, make_router
from core.metrics import RequestRecord, summarize
from core.sched import SchedulerConfig
from core.sim import ReplicaConfig, Simulator
from core.sim.cost import RooflineCostModel
from core.workload import Workload

from .priority import PrebleGroupPolicy
from .router import E2Costs, E2Router
from .workloads import generate_preble_workload, preble_workload_stats

WORKLOADS = ("toolbench", "embodied", "programming", "videoqa", "loogle")
BLOCK = 16
CHUNK = 512  # Preble's local scheduler prefills in 512-token chunks
NOMINAL_BATCH = 32
MAX_MODEL_LEN = 65536


@dataclass(frozen=True)
class Setup:
    """A model on a GPU type with a tensor-parallel degree (one replica = ``tp`` GPUs)."""

    model: str
    hardware: str
    tp: int
    dtype: str


SETUPS = {
    "mistral-7b/a6000": Setup("mistral-7b", "a6000", 1, "fp16"),
    "llama-3-70b/h100": Setup("llama-3-70b", "h100", 4, "bf16"),
}

# Fig. 3's routers: the data-parallel baselines and Preble (E2 with every feature, priority
# local scheduler).
FLEET_ROUTERS = ("round-robin", "least-work", "prefix-affinity", "preble")
# Table 1's ladder: each rung adds one feature to the one before.
LADDER = ("round-robin", "e2", "e2+rebalance", "e2+rebalance+pd", "preble")
RUNG_FEATURES = {
    "e2": dict(rebalance=False, pd_balance=False),
    "e2+rebalance": dict(rebalance=True, pd_balance=False),
    "e2+rebalance+pd": dict(rebalance=True, pd_balance=True),
    "preble": dict(rebalance=True, pd_balance=True),
}

FLEET_GRID = {
    Scale.SMOKE: {
        "setups": {"mistral-7b/a6000": (2,)},
        "workloads": {"mistral-7b/a6000": ("toolbench",)},
        "loads": (0.5, 2.0),
        "requests": 80,
    },
    Scale.DEFAULT: {
        "setups": {"mistral-7b/a6000": (4,), "llama-3-70b/h100": (8,)},
        "workloads": {
            "mistral-7b/a6000": WORKLOADS,
            "llama-3-70b/h100": ("toolbench", "programming", "loogle"),
        },
        "loads": (0.25, 0.5, 1.0, 2.0, 4.0),
        "requests": 300,
    },
    Scale.FULL: {
        "setups": {"mistral-7b/a6000": (2, 4, 8), "llama-3-70b/h100": (8,)},
        "workloads": {"mistral-7b/a6000": WORKLOADS, "llama-3-70b/h100": WORKLOADS},
        "loads": (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0),
        "requests": 2000,
    },
}
ABLATION_GRID = {
    Scale.SMOKE: {"gpus": 2, "loads": (1.5,), "requests": 80},
    Scale.DEFAULT: {"gpus": 4, "loads": (1.0, 2.0), "requests": 400},
    Scale.FULL: {"gpus": 4, "loads": (0.75, 1.0, 1.5, 2.0), "requests": 2000},
}


@lru_cache(maxsize=8)
def cost_model(setup: str) -> RooflineCostModel:
    s = SETUPS[setup]
    return RooflineCostModel(s.model, s.hardware, tp=s.tp, dtype=s.dtype)


@lru_cache(maxsize=64)
def workload(name: str, requests: int, seed: int) -> Workload:
    """The workload at rate 1 req/s; a point rescales its arrival times to its rate."""
    return generate_preble_workload(name, requests, 1.0, seed=seed)


def _service_times(setup: str, name: str, requests: int, seed: int) -> tuple[float, float, float]:
    """(prefill of the mean request's unshared part after its shared part, decode seconds per
    token in a batch of :data:`NOMINAL_BATCH`, decode seconds per token alone) of a workload."""
    cost = cost_model(setup)
    stats = preble_workload_stats(workload(name, requests, seed))
    prompt, output, shared = stats["prompt_mean"], stats["output_mean"], stats["shared_fraction"]
    new = max(1, int(round(prompt * (1 - shared))))
    ctx = int(round(prompt * shared))
    prefill = sum(cost.step_time([(min(CHUNK, new - a), ctx + a)]) for a in range(0, new, CHUNK))
    mid = int(prompt + output / 2)
    batched = cost.step_time([], [mid] * NOMINAL_BATCH) / NOMINAL_BATCH
    return prefill, batched * output, cost.step_time([], [mid]) * output


def nominal_rate(setup: str, replicas: int, name: str, requests: int, seed: int) -> float:
    """Requests/s the fleet sustains if each request costs only the prefill of its unshared
    part (after its shared part) plus its share of batched decode steps."""
    prefill, decode, _ = _service_times(setup, name, requests, seed)
    return replicas / (prefill + decode)


def unloaded_latency(setup: str, name: str, requests: int, seed: int) -> float:
    """Latency of the mean request alone on a replica with its shared part cached."""
    prefill, _, alone = _service_times(setup, name, requests, seed)
    return prefill + alone


def replica_config(setup: str, queue_policy: str = "fcfs") -> ReplicaConfig:
    cost = cost_model(setup)
    return ReplicaConfig(
        cost=cost,
        num_kv_blocks=cost.max_kv_blocks(BLOCK),
        block_size=BLOCK,
        scheduler=SchedulerConfig(max_num_batched_tokens=CHUNK, max_model_len=MAX_MODEL_LEN),
        prefix_cache="radix",
        queue_policy=queue_policy,
    )


def build_router(name: str, setup: str, replicas: int) -> tuple[Router, str]:
    """The router of a Fig. 3 baseline or a Table 1 rung, and its replicas' queue policy (a
    registered name: each replica's scheduler makes its own stateful policy)."""
    if name not in RUNG_FEATURES:
        return make_router(name), "fcfs"
    cost = cost_model(setup)
    router = E2Router(
        cost.max_kv_blocks(BLOCK) * BLOCK, E2Costs.from_cost_model(cost), **RUNG_FEATURES[name]
    )
    return router, (PrebleGroupPolicy.name if name == "preble" else "fcfs")


def latency_metrics(s: dict[str, Any]) -> dict[str, Any]:
    """The latency and hit-rate columns of a point, simulated or real, from ``summarize``."""
    return {
        "avg_latency_s": s["e2e_mean"],
        "p99_latency_s": s["e2e_p99"],
        "p50_latency_s": s["e2e_p50"],
        "ttft_mean_s": s["ttft_mean"],
        "ttft_p99_s": s["ttft_p99"],
        "token_hit_rate": s["token_hit_rate"],
        "completed": s["num_completed"],
    }


def simulate(config: dict[str, Any]) -> dict[str, Any]:
    """One point: the workload at ``rate`` through ``replicas`` replicas behind ``router``."""
    setup, replicas = config["setup"], config["replicas"]
    wl = workload(config["workload"], config["requests"], config["seed"])
    wl = wl.scale_time(1.0 / config["rate"])
    router, queue = build_router(config["router"], setup, replicas)
    sim = Simulator([replica_config(setup, queue)] * replicas, router)
    res = sim.run(wl)
    records = [RequestRecord.from_request(r) for r in res.requests]
    s = summarize(records)
    busy = np.asarray(res.busy_time, dtype=float)
    per_replica = np.bincount(list(res.replica_of.values()), minlength=replicas)
    return {
        **latency_metrics(s),
        "throughput_rps": s["request_throughput"],
        "preemptions": s["preemptions"],
        "busy_imbalance": float(busy.max() / busy.min()) if busy.min() > 0 else float("inf"),
        "max_replica_share": float(per_replica.max() / max(1, per_replica.sum())),
        "makespan_s": res.makespan,
        "sim_wall_s": res.wall_s,
    }


def _rated(
    ctx: RunContext, setup: str, gpus: int, name: str, requests: int, loads: tuple[float, ...]
) -> list[dict[str, Any]]:
    replicas = gpus // SETUPS[setup].tp
    nominal = nominal_rate(setup, replicas, name, requests, ctx.seed)
    unloaded = unloaded_latency(setup, name, requests, ctx.seed)
    return [
        {
            "setup": setup,
            "gpus": gpus,
            "replicas": replicas,
            "workload": name,
            "requests": requests,
            "load": load,
            "rate": round(load * nominal, 4),
            "unloaded_latency_s": unloaded,
        }
        for load in loads
    ]


def fleet_points(ctx: RunContext) -> list[dict[str, Any]]:
    g = FLEET_GRID[ctx.scale]
    out = []
    for setup, fleets in g["setups"].items():
        for gpus in fleets:
            for name in g["workloads"][setup]:
                for p in _rated(ctx, setup, gpus, name, g["requests"], g["loads"]):
                    out += [{**p, "router": r} for r in FLEET_ROUTERS]
    return out


def ablation_points(ctx: RunContext) -> list[dict[str, Any]]:
    g = ABLATION_GRID[ctx.scale]
    base = _rated(ctx, "mistral-7b/a6000", g["gpus"], "toolbench", g["requests"], g["loads"])
    return [{**p, "router": r} for p in base for r in LADDER]


def run_point(config: dict[str, Any]) -> dict[str, Any]:
    return simulate(config)
