"""Simulated A100s serving augmented requests under the five interception policies.

Every point replays one InferCept workload (:func:`.workloads.generate_infercept_workload`)
through one simulated replica (:class:`core.sim.Simulator`): the engine's own scheduler and
paged KV pool (no prefix cache, as in the authors' vLLM), with

- **the hardware**: the roofline cost model (:class:`core.sim.cost.RooflineCostModel`) of the
  model on ``tp`` A100s, fitted to Vidur's A100 operator profiles. The paper says "A100"
  without the memory size, which decides when preserving paused contexts runs out of memory:
  GPT-J-6B runs on the 80 GB and on the 40 GB A100 (:data:`SETUPS`). Neither
  GPT-J-6B nor Vicuna-13B is a preset, so each is written here as a Llama-shaped config with the
  real model's shapes (GPT-J: 28 layers, d = 4096, 16 heads of 256, a 16384-wide non-gated MLP
  written as a gated one of the same size, 50400-token vocabulary, 6.05e9 parameters;
  Vicuna-13B is a Llama-13B). The roofline charges decode steps for reading every running
  request's KV, which the authors' linear iteration model does not: see the README.
- **the policy's own model of the GPU**: InferCept's min-waste policy estimates ``T_fwd`` with
  the authors' fitted ``a*tokens + c`` (:data:`.policy.GPTJ_6B_A100`,
  :data:`.policy.LLAMA_13B_TP2_A100`) and saturation 384 tokens, as their
  ``scheduler_v2.py`` does, not with the simulator's roofline.
- **the host link**: PCIe 4.0 x16 at 25 GB/s per direction per GPU
  (:data:`.policy.PCIE4_X16_BYTES_PER_S`), and the authors' swap space per GPU
  (``--swap-space`` 128 GiB for GPT-J, 64 GiB per GPU for 13B with TP 2: ``exps/*.sh``).
- **memory**: 90% of the GPU's memory (vLLM's default ``gpu_memory_utilization``) minus the
  weights, in 16-token blocks (prompts longer than the context are rejected, as vLLM does); vLLM v0's batching defaults for a 2048-token model (2048 tokens and 256
  sequences per step); 2048-token context, as GPT-J and Vicuna-13B v1.3 have.

Load follows the authors' benchmark (``final_tput_bench_real.py``): Poisson arrivals at a
rate for a *window*; requests completed within the window count for completed requests/s.
Here the window is the arrival of the last of ``rate * window_s`` requests, and the run
continues until every request finished, so latency covers every request that arrived.
Normalized latency is the paper's: end-to-end time minus the time spent in external calls,
per output token (:func:`core.metrics.summarize` with ``exclude_pauses=True``).

:class:`~artifacts.infercept.probe.StepProbe` measures recomputation time, swap stalls and
GPU memory x time wasted in each run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from core.artifact import RunContext, Scale
from core.metrics import RequestRecord, summarize
from core.model.presets import llama_config
from core.model.spec import ModelSpec
from core.sched import SchedulerConfig, make_intercept_policy
from core.sched.intercept import InterceptPolicy
from core.sim import ReplicaConfig, Simulator
from core.sim.cost import RooflineCostModel
from core.workload import Workload

from .policy import (
    GPTJ_6B_A100,
    LLAMA_13B_TP2_A100,
    SATURATION_TOKENS_A100,
    LinearIterationCost,
    MinWastePolicy,
)
from .probe import StepProbe
from .workloads import AUGMENTATIONS, generate_infercept_workload, infercept_workload_stats

GiB = 2**30
BLOCK = 16
MAX_MODEL_LEN = 2048
MAX_BATCHED_TOKENS = 2048  # vLLM v0: max(max_model_len, 2048)
MAX_SEQS = 256  # vLLM v0 default
HARDWARE = "a100-80g"
MEMORY_UTILIZATION = 0.9

# Policies of the paper's Fig. 8 (its legend order); "infercept-est" is InferCept with per-kind
# mean call durations instead of each call's true duration.
POLICIES = ("vllm", "improved-discard", "swap", "preserve", "infercept")
ESTIMATED = "infercept-est"
SHORT_KINDS = ("arithmetic", "qa", "virtual_env")
LONG_KINDS = ("chatbot", "image", "tts")
BREAKDOWN_POLICIES = ("vllm", "preserve", "infercept")


def _gpt_j_6b() -> dict[str, Any]:
    # 2 x 4096 x 16384 MLP written as a gated 3 x 4096 x 10923 (same bytes and FLOPs).
    return llama_config(
        hidden_size=4096,
        intermediate_size=10923,
        num_layers=28,
        num_heads=16,
        head_dim=256,
        vocab_size=50400,
        max_position_embeddings=MAX_MODEL_LEN,
    )


@dataclass(frozen=True)
class Setup:
    """A model on ``tp`` A100-80GB GPUs, the authors' fitted iteration model of it (the
    policy's ``T_fwd``, with the KV bytes one GPU moves per token) and their swap space."""

    label: str
    config: dict[str, Any]
    tp: int
    policy_cost: LinearIterationCost
    swap_space_gib: int
    hardware: str = HARDWARE


