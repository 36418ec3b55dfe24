"""The MoE models and GPU prices of the paper-scale experiments.

Shapes: Mixtral-8x22B and DBRX as their Hugging Face ``config.json`` files give them (DBRX is
priced through the Mixtral family: its clipped QKV and LayerNorm do not change the bytes and
FLOPs that matter here); ``scaled-moe`` is *our* stand-in for the paper's unreleased ~317B
model (32 experts, top-4; ~0.3T parameters), not its published shape.
"""

from __future__ import annotations

from functools import cache

from core.model.spec import ModelSpec

_MIXTRAL = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "hidden_act": "silu",
            "sliding_window": None, "tie_word_embeddings": False, "rms_norm_eps": 1e-5}  # fmt: skip

CONFIGS: dict[str, dict[str, object]] = {
    # mistralai/Mixtral-8x22B-v0.1: ~141B parameters, ~39B active (top-2 of 8).
    "mixtral-8x22b": _MIXTRAL
    | {
        "vocab_size": 32768,
        "hidden_size": 6144,
        "intermediate_size": 16384,
        "num_hidden_layers": 56,
        "num_attention_heads": 48,
        "num_key_value_heads": 8,
        "max_position_embeddings": 65536,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
    },
    # databricks/dbrx-base: ~132B parameters, ~36B active (top-4 of 16 fine-grained experts).
    "dbrx": _MIXTRAL
    | {
        "vocab_size": 100352,
        "hidden_size": 6144,
        "intermediate_size": 10752,
        "num_hidden_layers": 40,
        "num_attention_heads": 48,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "num_local_experts": 16,
        "num_experts_per_tok": 4,
    },
    # Our stand-in for the paper's large internal MoE (see the module doc).
    "scaled-moe": _MIXTRAL
    | {
        "vocab_size": 65536,
        "hidden_size": 6144,
        "intermediate_size": 8192,
        "num_hidden_layers": 64,
        "num_attention_heads": 48,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "num_local_experts": 32,
        "num_experts_per_tok": 4,
    },
}

# Assumed on-demand prices in dollars per GPU-hour, round numbers in the range public GPU
# clouds listed in 2025; only their ratios matter (per-dollar comparisons). Change them here.
PRICES: dict[str, float] = {"a100-80g": 1.80, "h100-sxm": 3.00, "l40s": 1.00}


@cache
def spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of one of :data:`CONFIGS`; ValueError naming the known ones."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(CONFIGS)}")
    return ModelSpec.from_hf_config(dict(CONFIGS[name]), name=name)
