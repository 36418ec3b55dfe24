"""Building blocks shared by the architectures: RMSNorm, RoPE, the SiLU-gated MLP and paged
attention with grouped-query heads.

Every module works on flattened batches (``[T, ...]``, no batch axis) and reproduces the
arithmetic of transformers' modeling code (where a norm upcasts, where RoPE is computed in
fp32), so fp32 logits match it to rounding. Fused projections (``qkv_proj``, ``gate_up_proj``)
save matmul launches; ``hf_weights(prefix)`` on each module says which Hugging Face tensors,
concatenated along dim 0, make up each of its parameters (the checkpoint loader and saver read
it in both directions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from core.kernels.layer_ops import (
    UsesCpuKernels,
    add_rms_norm,
    apply_rotary,
    apply_rotary_,
    rms_norm,
    silu_mul,
)
from core.kernels.linear import Linear

from .batch import ForwardContext
from .config import ModelConfig, RopeConfig
from .errors import ConfigError

__all__ = [
    "Attention",
    "GatedMLP",
    "GatedRMSNorm",
    "HFWeights",
    "NamesHFWeights",
    "RMSNorm",
    "RotaryEmbedding",
    "apply_rotary",
    "hf_weights_of",
    "nested_hf_weights",
    "rope_inv_freq",
]

# our parameter name -> [(HF tensor name, rows it contributes along dim 0, None = all)]
HFWeights = dict[str, list[tuple[str, int | None]]]


def _same(prefix: str, *names: str) -> HFWeights:
    """Parameters stored under the same relative name in HF checkpoints."""
    return {n: [(prefix + n, None)] for n in names}


@runtime_checkable
class NamesHFWeights(Protocol):
    """A module that says which HF tensors make up its parameters (every layer here does)."""

    def hf_weights(self, prefix: str) -> HFWeights: ...


def hf_weights_of(module: nn.Module, prefix: str) -> HFWeights:
    """``module.hf_weights(prefix)`` for a submodule typed as a bare ``nn.Module`` (an item of
    an ``nn.ModuleList``, a ``getattr``); TypeError if it does not name its weights."""
    if not isinstance(module, NamesHFWeights):
        raise TypeError(f"{type(module).__name__} does not name its HF weights (hf_weights)")
    return module.hf_weights(prefix)


def nested_hf_weights(owner: nn.Module, prefix: str, children: Mapping[str, str]) -> HFWeights:
    """The HF weights of ``owner``'s children, each under ``<child>.``: ``children`` maps our
    child's attribute name to its name in the checkpoint under ``prefix``."""
    out: HFWeights = {}
    for ours, theirs in children.items():
        weights = hf_weights_of(getattr(owner, ours), f"{prefix}{theirs}.")
        out.update({f"{ours}.{k}": v for k, v in weights.items()})
    return out


class RMSNorm(nn.Module, UsesCpuKernels):
    """``weight * x / sqrt(mean(x^2) + eps)``, normalized in fp32, over the last axis."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, fast=self.cpu_kernels)

    def add_and_norm(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x + residual, self(x + residual))``, one pass on the C++ kernel."""
        return add_rms_norm(x, residual, self.weight, self.eps, fast=self.cpu_kernels)

    def hf_weights(self, prefix: str) -> HFWeights:
        return _same(prefix, "weight")


