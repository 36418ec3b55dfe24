"""A Llama-family decoder layer run as one C++ call during decode steps.

Why: at batch 1 a layer of the 125M Llama streams 6-12 MB of weights in a few hundred
microseconds, and its Python path (module calls, backend checks, a dozen bindings) added a
third to that in bf16 (py-spy, one thread: ~30% of a decode step outside the kernels), where the
weights take half the time of fp32 and the Python path does not shrink.
``llama_decode_layer`` of :mod:`core.kernels.cpu_ext` runs the same kernels in the same order
on the same intermediate tensors as the layer's Python forward with the ``"cpp"`` backends
(RMSNorm, packed qkv, RoPE in place, K/V write, paged decode attention, packed o, residual add +
RMSNorm, packed gate/up, silu * up, packed down, residual add), so it returns bit-identical
results; the Python forward is the reference and the fallback.

Contract: :func:`decode_plan` says, once per forward, whether the batch can take it (pure
decode: one new token per sequence in one decode group of the ``"cpp"`` attention backend, no
padding rows, K/V caches and RoPE tables the kernels take); :func:`fused_llama_decode` then
runs one layer, or returns None when the layer cannot (another linear backend, a pack made
stale by a weight edit, more rows than the packed kernel takes, biases on the MLP, per-head q/k
norms, a forward hook on any of its modules, e.g. a LoRA adapter's, or a tensor-parallel
linear), and the caller runs the Python forward instead. ``CausalLM.fused_decode = False``
turns it off for a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import cpu_ext
from .linear import CppPackedWeight, Linear

if TYPE_CHECKING:
    from core.model.batch import ForwardContext
    from core.model.llama import LlamaDecoderLayer

__all__ = ["DecodePlan", "decode_plan", "fused_llama_decode"]

_DTYPES = (torch.float32, torch.bfloat16)


@dataclass(frozen=True)
class DecodePlan:
    """What every layer of one pure-decode forward passes to the fused kernel."""

    ext: Any
    rows: int
    cos: torch.Tensor
    sin: torch.Tensor
    slots: torch.Tensor
    token_rows: torch.Tensor
    blocks: torch.Tensor
    seq_lens: torch.Tensor


def decode_plan(ctx: ForwardContext, dtype: torch.dtype) -> DecodePlan | None:
    """The per-forward inputs of the fused layer, or None when this batch cannot take it."""
    if ctx.attn_backend.name != "cpp" or ctx.kv_cache is None or ctx.rope is None:
        return None
    if dtype not in _DTYPES or torch.is_grad_enabled() or _global_hooks():
        return None
    ext = cpu_ext.load()
    if ext is None or not hasattr(ext, "llama_decode_layer"):
        return None
    meta = ctx.attn_metadata()
    if meta.prefills or meta.in_place is not None or meta.write_rows is not None:
        return None
    if len(meta.decode_groups) != 1:
        return None
    group = meta.decode_groups[0]
    rows = int(ctx.batch.input_ids.shape[0])
    if group.rows.numel() != rows:
        return None
    k0 = ctx.kv_cache.k[0]
    if k0.dtype != dtype or k0.device.type != "cpu" or not k0.is_contiguous():
        return None
    cos, sin = ctx.rope
    if cos.dtype != torch.float32 or sin.dtype != torch.float32:
        return None
    if not group.blocks.is_contiguous():  # as the backend does: once per batch
        group.blocks = group.blocks.contiguous()
    return DecodePlan(
        ext,
        rows,
        cos.contiguous(),
        sin.contiguous(),
        meta.write_slots,
        group.rows,
        group.blocks,
        group.seq_lens,
    )


def _global_hooks() -> bool:
    m = nn.modules.module
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks)


def _hooked(*modules: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _pack(linear: Linear, rows: int) -> CppPackedWeight | None:
    """``linear``'s C++ pack when a call of ``rows`` rows would run on it."""
    if type(linear) is not Linear:  # a subclass (tensor-parallel) adds work of its own
        return None
    pack = linear.packed
    if not isinstance(pack, CppPackedWeight) or not pack.valid_for(linear.weight):
        return None
    return pack if pack.in_kernel(rows) else None


def fused_llama_decode(
    layer: LlamaDecoderLayer, h: torch.Tensor, ctx: ForwardContext, plan: DecodePlan
) -> torch.Tensor | None:
    """``layer(h, ctx)`` for a :class:`~core.model.llama.LlamaDecoderLayer` in one C++ call,
    or None when this layer cannot take it (see the module contract)."""
    attn, mlp = layer.self_attn, layer.mlp
    norm1, norm2 = layer.input_layernorm, layer.post_attention_layernorm
    if not (attn.cpu_kernels and mlp.cpu_kernels and norm1.cpu_kernels and norm2.cpu_kernels):
        return None
    if attn.q_norm is not None or h.dtype != norm1.weight.dtype or not h.is_contiguous():
        return None
    qkv_l, o_l, gu_l, down_l = attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj
    if gu_l.bias is not None or down_l.bias is not None:
        return None
    if _hooked(layer, attn, mlp, norm1, norm2, qkv_l, o_l, gu_l, down_l):
        return None
    rows = plan.rows
    qkv, o, gu, down = (_pack(m, rows) for m in (qkv_l, o_l, gu_l, down_l))
    if qkv is None or o is None or gu is None or down is None or qkv.dtype != h.dtype:
        return None
    kv = ctx.kv()
    out: torch.Tensor = plan.ext.llama_decode_layer(
        h,
        norm1.weight,
        norm1.eps,
        qkv.packed,
        qkv_l.bias,
        o.packed,
        o_l.bias,
        norm2.weight,
        gu.packed,
        down.packed,
        [attn.num_heads, attn.num_kv_heads, attn.head_dim, h.shape[1], mlp.intermediate_size],
        plan.cos,
        plan.sin,
        kv.k[attn.cache_index],
        kv.v[attn.cache_index],
        plan.slots,
        plan.token_rows,
        plan.blocks,
        plan.seq_lens,
        attn.scale,
        attn.sliding_window or 0,
    )
    return out
