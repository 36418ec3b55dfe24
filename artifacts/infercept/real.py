"""Real mode: the five interception policies in the real engine on this CPU.

One :class:`~core.engine.LLM` of the random-initialized ~20M-parameter Llama whose config the
step profile carries, one thread, no prefix cache, serves the same mixed InferCept stream once
per policy and round (a fresh engine each time, the policy given to it) through
:func:`core.engine.replay`. Lengths are scaled by :data:`LENGTH_SCALE` (prompts of ~80 tokens,
contexts of ~130 at a call) and durations by :data:`DURATION_SCALE` (calls of ~0.5-1 s for
chat, image and speech, milliseconds for the fast tools). The KV pool is :data:`KV_BLOCKS`
blocks of 16 tokens, less than the stream's running and paused requests hold at once when every
paused context is kept: preserving competes with running requests for memory, the regime the
paper's GPUs are in under load (Preserve has to preempt).

**The clock.** The engine runs on a :class:`core.engine.CpuClock`: the engine thread's CPU
seconds plus the scheduled gaps of arrivals and calls, which pass without sleeping. Every
forward, KV copy and scheduling decision is real and costs what it costs on this CPU; only
waiting is skipped. On a shared 2-core machine the wall clock also measures whatever other
processes take from the engine's core, enough to flip the comparison between two runs (see the
README); the CPU clock does not, and a run takes its CPU time rather than the stream's length.
Wall seconds and the share of the core the engine had (``cpu_share``) are recorded beside.

**Rounds.** The policies run in ``rounds`` rounds (:func:`core.metrics.rotated_order`): the
first ``all_rounds`` rounds serve the stream under every policy, the others under the two the
claim compares (vLLM and InferCept), and the order rotates from round to round. Claims compare
the median over rounds (of the per-round paired ratio) with the spread beside it. The engine's
work is counted too: recomputed tokens, tokens computed in all, steps that ran a forward, their
CPU seconds.

InferCept's min-waste policy needs ``T_fwd`` of the machine: the authors fit ``a*tokens + c``
to their GPU's iteration times; here the same line is fitted (least squares) to the measured
prefill steps of the tiny model's step profile (:func:`fitted_cost`), and the saturation point,
the token count below which a step costs mostly its fixed part, is where the line's two terms
are equal (``c / a``). The profile is this machine's CPU model's when ``data/profiles`` has one,
else the shipped one measured on another host (:func:`core.sim.profiled.pinned_profile`); the
point's config carries its path and sha256, so a stored point is never reused with another
profile. Swapping is a copy to a host pool in the same memory; its bandwidth
(:data:`HOST_BANDWIDTH`) only sizes the policy's per-iteration swap budget.

Greedy decoding of a random-initialized model: every policy must produce the same tokens for
every request (the returned tokens are the same, only when KV is kept, dropped or moved
differs).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from core.artifact import RunContext, Scale
from core.engine import LLM, CpuClock
from core.engine.serve import replay
from core.metrics import RequestRecord, rotated_order, summarize
from core.model.spec import ModelSpec
from core.sched import make_intercept_policy
from core.sched.intercept import InterceptPolicy
from core.sim.profiled import ProfiledCostModel, load_pinned_profile, pinned_profile
from core.workload import Workload

from .policy import LinearIterationCost, MinWastePolicy
from .sim import ESTIMATED, POLICIES, latency_metrics
from .workloads import generate_infercept_workload, infercept_workload_stats

PROFILE_MODEL = "tiny-llama-20m"
SHIPPED_PROFILE = "profiles/cpu-amd-epyc-1t-tiny-llama-20m.json"
"""Used when ``data/profiles`` has no profile of the model for this machine's CPU model."""
BLOCK = 16
LENGTH_SCALE = 0.1
DURATION_SCALE = 0.05
HOST_BANDWIDTH = 5e9  # bytes/s of a host-to-host copy (assumption; sizes the swap budget only)
MAX_BATCHED_TOKENS = 512
MAX_SEQS = 64
THREADS = 1  # the profile's
REAL_POLICIES = POLICIES
COMPARED = ("vllm", "infercept")
"""The two policies the measured-latency claim compares: they run in every round."""
MIN_ROUNDS = 3
"""Fewest rounds on which the measured ordering is decided (a median of fewer is noise)."""