SETUPS = {
    "gpt-j-6b": Setup(
        "GPT-J-6B, 1x A100-80GB",
        _gpt_j_6b(),
        1,
        GPTJ_6B_A100,
        128,
    ),
    "vicuna-13b-tp2": Setup(
        "Vicuna-13B, 2x A100-80GB (TP 2)",
        llama_config(
            hidden_size=5120,
            intermediate_size=13824,
            num_layers=40,
            num_heads=40,
            vocab_size=32000,
            max_position_embeddings=MAX_MODEL_LEN,
        ),
        2,
        LLAMA_13B_TP2_A100,
        64,
    ),
    # the same GPT-J on the 40 GB A100: the paper says "A100" without its memory size
    "gpt-j-6b-40g": Setup(
        "GPT-J-6B, 1x A100-40GB",
        _gpt_j_6b(),
        1,
        GPTJ_6B_A100,
        128,
        "a100-40g",
    ),
}


@lru_cache(maxsize=4)
def cost_model(setup: str) -> RooflineCostModel:
    s = SETUPS[setup]
    spec = ModelSpec.from_hf_config(s.config, name=setup)
    return RooflineCostModel(
        spec, s.hardware, tp=s.tp, dtype="fp16", memory_utilization=MEMORY_UTILIZATION
    )


def kv_blocks(setup: str) -> int:
    return cost_model(setup).max_kv_blocks(BLOCK)