class GatedRMSNorm(nn.Module):
    """Mamba2's output norm: ``x * silu(gate)``, then RMSNorm within groups of channels."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        xf = x.float() * F.silu(gate.float())
        groups = xf.view(*xf.shape[:-1], -1, self.group_size)
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * groups.view_as(xf).to(out_dtype)

    def hf_weights(self, prefix: str) -> HFWeights:
        return _same(prefix, "weight")


def rope_inv_freq(rope: RopeConfig, rotary_dim: int) -> torch.Tensor:
    """Inverse frequencies (fp32, CPU) of the ``rotary_dim / 2`` rotated channel pairs; an
    unsupported ``rope_type`` raises ConfigError."""
    if rope.rope_type not in ("default", "linear", "llama3"):
        raise ConfigError(
            f"config.json: rope type {rope.rope_type!r} is not supported (default, linear, llama3)"
        )
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").float() / rotary_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
        old_len = rope.original_max_position_embeddings
        if old_len is None:
            raise ConfigError(
                "config.json: rope type 'llama3' needs original_max_position_embeddings"
            )
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, blended, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """cos/sin tables for absolute ``positions``, in fp32: ``[T, rotary_dim]`` each.

    The inverse frequencies are a plain CPU tensor, not a buffer, so a model built on the meta
    device and materialized with ``to_empty`` still has them.
    """

    def __init__(self, head_dim: int, rope: RopeConfig) -> None:
        super().__init__()
        self.rotary_dim = int(head_dim * rope.partial_rotary_factor)
        self._inv_freq = rope_inv_freq(rope, self.rotary_dim)
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev = positions.device
        if dev not in self._on_device:
            self._on_device[dev] = self._inv_freq.to(dev)
        freqs = positions.float()[:, None] * self._on_device[dev][None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()

    def extra_repr(self) -> str:
        return f"rotary_dim={self.rotary_dim}"


class GatedMLP(nn.Module, UsesCpuKernels):
    """``down(silu(gate(x)) * up(x))`` with gate and up fused into one matmul.

    ``hf_names`` are the checkpoint names of (gate, up, down): Llama's ``gate_proj``,
    ``up_proj``, ``down_proj``; Mixtral experts' ``w1``, ``w3``, ``w2``.
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        bias: bool = False,
        hf_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
    ) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias)
        self.hf_names = hf_names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_up_proj(x), fast=self.cpu_kernels))

    def hf_weights(self, prefix: str) -> HFWeights:
        gate, up, down = (prefix + n for n in self.hf_names)
        rows = self.intermediate_size
        out: HFWeights = {
            "gate_up_proj.weight": [(f"{gate}.weight", rows), (f"{up}.weight", rows)],
            "down_proj.weight": [(f"{down}.weight", None)],
        }
        if self.down_proj.bias is not None:
            out["gate_up_proj.bias"] = [(f"{gate}.bias", rows), (f"{up}.bias", rows)]
            out["down_proj.bias"] = [(f"{down}.bias", None)]
        return out


class Attention(nn.Module, UsesCpuKernels):
    """Causal self-attention over the paged KV cache, with grouped-query heads.

    Covers the Llama family: optional q/k/v bias (Qwen2), o bias (Llama ``attention_bias``),
    per-head q/k RMSNorm before RoPE (Qwen3), a sliding window (Mistral), partial RoPE (Bamba).
    ``cache_index`` picks this layer's tensors in :class:`~core.model.cache.KVCache`.
    Input and output are ``[T, hidden]``; the new K/V are written to the cache first.
    """

    def __init__(self, config: ModelConfig, layer_id: int, cache_index: int) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.cache_index = cache_index
        self.sliding_window = config.sliding_windows[layer_id]
        self.scale = self.head_dim**-0.5
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.qkv_bias
        )
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=config.o_bias)
        self.q_norm: RMSNorm | None = None  # per-head q/k norms (Qwen3): both or neither
        self.k_norm: RMSNorm | None = None
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(n, self.num_heads, self.head_dim)
        k = k.view(n, self.num_kv_heads, self.head_dim)
        v = v.view(n, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = ctx.rope_tables()
        fast = self.cpu_kernels  # the C++ kernel rotates in place in the qkv output
        q, k = apply_rotary_(q, cos, sin, fast=fast), apply_rotary_(k, cos, sin, fast=fast)

        kv = ctx.kv()
        k_cache, v_cache = kv.k[self.cache_index], kv.v[self.cache_index]
        backend, meta = ctx.attn_backend, ctx.attn_metadata()
        backend.write_kv(k, v, k_cache, v_cache, meta)
        out = backend.forward(
            q, k_cache, v_cache, meta, scale=self.scale, sliding_window=self.sliding_window
        )
        return self.o_proj(out.reshape(n, self.q_size))

    def hf_weights(self, prefix: str) -> HFWeights:
        q, k, v = (f"{prefix}{p}_proj" for p in "qkv")
        sizes = [(q, self.q_size), (k, self.kv_size), (v, self.kv_size)]
        out: HFWeights = {
            "qkv_proj.weight": [(f"{name}.weight", rows) for name, rows in sizes],
            "o_proj.weight": [(f"{prefix}o_proj.weight", None)],
        }
        if self.qkv_proj.bias is not None:
            out["qkv_proj.bias"] = [(f"{name}.bias", rows) for name, rows in sizes]
        if self.o_proj.bias is not None:
            out["o_proj.bias"] = [(f"{prefix}o_proj.bias", None)]
        if self.q_norm is not None:
            out["q_norm.weight"] = [(f"{prefix}q_norm.weight", None)]
            out["k_norm.weight"] = [(f"{prefix}k_norm.weight", None)]
        return out
