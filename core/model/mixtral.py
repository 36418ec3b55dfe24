"""Mixtral: the Mistral decoder with a sparse mixture-of-experts MLP.

Each token's router picks ``top_k`` of ``num_experts`` SiLU-gated MLPs: softmax over all router
logits (fp32), keep the ``top_k`` largest probabilities, renormalize them to sum to one, and
add up the chosen experts' outputs with those weights.
"""

from __future__ import annotations

import torch
from torch import nn

from core.kernels.linear import Linear

from .base import CausalLM
from .batch import ForwardContext
from .config import ModelConfig, MoEConfig
from .errors import ConfigError
from .layers import Attention, GatedMLP, HFWeights, RMSNorm, hf_weights_of, nested_hf_weights

__all__ = ["MixtralDecoderLayer", "MixtralForCausalLM", "SparseMoE"]


class SparseMoE(nn.Module):
    """Top-k routed experts; input and output ``[T, hidden]``.

    A loop over the experts that received tokens: simple, exact, and fast enough on CPU;
    a grouped-GEMM kernel would replace it on GPUs.
    """

    def __init__(self, hidden_size: int, moe: MoEConfig) -> None:
        super().__init__()
        self.top_k = moe.top_k
        self.gate = Linear(hidden_size, moe.num_experts, bias=False)
        self.experts = nn.ModuleList(
            GatedMLP(hidden_size, moe.intermediate_size, hf_names=("w1", "w3", "w2"))
            for _ in range(moe.num_experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.gate(x).float(), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)  # [T, top_k]
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in chosen.unique().tolist():
            rows, rank = torch.where(chosen == e)
            y = self.experts[e](x[rows]) * weights[rows, rank, None]
            out.index_add_(0, rows, y.to(x.dtype))
        return out

    def hf_weights(self, prefix: str) -> HFWeights:
        out: HFWeights = {"gate.weight": [(f"{prefix}gate.weight", None)]}
        for e, expert in enumerate(self.experts):
            for k, v in hf_weights_of(expert, f"{prefix}experts.{e}.").items():
                out[f"experts.{e}.{k}"] = v
        return out


class MixtralDecoderLayer(nn.Module):
    """Pre-norm attention then pre-norm sparse MoE, each added to the residual stream."""

    def __init__(self, config: ModelConfig, layer_id: int, cache_index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_id, cache_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.moe is None:
            raise ConfigError("a Mixtral layer needs config.moe")
        self.moe = SparseMoE(config.hidden_size, config.moe)

    def forward(self, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), ctx)
        return h + self.moe(self.post_attention_layernorm(h))

    def hf_weights(self, prefix: str) -> HFWeights:
        # HF checkpoints call the MoE block "block_sparse_moe"
        parts = {
            "input_layernorm": "input_layernorm",
            "self_attn": "self_attn",
            "post_attention_layernorm": "post_attention_layernorm",
            "moe": "block_sparse_moe",
        }
        return nested_hf_weights(self, prefix, parts)


class MixtralForCausalLM(CausalLM):
    """Mixtral checkpoints (``model_type`` ``mixtral``, expert weights ``w1``/``w2``/``w3``)."""

    hf_architectures = {"mixtral": "MixtralForCausalLM"}

    def build_layers(self, config: ModelConfig) -> list[nn.Module]:
        return [MixtralDecoderLayer(config, i, cache_index=i) for i in range(config.num_layers)]
