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
turns it off for a model. When every layer of a model can take it, :class:`DecodeStack` runs
them all in one call (``llama_decode_stack``, the same per-layer kernel in a loop): the layers'
Python calls and checks, ~60 us per layer per step, were still 7-9% of a batch-1 decode step
(interleaved A/B, 125M Llama, fp32 and bf16, 1 and 2 threads).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import cpu_ext
from .linear import CppPackedWeight, Linear

if TYPE_CHECKING:
    from core.model.batch import ForwardContext
    from core.model.cache import KVCache
    from core.model.llama import LlamaDecoderLayer

__all__ = ["DecodePlan", "DecodeStack", "bind_decode_stack", "decode_plan", "fused_llama_decode"]

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


@dataclass(frozen=True)
class _Conditions:
    """What must hold at a step for bound arguments to stand for the layers' Python forwards:
    no more rows than every pack's kernel takes, no forward hook (hook dicts are filled in
    place, so holding them sees every new hook), the C++ small-op switches on, the modules
    still holding the bound parameters and packs, every pack valid for its linear's current
    weight. Kept to flat tuples of the modules' own dicts: checked every decode step."""

    kernel_rows: int
    hook_dicts: tuple[dict[Any, Any], ...]
    switches: tuple[Any, ...]  # modules with a ``cpu_kernels`` flag
    bound: tuple[tuple[dict[str, Any], str, Any], ...]  # (a module's dict, name, bound value)
    packs: tuple[tuple[dict[str, Any], CppPackedWeight], ...]  # (linear._parameters, its pack)

    def hold(self, rows: int) -> bool:
        return (
            rows <= self.kernel_rows
            and not any(self.hook_dicts)
            and all(m.cpu_kernels for m in self.switches)
            and all(d.get(name) is value for d, name, value in self.bound)
            and all(p.valid_for(params["weight"]) for params, p in self.packs)
        )

    @staticmethod
    def merge(parts: list[_Conditions]) -> _Conditions:
        return _Conditions(
            min(c.kernel_rows for c in parts),
            tuple(d for c in parts for d in c.hook_dicts),
            tuple(m for c in parts for m in c.switches),
            tuple(b for c in parts for b in c.bound),
            tuple(p for c in parts for p in c.packs),
        )


@dataclass(frozen=True)
class _LayerBinding:
    """One layer's arguments of ``llama_decode_layer`` that do not change between steps, and
    the conditions under which they stand for the layer's Python forward."""

    weights: tuple[torch.Tensor | None, ...]  # norm, qkv, qkv bias, o, o bias, norm, gate_up, down
    sizes: tuple[int, int, int, int, int]  # heads, kv heads, head dim, hidden, intermediate
    eps: float
    scale: float
    window: int
    cache_index: int
    conditions: _Conditions


def _bind(layer: LlamaDecoderLayer, dtype: torch.dtype) -> _LayerBinding | None:
    """``layer`` bound for the fused kernel, or None when it can never take it: per-head q/k
    norms, biases on the MLP, a linear that is not a plain :class:`Linear` with a C++ pack of
    ``dtype`` (another backend, a tensor-parallel shard)."""
    attn, mlp = layer.self_attn, layer.mlp
    norm1, norm2 = layer.input_layernorm, layer.post_attention_layernorm
    if attn.q_norm is not None or norm1.weight.dtype != dtype:
        return None
    linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
    if mlp.gate_up_proj.bias is not None or mlp.down_proj.bias is not None:
        return None
    packs = tuple(lin.packed for lin in linears)
    if any(type(lin) is not Linear for lin in linears):  # a subclass (tensor-parallel) adds work
        return None
    cpp = [p for p in packs if isinstance(p, CppPackedWeight) and p.packed.dtype == dtype]
    if len(cpp) != len(packs):
        return None
    qkv, o, gu, down = cpp
    return _LayerBinding(
        weights=(
            norm1.weight,
            qkv.packed,
            attn.qkv_proj.bias,
            o.packed,
            attn.o_proj.bias,
            norm2.weight,
            gu.packed,
            down.packed,
        ),
        sizes=(
            attn.num_heads,
            attn.num_kv_heads,
            attn.head_dim,
            norm1.weight.shape[0],
            mlp.intermediate_size,
        ),
        eps=norm1.eps,
        scale=attn.scale,
        window=attn.sliding_window or 0,
        cache_index=attn.cache_index,
        conditions=_Conditions(
            kernel_rows=min(p.kernel_rows for p in cpp),
            hook_dicts=tuple(
                d
                for m in (layer, attn, mlp, norm1, norm2, *linears)
                for d in (m._forward_hooks, m._forward_pre_hooks)
            ),
            switches=(attn, mlp, norm1, norm2),
            bound=(
                (norm1._parameters, "weight", norm1.weight),
                (norm2._parameters, "weight", norm2.weight),
                *((lin.__dict__, "packed", p) for lin, p in zip(linears, cpp, strict=True)),
                *((lin._parameters, "bias", lin.bias) for lin in linears[:2]),
            ),
            packs=tuple((lin._parameters, p) for lin, p in zip(linears, cpp, strict=True)),
        ),
    )