REAL_SCALE = {
    Scale.SMOKE: {
        "requests": 8,
        "rate": 4.0,
        "kv_blocks": 48,
        "duration_scale": 0.01,
        "rounds": 3,
        "all_rounds": 1,
    },
    Scale.DEFAULT: {
        "requests": 40,
        "rate": 2.0,
        "kv_blocks": 48,
        "duration_scale": DURATION_SCALE,
        "rounds": 3,
        "all_rounds": 3,
    },
    Scale.FULL: {
        "requests": 120,
        "rate": 2.0,
        "kv_blocks": 48,
        "duration_scale": DURATION_SCALE,
        "rounds": 5,
        "all_rounds": 5,
    },
}
"""Per scale: the stream, and ``rounds`` rounds of which the first ``all_rounds`` run every
policy and the rest only :data:`COMPARED` (smoke: to stay within its minute)."""
CLOCK = "engine-thread-cpu"
"""The point config's name for :class:`~core.engine.CpuClock`, the clock the real runs are
timed on."""
KV_BLOCKS = REAL_SCALE[Scale.DEFAULT]["kv_blocks"]


# -- the step profile --------------------------------------------------------------------------


def _profile(config: dict[str, Any]) -> ProfiledCostModel:
    return load_pinned_profile(config["profile"], config["profile_sha256"])


def model_config(config: dict[str, Any]) -> dict[str, Any]:
    return _profile(config).require_model_config()


def kv_bytes_per_token(config: dict[str, Any]) -> int:
    spec = ModelSpec.from_hf_config(model_config(config), name="real-tiny")
    return spec.kv_bytes_per_token("float32")


def fitted_cost(config: dict[str, Any]) -> tuple[LinearIterationCost, int]:
    """``a*tokens + c`` fitted to the profile's prefill steps without context (the authors'
    ``f_ch``), and the saturation point ``round(c / a)``."""
    p = _profile(config).profile
    tokens = np.asarray(p["grid"]["prefill_tokens"], dtype=float)
    seconds = np.asarray([row[0] for row in p["tables"]["prefill"]], dtype=float)
    a, c = np.polyfit(tokens, seconds, 1)
    a, c = float(max(a, 1e-9)), float(max(c, 0.0))
    cost = LinearIterationCost(
        a, c, kv_bytes_per_token=kv_bytes_per_token(config), host_bandwidth=HOST_BANDWIDTH
    )
    return cost, max(1, round(c / a))


def make_policy(name: str, wl: Workload, config: dict[str, Any]) -> InterceptPolicy:
    if name in ("infercept", ESTIMATED):
        cost, saturation = fitted_cost(config)
        extra = (
            {}
            if name == "infercept"
            else {"oracle": False, "mean_duration_s": wl.params["mean_duration_s"]}
        )
        return MinWastePolicy(cost=cost, saturation=saturation, **extra)
    return make_intercept_policy(name)


# -- the run -----------------------------------------------------------------------------------


def real_workload(config: dict[str, Any]) -> Workload:
    return generate_infercept_workload(
        "mixed",
        config["requests"],
        config["rate"],
        seed=config["seed"],
        length_scale=LENGTH_SCALE,
        duration_scale=config["duration_scale"],
        vocab_size=model_config(config)["vocab_size"],
    )


def points(ctx: RunContext) -> list[dict[str, Any]]:
    pin = pinned_profile(PROFILE_MODEL, threads=THREADS, fallback=SHIPPED_PROFILE)
    return [{**REAL_SCALE[ctx.scale], "clock": CLOCK, **pin}]


