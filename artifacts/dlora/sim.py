"""The simulated experiments: dLoRA's batching against merged-only (vLLM), unmerged-only
(S-LoRA) and one-adapter-at-a-time (PEFT) on one A100 (Fig. 10 and the skew sweep), and the
cluster with proactive placement, adapter-aware dispatch and ILP migration (Fig. 11a).

Costs: the base model's roofline on the GPU (:class:`core.sim.cost.RooflineCostModel`) plus a
:class:`core.lora.LoRAProfile`: ``"paper"`` reproduces dLoRA's measured Llama-7B ratio (a merged
iteration 0.015 s vs 0.027 s unmerged at a batch of 32; a switch 0.02 s), ``"roofline"`` derives
the LoRA kernels' cost from shapes (:meth:`~core.lora.LoRAProfile.roofline`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from core.lora import (
    LoRACostModel,
    LoRAProfile,
    LoRAScheduler,
    MergedOnlyScheduler,
    SingleAdapterScheduler,
)
from core.sched.scheduler import SchedulerConfig
from core.sim import ReplicaConfig, Simulator
from core.sim.cost import RooflineCostModel

from .batching import PAPER_RHO, DLoRAScheduler
from .migration import MigrationController
from .placement import AdapterRouter, place_adapters
from .workloads import (
    lora_workload,  # noqa: E402
    popularity,
)

__all__ = ["BATCHING", "CLUSTER", "run_batching", "run_cluster"]

MODELS = {"llama-2-7b": ("a100-80g", 1), "llama-2-70b": ("a100-80g", 4)}
MAX_SEQS = 32  # dLoRA's batch size B
PAPER_SWITCH_S = 0.02

BATCHING: dict[str, Callable[..., Any]] = {
    "vllm": MergedOnlyScheduler,
    "slora": LoRAScheduler,
    "peft": SingleAdapterScheduler,
    "dlora": DLoRAScheduler,
}
CLUSTER = ("round-robin", "rr-migration", "proactive", "dlora")


@functools.cache
def _costs(model: str, profile: str, rank: int) -> tuple[RooflineCostModel, LoRAProfile, float]:
    """The base cost model, the LoRA profile, and the merged/unmerged ratio at a full batch."""
    hw, tp = MODELS[model]
    base = RooflineCostModel(model, hw, tp=tp)
    ref = base.step_time(decode_contexts=[1024] * MAX_SEQS)
    if profile == "paper":
        lora = LoRAProfile.from_ratio(
            ref, PAPER_RHO, PAPER_SWITCH_S, source="dLoRA's Llama-7B ratio"
        )
    elif profile == "roofline":
        lora = LoRAProfile.roofline(model, hw, rank=rank, tp=tp)
    else:
        raise ValueError(f"unknown LoRA profile {profile!r} (use 'paper' or 'roofline')")
    rho = ref / (ref + lora.unmerged_extra_s(MAX_SEQS, 8))
    return base, lora, rho


def _replica(model: str, profile: str, rank: int, scheduler: Callable[..., Any]) -> ReplicaConfig:
    base, lora, rho = _costs(model, profile, rank)
    t_unmerged = base.step_time(decode_contexts=[1024] * MAX_SEQS) / rho
    factory = scheduler
    if scheduler is DLoRAScheduler:
        factory = partial(DLoRAScheduler, rho=rho, switch_cost=lora.merge_s / t_unmerged)
    return ReplicaConfig(
        LoRACostModel(base, lora),
        num_kv_blocks=base.max_kv_blocks(16),
        scheduler=SchedulerConfig(
            max_num_seqs=MAX_SEQS, max_num_batched_tokens=4096, max_model_len=4096
        ),
        prefix_cache="none",
        scheduler_factory=factory,
    )


def _summary(res: Any, reqs: list[Any]) -> dict[str, Any]:
    done = [r for r in res.requests if r.is_finished and r.timeline.finish_time is not None]
    e2e = np.array([r.timeline.finish_time - r.arrival_time for r in done])
    per_token = e2e / np.array([max(1, r.num_output_tokens) for r in done])
    queue = np.array(
        [(r.timeline.first_scheduled_time or r.arrival_time) - r.arrival_time for r in done]
    )
    out_tokens = sum(r.num_output_tokens for r in done)
    span = res.makespan - min(r.arrival_time for r in reqs)
    return {
        "completed": len(done),
        "per_token_latency_s": float(per_token.mean()),
        "latency_s": float(e2e.mean()),
        "p90_latency_s": float(np.percentile(e2e, 90)),
        "queueing_s": float(queue.mean()),
        "throughput_tok_s": out_tokens / span if span > 0 else float("nan"),
        "throughput_req_s": len(done) / span if span > 0 else float("nan"),
        "makespan_s": float(res.makespan),
        "sim_wall_s": float(res.wall_s),
    }


def run_batching(config: dict[str, Any]) -> dict[str, Any]:
    """One replica, one batching system, one rate and skew."""
    reqs = lora_workload(
        config["requests"],
        config["rate"],
        n_adapters=config["adapters"],
        skew=config["skew"],
        seed=config["seed"],
        cv=config["cv"],
        rank=config["rank"],
    )
    rep = _replica(config["model"], config["profile"], config["rank"], BATCHING[config["system"]])
    sim = Simulator([rep], "round-robin")
    res = sim.run(reqs)
    row = _summary(res, reqs)
    sched = sim.replicas[0].scheduler
    if isinstance(sched, DLoRAScheduler):
        row.update(
            merged_iters=sched.mode_iters["merged"],
            unmerged_iters=sched.mode_iters["unmerged"],
            credit_iters=sched.mode_iters["credit"],
            theta_r=sched.theta_r,
            theta_l=sched.theta_l,
        )
    return row


def run_cluster(config: dict[str, Any]) -> dict[str, Any]:
    """``replicas`` replicas behind a dispatch policy, dLoRA batching on each."""
    n_rep, n_ad = config["replicas"], config["adapters"]
    reqs = lora_workload(
        config["requests"],
        config["rate"],
        n_adapters=n_ad,
        skew=config["skew"],
        seed=config["seed"],
        cv=config["cv"],
        rank=config["rank"],
    )
    adapter_of = {r.request_id: r.metadata["lora"].lora_name for r in reqs}
    pop = popularity(n_ad, config["skew"])
    placement = place_adapters(pop, n_rep, config["capacity"])
    system = config["system"]
    rep = _replica(config["model"], config["profile"], config["rank"], DLoRAScheduler)
    dispatch = "round-robin" if system in ("round-robin", "rr-migration") else "least-work"
    router = AdapterRouter(placement, adapter_of, dispatch)
    controller = None
    if system in ("dlora", "rr-migration"):
        base, _, _ = _costs(config["model"], config["profile"], config["rank"])
        spt = base.step_time(decode_contexts=[1024] * MAX_SEQS) / MAX_SEQS
        controller = MigrationController(
            placement,
            adapter_of,
            capacity=config["capacity"],
            sec_per_token=spt,
            adapter_load_s=0.005,
            interval_s=config["interval_s"],
            time_limit_s=config["ilp_time_limit_s"],
        )
    sim = Simulator([rep] * n_rep, router, controller=controller)
    res = sim.run(reqs)
    row = _summary(res, reqs)
    log = controller.log if controller is not None else []
    solve = [e["solve_s"] for e in log]
    row.update(
        ilp_solves=len(log),
        ilp_moves=sum(e["moves"] for e in log),
        ilp_solve_mean_s=float(np.mean(solve)) if solve else float("nan"),
        ilp_solve_max_s=float(np.max(solve)) if solve else float("nan"),
        ilp_max_requests=max((e["requests"] for e in log), default=0),
    )
    return row
