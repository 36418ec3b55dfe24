"""The Llama family of dense decoders: Llama (2, 3, 3.1 rope scaling), Mistral (sliding window),
Qwen2 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm).

One pre-norm block, repeated::

    h = h + Attention(RMSNorm(h))
    h = h + GatedMLP(RMSNorm(h))

The families differ only in config switches (biases, q/k norm, windows, RoPE), which
``config_from_hf`` reads from each family's ``config.json`` with that family's defaults.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import CausalLM
from .batch import ForwardContext
from .config import ATTENTION, ModelConfig, check_activation, decode_floats, parse_rope, require
from .layers import Attention, GatedMLP, HFWeights, RMSNorm

__all__ = ["LlamaDecoderLayer", "LlamaForCausalLM", "dense_config_from_hf"]


class LlamaDecoderLayer(nn.Module):
    """Pre-norm attention then pre-norm MLP, each added to the residual stream."""

    def __init__(self, config: ModelConfig, layer_id: int, cache_index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_id, cache_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.mlp_bias)

    def forward(self, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), ctx)
        return h + self.mlp(self.post_attention_layernorm(h))

    def hf_weights(self, prefix: str) -> HFWeights:
        out: HFWeights = {}
        for name in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
            module = getattr(self, name)
            out.update({f"{name}.{k}": v for k, v in module.hf_weights(f"{prefix}{name}.").items()})
        return out


# Per-family defaults of transformers' config classes, for keys a config.json may omit.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
    "mistral": {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "num_key_value_heads": 8,
                "max_position_embeddings": 4096 * 32, "sliding_window": 4096},
    "qwen2": {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "num_key_value_heads": 32,
              "max_position_embeddings": 32768},
    "qwen3": {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "num_key_value_heads": 32,
              "max_position_embeddings": 32768, "head_dim": 128},
    "mixtral": {"rope_theta": 1e6, "rms_norm_eps": 1e-5, "num_key_value_heads": 8,
                "max_position_embeddings": 4096 * 32, "sliding_window": None},
}


def _sliding_windows(hf: dict[str, Any], model_type: str, num_layers: int) -> list[int | None]:
    """Attention window per layer: Mistral/Mixtral apply ``sliding_window`` to every layer;
    Qwen2/Qwen3 to the layers ``layer_types`` marks (or, in older configs, the layers from
    ``max_window_layers`` on when ``use_sliding_window``)."""
    window = hf.get("sliding_window", _DEFAULTS[model_type].get("sliding_window"))
    if model_type in ("mistral", "mixtral"):
        return [window] * num_layers
    if model_type in ("qwen2", "qwen3"):
        types = hf.get("layer_types")
        if types is None:
            use = hf.get("use_sliding_window", False) and window is not None
            first = hf.get("max_window_layers", 28)
            types = ["sliding_attention" if use and i >= first else "full_attention"
                     for i in range(num_layers)]
        return [window if t == "sliding_attention" else None for t in types]
    return [None] * num_layers


def dense_config_from_hf(hf: dict[str, Any], model_type: str | None = None) -> ModelConfig:
    """Parse a Llama/Mistral/Qwen2/Qwen3 (or Mixtral's attention part) ``config.json``."""
    raw = hf
    hf = decode_floats(hf)
    model_type = model_type or require(hf, "model_type")
    defaults = _DEFAULTS[model_type]
    check_activation(hf)
    hidden = require(hf, "hidden_size")
    heads = require(hf, "num_attention_heads")
    layers = require(hf, "num_hidden_layers")
    head_dim = hf.get("head_dim") or defaults.get("head_dim") or hidden // heads
    attention_bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        model_type=model_type,
        vocab_size=require(hf, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=require(hf, "intermediate_size"),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or defaults.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        rms_norm_eps=float(hf.get("rms_norm_eps", defaults["rms_norm_eps"])),
        rope=parse_rope(hf, defaults["rope_theta"]),
        layer_types=(ATTENTION,) * layers,
        sliding_windows=tuple(_sliding_windows(hf, model_type, layers)),
        max_position_embeddings=hf.get(
            "max_position_embeddings", defaults["max_position_embeddings"]
        ),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v bias and never an o bias; Llama's attention_bias sets both.
        qkv_bias=True if model_type == "qwen2" else attention_bias,
        o_bias=attention_bias if model_type in ("llama", "qwen3") else False,
        mlp_bias=bool(hf.get("mlp_bias", False)) if model_type == "llama" else False,
        qk_norm=model_type == "qwen3",
        initializer_range=float(hf.get("initializer_range", 0.02)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
        hf_config=dict(raw),
    )


class LlamaForCausalLM(CausalLM):
    """Llama, Mistral, Qwen2 and Qwen3 checkpoints (see the module docstring)."""

    hf_architectures = {
        "llama": "LlamaForCausalLM",
        "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
    }

    def build_layers(self, config: ModelConfig) -> list[nn.Module]:
        return [LlamaDecoderLayer(config, i, cache_index=i) for i in range(config.num_layers)]

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        return dense_config_from_hf(hf)
