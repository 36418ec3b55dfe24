"""Real mode: a small Mixtral-family model split over 2 processes on this CPU (rank 0: the
attention side with the KV cache, rank 1: the experts), m = 1, 2, 3 micro-batches against the
colocated model in the same process, interleaved in rounds (:mod:`core.dist.disagg`)."""

from __future__ import annotations

import random
from typing import Any

MODELS: dict[str, dict[str, Any]] = {
    # tiny-mixtral's shape: messages dominate (a smoke check of the mechanics)
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4},
    # large enough that a layer's work is not all Python and message overhead; experts this
    # narrow keep the two sides' times within ~2x of each other on this CPU
    "small": {"hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 4, "num_local_experts": 8},
}  # fmt: skip
_BASE = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "vocab_size": 512,
         "max_position_embeddings": 1024, "sliding_window": None, "num_experts_per_tok": 2,
         "tie_word_embeddings": False}  # fmt: skip


def model_config(name: str) -> dict[str, Any]:
    return _BASE | MODELS[name]


def run_real(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Start 2 gloo ranks, run the interleaved rounds, and return one row per run (``kind``
    ``run``) and the measured slots of each ``m``'s last decode step of round 0 (``slot``)."""
    from core.dist import LocalGroup
    from core.dist.disagg import disaggregated_benchmark

    rng = random.Random(config["seed"])
    prompts = [
        [rng.randrange(_BASE["vocab_size"]) for _ in range(config["prompt_len"])]
        for _ in range(config["batch"])
    ]
    ms = [int(x) for x in str(config["ms"]).split(",")]
    cfg = model_config(config["model"])
    with LocalGroup(2, timeout_s=300, num_threads=1) as group:
        attn, expert = group.run(
            disaggregated_benchmark,
            cfg,
            config["seed"],
            prompts,
            config["new_tokens"],
            ms,
            config["rounds"],
        )
    rows: list[dict[str, Any]] = [{"kind": "run", **r} for r in attn["rows"]]
    layers = cfg["num_hidden_layers"]
    run_m = {r["run"]: r["m"] for r in attn["rows"] if r["round"] == 0 and r["m"] > 0}
    for slots in (attn["timeline"], expert["timeline"]):
        for run, m in run_m.items():
            mine = [s for s in slots if s["run"] == run]
            last_step = mine[-layers * m :]  # both sides record in step order
            rows += [{"kind": "slot", "m": m, **{k: v for k, v in s.items() if k != "run"}}
                     for s in last_step]  # fmt: skip
    return rows