class _Counted:
    """``engine.step`` that also sums the engine's work over the steps that ran a forward:
    steps, tokens computed, wall seconds, and CPU seconds of this thread (what the steps cost
    when nothing else competes for the core; wall - CPU is time other processes took)."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.step_fn = engine, engine.step
        self.steps, self.tokens, self.busy_s, self.cpu_s = 0, 0, 0.0, 0.0

    def __call__(self) -> Any:
        c0 = time.thread_time()
        done = self.step_fn()
        cpu = time.thread_time() - c0
        st = self.engine.last_step
        if st.num_tokens:  # an empty step (nothing runnable) is waiting, not work
            self.steps += 1
            self.tokens += st.num_tokens
            self.busy_s += st.total_s
            self.cpu_s += cpu
        return done


def serve(policy: str, wl: Workload, config: dict[str, Any]) -> tuple[list[Any], dict[str, float]]:
    """The stream on a fresh engine under ``policy``, on a :class:`~core.engine.CpuClock`: its
    finished engine requests, and the run's wall time and the engine's work."""
    llm = LLM(
        model_config(config),
        dtype="float32",
        device="cpu",
        seed=0,
        block_size=BLOCK,
        num_kv_blocks=config["kv_blocks"],
        num_host_blocks=4 * config["kv_blocks"],
        enable_prefix_caching=False,
        prefix_cache="block",
        max_num_seqs=MAX_SEQS,
        max_num_batched_tokens=MAX_BATCHED_TOKENS,
        max_model_len=2048,
        intercept=make_policy(policy, wl, config),
    )
    clock = CpuClock()
    llm.engine.clock = clock
    counted = _Counted(llm.engine)
    llm.engine.step = counted  # replay calls engine.step(); the instance attribute wins
    t0 = time.perf_counter()
    reqs = replay(llm.engine, wl.requests, sleep=clock.sleep)
    return reqs, {
        "wall_s": time.perf_counter() - t0,
        "clock_s": clock(),
        "waited_s": clock.waited,
        "engine_steps": counted.steps,
        "tokens_computed": counted.tokens,
        "engine_busy_s": counted.busy_s,
        "engine_cpu_s": counted.cpu_s,
        "cpu_share": counted.cpu_s / counted.busy_s if counted.busy_s else float("nan"),
    }


def run_point(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The policies on a fresh engine each, in interleaved rounds
    (:func:`core.metrics.rotated_order`), the same stream each time; one row per (round,
    policy)."""
    wl = real_workload(config)
    stats = infercept_workload_stats(wl)["all"]
    order = rotated_order(REAL_POLICIES, config["rounds"], config["all_rounds"], COMPARED)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        runs = [(rnd, policy, *serve(policy, wl, config)) for rnd, policy in order]
    finally:
        torch.set_num_threads(threads)
    # greedy tokens must not depend on the policy: compare every run with the first Preserve run
    ref_run = next((reqs for _, p, reqs, _ in runs if p == "preserve"), runs[0][2])
    reference = {r.request_id: list(r.output_token_ids) for r in ref_run}
    cost, saturation = fitted_cost(config)
    rows = []
    for position, (rnd, policy, reqs, work) in enumerate(runs):
        records = [RequestRecord.from_request(r) for r in reqs]
        s = summarize(records, exclude_pauses=True)
        same = sum(list(r.output_token_ids) == reference.get(r.request_id) for r in reqs)
        rows.append(
            {
                "policy": policy,
                "round": rnd,
                "position": position,
                **latency_metrics(s),
                "recomputed_tokens": s["recomputed_tokens"],
                "preemptions": s["preemptions"],
                "pauses": s["pauses"],
                "output_tokens": int(sum(r.num_output_tokens for r in reqs)),
                "identical_outputs": same,
                **work,
                "prompt_mean": stats["prompt_len_mean"],
                "context_at_call_mean": stats["context_at_interception_mean"],
                "policy_a_ms": cost.a_s * 1e3,
                "policy_c_ms": cost.c_s * 1e3,
                "policy_saturation": saturation,
            }
        )
    return rows
