"""Presets: ``config.json`` contents with published shapes, by name, for
:meth:`~core.model.spec.ModelSpec.from_preset` and for building random models; no weights.

:data:`PRESETS` is read-only (lists appear as tuples); :func:`preset_config` gives a fresh
``dict`` to edit, to pass to transformers (``AutoConfig.for_model(**cfg)``) or to write to disk.
Names are case-insensitive, ``_`` and ``-`` alike; a preset copied from a hub model also answers
to its Hugging Face repo id. :func:`llama_config` writes a Llama ``config.json`` dict from its
dimensions, for shapes that are not presets.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["PRESETS", "llama_config", "preset_config", "preset_key", "preset_names"]

# fmt: off
_CONFIGS: dict[str, dict[str, Any]] = {
    # meta-llama/Meta-Llama-3-8B: 8,030,261,248 parameters.
    "llama-3-8b": {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
    },
    # meta-llama/Llama-2-7b-hf: 6,738,415,616 parameters (MHA).
    "llama-2-7b": {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32000,
        "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
    },
    # meta-llama/Llama-2-70b-hf: 68,976,648,192 parameters.
    "llama-2-70b": {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32000,
        "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "hidden_act": "silu",
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
    },
    # meta-llama/Meta-Llama-3-70B: 70,553,706,496 parameters.
    "llama-3-70b": {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
        "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "hidden_act": "silu",
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
    },
    # mistralai/Mistral-7B-v0.1: 7,241,732,096 parameters, 4096-token sliding window.
    "mistral-7b": {
        "model_type": "mistral", "architectures": ["MistralForCausalLM"], "vocab_size": 32000,
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "sliding_window": 4096, "tie_word_embeddings": False,
    },
    # mistralai/Mixtral-8x7B-v0.1: 46,702,792,704 parameters, ~12.9e9 active (top-2 of 8).
    "mixtral-8x7b": {
        "model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "vocab_size": 32000,
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
        "sliding_window": None, "num_local_experts": 8, "num_experts_per_tok": 2,
        "tie_word_embeddings": False,
    },
    # Qwen/Qwen2-7B: 7,615,616,512 parameters; q/k/v biases.
    "qwen2-7b": {
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 152064,
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu",
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "use_sliding_window": False, "sliding_window": 131072, "max_window_layers": 28,
        "tie_word_embeddings": False,
    },
    # Qwen/Qwen3-8B: 8,190,735,360 parameters; q/k RMSNorm, explicit head_dim.
    "qwen3-8b": {
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936,
        "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
        "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": 36, "tie_word_embeddings": False,
    },
    # ibm-ai-platform/Bamba-9B: 32 layers, attention at 9, 18, 27, Mamba2 elsewhere, each
    # followed by a SwiGLU MLP; ~9.78e9 parameters.
    "bamba-9b": {
        "model_type": "bamba", "architectures": ["BambaForCausalLM"], "vocab_size": 128256,
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "attn_layer_indices": [9, 18, 27],
        "mamba_n_heads": 128, "mamba_d_head": 64, "mamba_d_state": 128, "mamba_n_groups": 1,
        "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256, "mamba_conv_bias": True,
        "mamba_proj_bias": False, "hidden_act": "silu", "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-05, "tie_word_embeddings": False,
    },
    # Marconi's default 7B Attention-Mamba2 hybrid (MLSys'25): 4 attention, 24 Mamba2 and 28 MLP
    # layers, d = 4096, state n = 128, written NemotronH-style (one block per layer; attention
    # every 7th (mixer, MLP) pair from the 4th: where they sit changes no count). Chosen to match
    # the paper's formulas: multi-head attention (32 KV heads: KV = 2*2*d bytes per token per
    # layer in fp16), a non-gated 4d MLP (16*d^2 FLOPs per token), Mamba2 with expand 2, 1 group,
    # conv kernel 4. The vocabulary (32000) is our assumption (the paper's formulas do not
    # involve it); with it the model has ~6.7e9 parameters.
    "marconi-hybrid-7b": {
        "model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"], "vocab_size": 32000,
        "hidden_size": 4096, "num_hidden_layers": 56,
        "hybrid_override_pattern": "M-M-M-*-M-M-M-M-M-M-*-M-M-M-M-M-M-*-M-M-M-M-M-M-*-M-M-M-",
        "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128,
        "intermediate_size": 16384, "mlp_hidden_act": "relu2", "mamba_num_heads": 128,
        "mamba_head_dim": 64, "ssm_state_size": 128, "n_groups": 1, "conv_kernel": 4, "expand": 2,
        "chunk_size": 128, "use_conv_bias": True, "use_bias": False, "mlp_bias": False,
        "max_position_embeddings": 32768, "tie_word_embeddings": False,
    },
    # A ~125M Llama for real-mode CPU runs: 124,668,672 parameters.
    "tiny-llama-125m": {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32000,
        "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
        "num_attention_heads": 12, "num_key_value_heads": 4, "hidden_act": "silu",
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False, "head_dim": 64,
    },
    # Tiny configs for tests (random-initialised models build in milliseconds).
    "tiny-mixtral": {
        "model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "vocab_size": 256,
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "sliding_window": None, "num_local_experts": 4, "num_experts_per_tok": 2,
        "tie_word_embeddings": False,
    },
    "tiny-bamba": {
        "model_type": "bamba", "architectures": ["BambaForCausalLM"], "vocab_size": 256,
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "attn_layer_indices": [1],
        "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_d_state": 16, "mamba_n_groups": 1,
        "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 16,
        "max_position_embeddings": 512, "tie_word_embeddings": False,
    },
    "tiny-nemotron-h": {
        "model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"], "vocab_size": 256,
        "hidden_size": 64, "num_hidden_layers": 6, "hybrid_override_pattern": "M-*-ME",
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "intermediate_size": 128, "mlp_hidden_act": "relu2", "mamba_num_heads": 8,
        "mamba_head_dim": 16, "ssm_state_size": 16, "n_groups": 2, "conv_kernel": 4, "expand": 2,
        "chunk_size": 16, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "moe_intermediate_size": 32, "moe_shared_expert_intermediate_size": 64,
        "n_shared_experts": 1, "max_position_embeddings": 512, "tie_word_embeddings": False,
    },
}
# fmt: on

_HF_IDS = {
    "meta-llama/meta-llama-3-8b": "llama-3-8b",
    "meta-llama/llama-2-7b-hf": "llama-2-7b",
    "meta-llama/llama-2-70b-hf": "llama-2-70b",
    "meta-llama/meta-llama-3-70b": "llama-3-70b",
    "mistralai/mistral-7b-v0.1": "mistral-7b",
    "mistralai/mixtral-8x7b-v0.1": "mixtral-8x7b",
    "qwen/qwen2-7b": "qwen2-7b",
    "qwen/qwen3-8b": "qwen3-8b",
    "ibm-ai-platform/bamba-9b": "bamba-9b",
    "ibm-fms/bamba-9b": "bamba-9b",
}


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


PRESETS: Mapping[str, Mapping[str, Any]] = _freeze(_CONFIGS)
"""Read-only ``config.json`` contents of the presets, by name."""


def preset_names() -> list[str]:
    """The names of the presets, sorted."""
    return sorted(PRESETS)


def preset_key(name: str) -> str:
    """The preset ``name`` refers to; ValueError listing the known names if none."""
    key = str(name).strip().lower().replace("_", "-")
    if key in PRESETS:
        return key
    hf_id = str(name).strip().lower()
    if hf_id in _HF_IDS:
        return _HF_IDS[hf_id]
    raise ValueError(
        f"unknown preset {name!r}; known presets: {', '.join(preset_names())} "
        f"(or their Hugging Face ids: {', '.join(sorted(_HF_IDS))})"
    )


def preset_config(name: str) -> dict[str, Any]:
    """A fresh ``config.json`` dict of preset ``name``."""
    return _thaw(PRESETS[preset_key(name)])


def llama_config(
    *,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    vocab_size: int,
    max_position_embeddings: int,
    num_kv_heads: int | None = None,
    head_dim: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A fresh ``config.json`` dict of a Llama (``LlamaForCausalLM``) with these dimensions.

    ``num_kv_heads`` defaults to ``num_heads`` (multi-head attention); ``head_dim`` is written
    only when given (else readers take ``hidden_size // num_heads``). The rest is fixed: SiLU,
    ``rms_norm_eps`` 1e-5, ``rope_theta`` 10000.0, no attention or MLP biases, untied embeddings.
    ``extra`` keys (e.g. ``bos_token_id``) come last; one named like a fixed key replaces its
    value. Keys are in this order: ``model_type``, ``architectures``, ``vocab_size``,
    ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``num_key_value_heads``, [``head_dim``], ``hidden_act``, ``max_position_embeddings``,
    ``rms_norm_eps``, ``rope_theta``, ``attention_bias``, ``mlp_bias``,
    ``tie_word_embeddings``, then ``extra``. No value is checked (the parser,
    :func:`core.model.config.config_from_hf`, does that)."""
    cfg: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_heads if num_kv_heads is None else num_kv_heads,
    }
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    cfg.update(
        hidden_act="silu",
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
    )
    cfg.update(extra)
    return cfg