def host_blocks(setup: str) -> int:
    """The authors' swap space per GPU, in blocks of this GPU's KV shard."""
    s = SETUPS[setup]
    return int(s.swap_space_gib * GiB // (BLOCK * s.policy_cost.kv_bytes_per_token))


def make_policy(name: str, setup: str, workload: Workload) -> InterceptPolicy:
    """A policy by the artifact's name; InferCept gets the authors' model of this GPU."""
    cost = SETUPS[setup].policy_cost
    if name == "infercept":
        return MinWastePolicy(cost=cost, saturation=SATURATION_TOKENS_A100)
    if name == ESTIMATED:
        return MinWastePolicy(
            cost=cost,
            saturation=SATURATION_TOKENS_A100,
            oracle=False,
            mean_duration_s=workload.params["mean_duration_s"],
        )
    return make_intercept_policy(name)


@lru_cache(maxsize=32)
def workload(kind: str, requests: int, rate: float, seed: int) -> Workload:
    return generate_infercept_workload(kind, requests, rate, seed=seed)


def simulate(setup: str, policy: str, wl: Workload) -> tuple[list[RequestRecord], Any, StepProbe]:
    """One replica of ``setup`` serving ``wl`` under ``policy``; the records, the
    :class:`~core.sim.simulator.SimResult` and the probe's totals."""
    cost = cost_model(setup)
    s = SETUPS[setup]
    probe = StepProbe(cost, s.policy_cost, make_policy(policy, setup, wl))
    replica = ReplicaConfig(
        num_kv_blocks=kv_blocks(setup),
        block_size=BLOCK,
        prefix_cache="none",
        num_host_blocks=host_blocks(setup),
        kv_bytes_per_token=s.policy_cost.kv_bytes_per_token,
        scheduler=SchedulerConfig(
            max_num_batched_tokens=MAX_BATCHED_TOKENS,
            max_num_seqs=MAX_SEQS,
            max_model_len=MAX_MODEL_LEN,
        ),
        **probe.replica_kwargs(),
    )
    res = Simulator([replica], "round-robin").run(wl)
    return [RequestRecord.from_request(r) for r in res.requests], res, probe


def window_metrics(records: list[RequestRecord], window_s: float) -> dict[str, float]:
    """Requests completed within ``window_s`` (from the first arrival), and per second."""
    t0 = min(r.arrival for r in records)
    done = sum(
        1 for r in records if r.completed and r.finish is not None and r.finish - t0 <= window_s
    )
    return {"completed_in_window": done, "completed_rps": done / window_s}


def latency_metrics(s: dict[str, Any]) -> dict[str, Any]:
    """The latency columns of a point, simulated or real, from ``summarize``."""
    return {
        "norm_latency_mean": s["normalized_latency_mean"],
        "norm_latency_p50": s["normalized_latency_p50"],
        "norm_latency_p90": s["normalized_latency_p90"],
        "norm_latency_p99": s["normalized_latency_p99"],
        "ttft_mean_s": s["ttft_mean"],
        "completed": s["num_completed"],
        "failed": s["num_error"] + s["num_abort"],
    }


def point_metrics(
    setup: str, records: list[RequestRecord], res: Any, probe: StepProbe, window_s: float
) -> dict[str, Any]:
    s = summarize(records, exclude_pauses=True)
    t = probe.totals
    busy = float(sum(res.busy_time))
    gb = SETUPS[setup].policy_cost.kv_bytes_per_token * SETUPS[setup].tp / 1e9  # GB per KV token
    waste = {
        "preserve": t.preserve_waste * gb,
        "recompute": t.recompute_waste * gb,
        "swap": t.swap_waste * gb,
    }
    return {
        **latency_metrics(s),
        **window_metrics(records, window_s),
        "recomputed_tokens": s["recomputed_tokens"],
        "preemptions": s["preemptions"],
        "pauses": s["pauses"],
        "busy_s": busy,
        "recompute_s": t.recompute_s,
        "recompute_share": t.recompute_s / busy if busy > 0 else math.nan,
        "swap_stall_s": t.swap_stall_s,
        "swap_out_tokens": t.swap_out_tokens,
        "swap_in_tokens": t.swap_in_tokens,
        "waste_preserve_gbs": waste["preserve"],
        "waste_recompute_gbs": waste["recompute"],
        "waste_swap_gbs": waste["swap"],
        "waste_gbs": sum(waste.values()),
        "makespan_s": res.makespan,
        "steps": res.total_steps,
        "sim_wall_s": res.wall_s,
    }


# -- the unloaded latency (the SLO's base) and per-kind nominal rates -----------------------------

UNLOADED_REQUESTS = 60
UNLOADED_RATE = 0.002  # one request every ~8 minutes: each is served alone


@lru_cache(maxsize=16)
def unloaded_latency(setup: str, kind: str, seed: int) -> float:
    """Mean normalized latency of the workload's requests served one at a time (Preserve,
    nothing else running): the base of the latency bound."""
    wl = workload(kind, UNLOADED_REQUESTS, UNLOADED_RATE, seed)
    records, _, _ = simulate(setup, "preserve", wl)
    return float(summarize(records, exclude_pauses=True)["normalized_latency_mean"])


NOMINAL_BATCH = 64
STATS_REQUESTS = 2000


def nominal_rates(setup: str, kind: str, seed: int) -> dict[str, float]:
    """Two capacities of one replica for requests of ``kind`` (requests/s), from the workload's
    statistics and the cost model:

    - ``memory``: the rate at which the KV that Preserve keeps during calls alone fills the
      device (Little's law: KV capacity / mean of sum over calls of duration x context);
    - ``compute``: the rate at which prefill (prompt and returned tokens) plus decode in
      batches of :data:`NOMINAL_BATCH` keeps the GPU busy, without any recomputation.
    """
    stats = infercept_workload_stats(workload(kind, STATS_REQUESTS, 1.0, seed))[kind]
    cost = cost_model(setup)
    calls = stats["interceptions_per_request"]
    held = calls * stats["duration_mean_s"] * stats["context_at_interception_mean"]
    capacity = kv_blocks(setup) * BLOCK
    memory = capacity / held if held > 0 else math.inf
    prompt, out = stats["prompt_len_mean"], stats["output_len_mean"]
    ret, ctx = stats["returned_tokens_mean"], stats["context_at_interception_mean"]
    prefill = cost.step_time([(max(1, round(prompt)), 0)])
    prefill += calls * cost.step_time([(max(1, round(ret)), round(ctx))])
    decode = cost.step_time([], [round(ctx)] * NOMINAL_BATCH) / NOMINAL_BATCH * out
    return {"memory": memory, "compute": 1.0 / (prefill + decode)}


# -- points ---------------------------------------------------------------------------------------

SIM_GRID = {
    Scale.SMOKE: {"rates": {"gpt-j-6b": (1.0, 3.0)}, "window_s": 40.0, "estimated": ()},
    Scale.DEFAULT: {
        "rates": {
            "gpt-j-6b": (0.5, 1.0, 1.5, 2.0, 3.0, 4.0),
            "gpt-j-6b-40g": (0.5, 1.0, 1.5, 2.0, 3.0),
            "vicuna-13b-tp2": (0.5, 1.0, 1.5, 2.0, 3.0),
        },
        "window_s": 180.0,
        "estimated": ("gpt-j-6b",),
    },
    Scale.FULL: {
        "rates": {s: (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0) for s in SETUPS},
        "window_s": 1800.0,
        "estimated": tuple(SETUPS),
    },
}
"""Models and request rates per scale; ``estimated``: the models on which InferCept also runs
with per-kind mean call durations. The authors swept 1-4 requests/s for 1,800 s (exps/*.sh)."""

BREAKDOWN_GRID = {
    Scale.SMOKE: {"kinds": ("arithmetic", "image"), "loads": (2.0,), "window_s": 30.0},
    Scale.DEFAULT: {"kinds": tuple(AUGMENTATIONS), "loads": (0.5, 2.0), "window_s": 90.0},
    Scale.FULL: {
        "kinds": tuple(AUGMENTATIONS),
        "loads": (0.25, 0.5, 1.0, 1.5, 2.0, 3.0),
        "window_s": 1800.0,
    },
}
"""Types and loads (multiples of each type's capacity, :func:`nominal_rates`) per scale."""


def sim_points(ctx: RunContext) -> list[dict[str, Any]]:
    """Highest rates first: the longest points start first on the process pool."""
    g = SIM_GRID[ctx.scale]
    out = []
    for setup, rates in g["rates"].items():
        base = unloaded_latency(setup, "mixed", ctx.seed)
        policies = POLICIES + ((ESTIMATED,) if setup in g["estimated"] else ())
        for rate in sorted(rates, reverse=True):
            for policy in policies:
                out.append(
                    {
                        "setup": setup,
                        "kind": "mixed",
                        "rate": rate,
                        "window_s": g["window_s"],
                        "policy": policy,
                        "unloaded_norm_latency": base,
                    }
                )
    return out


def breakdown_points(ctx: RunContext) -> list[dict[str, Any]]:
    """Each augmentation type alone on GPT-J-6B, at multiples of its nominal rate: the smaller
    of the memory and the compute capacity (:func:`nominal_rates`)."""
    g = BREAKDOWN_GRID[ctx.scale]
    setup = "gpt-j-6b"
    out = []
    for kind in g["kinds"]:
        nom = nominal_rates(setup, kind, ctx.seed)
        nominal = min(nom["memory"], nom["compute"])
        for load in g["loads"]:
            for policy in BREAKDOWN_POLICIES:
                out.append(
                    {
                        "setup": setup,
                        "kind": kind,
                        "load": load,
                        "rate": round(load * nominal, 4),
                        "window_s": g["window_s"],
                        "policy": policy,
                        "memory_rate": round(nom["memory"], 4),
                        "compute_rate": round(nom["compute"], 4),
                    }
                )
    return out


def run_point(config: dict[str, Any]) -> dict[str, Any]:
    """One point: ``round(rate * window_s)`` requests of ``kind`` at ``rate`` under ``policy``."""
    n = max(1, round(config["rate"] * config["window_s"]))
    wl = workload(config["kind"], n, config["rate"], config["seed"])
    records, res, probe = simulate(config["setup"], config["policy"], wl)
    window = float(max(r.arrival_time for r in wl)) or config["window_s"]
    row = point_metrics(config["setup"], records, res, probe, window)
    planned = {r.request_id: r.output_len for r in wl}
    truncated = sum(1 for r in records if r.completed and r.output_tokens < planned[r.request_id])
    row.update(
        requests=n,
        window_arrivals_s=window,
        truncated=truncated,
        output_tokens_mean=float(np.mean([r.output_tokens for r in records if r.completed])),
    )
    return row