def fused_llama_decode(
    layer: LlamaDecoderLayer, h: torch.Tensor, ctx: ForwardContext, plan: DecodePlan
) -> torch.Tensor | None:
    """``layer(h, ctx)`` for a :class:`~core.model.llama.LlamaDecoderLayer` in one C++ call,
    or None when this layer cannot take it (see the module contract)."""
    b = _bind(layer, h.dtype)
    if b is None or not h.is_contiguous() or not b.conditions.hold(plan.rows):
        return None
    kv = ctx.kv()
    out: torch.Tensor = plan.ext.llama_decode_layer(
        h,
        b.weights[0],
        b.eps,
        *b.weights[1:5],
        *b.weights[5:],
        list(b.sizes),
        plan.cos,
        plan.sin,
        kv.k[b.cache_index],
        kv.v[b.cache_index],
        plan.slots,
        plan.token_rows,
        plan.blocks,
        plan.seq_lens,
        b.scale,
        b.window,
    )
    return out


class DecodeStack:
    """All decoder layers of a model bound once to ``llama_decode_stack``: a decode step's
    layers in one C++ call, with their checks made once per step instead of per layer.

    Contract: built by :func:`bind_decode_stack` for one KV cache and dtype, only when every
    layer could take the fused kernel, and used by its caller only with that cache (the model
    keeps it keyed by the cache); :meth:`run` returns what the layers' own forwards return for
    the step, bit for bit (the C++ side runs ``llama_decode_layer`` layer after layer), and may
    be called for a step whenever :meth:`usable` says so (every layer's conditions holding:
    rows, hooks, the C++ small-op switches, the bound parameters and packs, packs valid for
    their weights). Otherwise the caller runs the layers one by one (each may still fuse).
    """

    def __init__(self, bindings: list[_LayerBinding], kv_cache: KVCache) -> None:
        self._weights = [w for b in bindings for w in b.weights]
        self._k = [kv_cache.k[b.cache_index] for b in bindings]
        self._v = [kv_cache.v[b.cache_index] for b in bindings]
        self._eps_scale = [x for b in bindings for x in (b.eps, b.scale)]
        self._windows = [b.window for b in bindings]
        self._sizes = list(bindings[0].sizes)
        self._conditions = _Conditions.merge([b.conditions for b in bindings])

    def usable(self, plan: DecodePlan) -> bool:
        return self._conditions.hold(plan.rows)

    def run(self, h: torch.Tensor, plan: DecodePlan) -> torch.Tensor:
        out: torch.Tensor = plan.ext.llama_decode_stack(
            h.contiguous(),
            self._weights,
            self._k,
            self._v,
            self._eps_scale,
            self._windows,
            self._sizes,
            plan.cos,
            plan.sin,
            plan.slots,
            plan.token_rows,
            plan.blocks,
            plan.seq_lens,
        )
        return out


def bind_decode_stack(
    layers: Iterable[nn.Module], kv_cache: KVCache, dtype: torch.dtype
) -> DecodeStack | None:
    """``layers`` bound for one-call decode steps, or None when a layer can never take the
    fused kernel (not a Llama-family layer, see :func:`_bind`) or the layers differ in shape."""
    from core.model.llama import LlamaDecoderLayer  # llama imports this module

    bindings = []
    for layer in layers:
        b = _bind(layer, dtype) if type(layer) is LlamaDecoderLayer else None
        if b is None:
            return None
        bindings.append(b)
    if not bindings or len({b.sizes for b in bindings}) != 1:
        return None
    return DecodeStack(bindings, kv_cache)
