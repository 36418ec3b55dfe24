"""Real mode: a tiny hybrid model served by the engine on this CPU with each policy.

Chat sessions with a shared system prompt are served closed-loop (:func:`core.engine.
serve_sessions`: each turn carries the tokens the engine generated) once without prefix caching,
then once per policy and round on the same KV-block and SSM-slot budget, each time on a fresh
engine. Each run reports the real token hit rate and TTFT, checks that every turn's tokens equal
the uncached run's, and replays the very same sequences through the cache-level replay (same
policy objects, a byte budget equal to the engine's two pools) so the real ordering can be set
beside the simulated one.

**The clock.** Which turns share a batch decides what each policy can cache, so the hit rates
depend on how long steps take against when sessions arrive. Every run is timed on a
:class:`core.engine.CpuClock` (the engine thread's CPU seconds plus the arrival gaps, which pass
without sleeping): what other processes take from the core does not change what is
concurrent. TTFT is in the same CPU seconds. Wall seconds are recorded beside.

**Rounds.** The policies run in ``rounds`` interleaved rounds, the order rotating from round to
round (:func:`core.metrics.rotated_order`: Marconi, SGLang+, vLLM+ | SGLang+, vLLM+, Marconi |
...); the claims read each policy's median over rounds, with the min and max beside it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from core.engine import LLM, CpuClock, serve_sessions
from core.metrics import rotated_order
from core.model.spec import ModelSpec, preset_config
from core.workload import Request

from .policies import MarconiCosts, make_marconi_policies
from .replay import replay_requests
from .sessions import lmsys_like

# A small Attention-Mamba2 hybrid with the paper's proportions: 1 attention layer in 4, and an
# SSM state (~420 KB in fp32) worth ~410 tokens of KV, as the 7B hybrid's (~400 tokens).
MODEL_OVERRIDES = dict(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    attn_layer_indices=[3, 7],
    mamba_n_heads=8,
    mamba_d_head=32,
    mamba_d_state=64,
    mamba_chunk_size=64,
    max_position_embeddings=4096,
)
# vLLM+ caches whole 32-token blocks and checkpoints at block ends; Marconi and SGLang+ keep a
# token-level radix tree (their leaf and branch-point states sit at any position)
VLLM_BLOCK = 32
POLICIES = ("marconi", "sglang+", "vllm+")
CLOCK = "engine-thread-cpu"
"""The point config's name for :class:`~core.engine.CpuClock`, the clock every run is timed on."""


def model_config() -> dict[str, Any]:
    return {**preset_config("tiny-bamba"), **MODEL_OVERRIDES}


def sessions(num_sessions: int, seed: int) -> list[Request]:
    """LMSys-like sessions scaled to the tiny model: ~1/4 of the lengths, 4-6 turns, a 256-token
    system prompt shared by all sessions, contexts under 2,048 tokens."""
    wl = lmsys_like(
        num_sessions,
        4.0,
        seed=seed,
        turns_min=4,
        turns_mean=5.0,
        turns_max=6,
        input_len_mean=24.0,
        output_len_mean=48.0,
        output_len_cv=0.5,
        system_prompt_len=256,
        max_context_len=2048,
        vocab_size=512,
    )
    return wl.requests


def _costs() -> MarconiCosts:
    """The paper's FLOP formulas for the tiny model, with the bytes the engine allocates (fp32
    KV and SSM states), so eviction scores and the cache's accounting agree."""
    spec = ModelSpec.from_hf_config(model_config(), name="real-hybrid")
    return MarconiCosts.from_spec(spec).with_bytes(
        spec.kv_bytes_per_token("float32"), spec.ssm_state_bytes("float32")
    )


def _block_size(policy: str | None) -> int:
    return VLLM_BLOCK if policy == "vllm+" else 1


def _llm(config: dict[str, Any], policy: str | None) -> LLM:
    admission = eviction = None
    if policy is not None:
        admission, eviction = make_marconi_policies(policy, _costs(), block_size=VLLM_BLOCK)
    block = _block_size(policy)
    return LLM(
        model_config(),
        dtype="float32",
        seed=config["seed"],
        block_size=block,
        num_kv_blocks=config["kv_tokens"] // block,
        num_state_slots=config["state_slots"],
        enable_prefix_caching=policy is not None,
        prefix_cache="radix",
        admission=admission,
        eviction=eviction,
        max_num_seqs=config["max_seqs"],
        max_num_batched_tokens=1024,
    )


def _serve(config: dict[str, Any], policy: str | None) -> tuple[LLM, list[Any], dict[str, float]]:
    """The sessions on a fresh engine on a :class:`~core.engine.CpuClock`: the engine, its
    finished requests, and the run's wall and clock seconds."""
    llm = _llm(config, policy)
    clock = CpuClock()
    llm.engine.clock = clock
    t0 = time.perf_counter()
    # users do not think here: a turn follows its predecessor at once (closed loop)
    served = serve_sessions(
        llm.engine,
        sessions(config["sessions"], config["seed"]),
        think_time_scale=0.0,
        sleep=clock.sleep,
    )
    return (
        llm,
        served,
        {"wall_s": time.perf_counter() - t0, "clock_s": clock(), "engine_cpu_s": clock.cpu_s},
    )


def run_point(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Serve the sessions without a cache, then with each policy in ``config["rounds"]``
    interleaved rounds (:func:`core.metrics.rotated_order`); one row per (round, policy), its
    outputs compared with the uncached run's."""
    import torch

    torch.set_num_threads(1)  # one core per point, so two points can share the machine
    llm, served, _ = _serve(config, None)
    cold = {r.request_id: list(r.output_token_ids) for r in served}
    costs = _costs()
    if costs.ssm_state_bytes != llm.model.state_bytes_per_slot(torch.float32):
        raise RuntimeError("ModelSpec and the engine disagree on the SSM state size")
    capacity = (
        config["kv_tokens"] * costs.kv_bytes_per_token
        + config["state_slots"] * costs.ssm_state_bytes
    )
    rows = []
    for position, (rnd, policy) in enumerate(rotated_order(POLICIES, config["rounds"])):
        _, served, times = _serve(config, policy)
        prompt = sum(r.num_prompt_tokens for r in served)
        hit = sum(r.num_cached_tokens for r in served)
        ttft = np.array([r.timeline.first_token_time - r.timeline.arrival_time for r in served])
        same = sum(list(r.output_token_ids) == cold.get(r.request_id) for r in served)
        # the same sequences, replayed through the cache-level driver with one byte budget
        replayed = [
            Request(
                r.request_id,
                float(i),
                r.num_prompt_tokens,
                len(r.output_token_ids),
                prompt_token_ids=list(r.prompt_token_ids),
                output_token_ids=list(r.output_token_ids),
            )
            for i, r in enumerate(sorted(served, key=lambda r: r.timeline.arrival_time))
        ]
        rep = replay_requests(
            replayed,
            capacity_bytes=int(capacity),
            policy=policy,
            costs=costs,
            page_size=_block_size(policy),
            tune=False,
        )
        rows.append(
            {
                "policy": policy,
                "round": rnd,
                "position": position,
                "requests": len(served),
                "real_hit_rate": hit / prompt if prompt else float("nan"),
                "replay_hit_rate": rep.token_hit_rate,
                "ttft_mean_ms": 1e3 * float(ttft.mean()),
                "ttft_p95_ms": 1e3 * float(np.percentile(ttft, 95)),
                "identical_fraction": same / len(served) if served else float("nan"),
                "compared_requests": len(cold),
                **times,
            }
        )
    return rows
