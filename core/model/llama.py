"""The Llama family of dense decoders: Llama (2, 3, 3.1 rope scaling), Mistral (sliding window),
Qwen2 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm).

One pre-norm block, repeated::

    h = h + Attention(RMSNorm(h))
    h = h + GatedMLP(RMSNorm(h))

The families differ only in config switches (biases, q/k norm, windows, RoPE), which
:func:`core.model.config.config_from_hf` reads from each family's ``config.json``.
"""

from __future__ import annotations

import torch
from torch import nn

from core.kernels.fused_layer import fused_llama_decode

from .base import CausalLM
from .batch import ForwardContext
from .config import ModelConfig
from .layers import Attention, GatedMLP, HFWeights, RMSNorm, nested_hf_weights

__all__ = ["LlamaDecoderLayer", "LlamaForCausalLM"]


class LlamaDecoderLayer(nn.Module):
    """Pre-norm attention then pre-norm MLP, each added to the residual stream."""

    def __init__(self, config: ModelConfig, layer_id: int, cache_index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_id, cache_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.mlp_bias)

    def forward(self, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        plan = ctx.decode_plan
        if plan is not None and (out := fused_llama_decode(self, h, ctx, plan)) is not None:
            return out
        attn = self.self_attn(self.input_layernorm(h), ctx)
        h, x = self.post_attention_layernorm.add_and_norm(h, attn)
        return h + self.mlp(x)

    def hf_weights(self, prefix: str) -> HFWeights:
        names = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
        return nested_hf_weights(self, prefix, {n: n for n in names})


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
