"""A decoder layer's small ops: the torch reference of each and its C++ kernel
(:mod:`core.kernels.cpu_ext`).

At batch 1 a layer's matmuls take a few hundred microseconds, while each small torch op costs
several microseconds of dispatch: the reference RMSNorm is eight ops, RoPE on q and k about
twenty, the gated activation three. Each kernel here does the same arithmetic in one pass
(rounding to the storage dtype where the reference does, so bf16 agrees up to the order of
fp32 sums).

Contract: with ``fast=True`` a function uses the C++ kernel when the extension is built and the
call fits it (CPU, fp32 or bf16, weights in the input's dtype, no autograd), else the
reference; with ``fast=False`` always the reference. Modules opt in through
:class:`UsesCpuKernels` (``CausalLM.set_linear_backend("cpp")`` switches them on).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cpu_ext

__all__ = [
    "UsesCpuKernels",
    "add_rms_norm",
    "apply_rotary",
    "apply_rotary_",
    "rms_norm",
    "silu_mul",
]

_DTYPES = (torch.float32, torch.bfloat16)


class UsesCpuKernels:
    """Mixin for a module whose small ops can run on the C++ CPU kernels; ``cpu_kernels`` is
    set by ``CausalLM.set_linear_backend`` (True for the ``"cpp"`` backend)."""

    cpu_kernels: bool = False


def _fits(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether the C++ kernels can take these tensors (and do not break autograd). Called for
    every small op of every layer: kept to a few attribute reads."""
    dtype = x.dtype
    if dtype not in _DTYPES or x.device.type != "cpu":
        return False
    for t in others:
        if t.dtype != dtype or t.device.type != "cpu":
            return False
    if torch.is_grad_enabled():
        return not (x.requires_grad or any(t.requires_grad for t in others))
    return True


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, fast: bool = False) -> torch.Tensor:
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last axis, normalized in fp32 and
    rounded to ``x.dtype`` before the weight (as transformers' Llama RMSNorm)."""
    if fast and _fits(x, weight) and (ext := cpu_ext.load()) is not None:
        return ext.rms_norm(x, weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, fast: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, rms_norm(s))`` for ``s = x + residual``: the residual add and the next norm."""
    if (
        fast
        and x.shape == residual.shape
        and _fits(x, residual, weight)
        and (ext := cpu_ext.load()) is not None
    ):
        s, normed = ext.add_rms_norm(x, residual, weight, eps)
        return s, normed
    s = x + residual
    return s, rms_norm(s, weight, eps)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of ``x`` ``[T, heads, head_dim]``
    (rotate-half convention, as Llama checkpoints expect); the rest pass through."""
    rot = cos.shape[-1]
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    xr, xpass = x[..., :rot], x[..., rot:]
    x1, x2 = xr[..., : rot // 2], xr[..., rot // 2 :]
    rotated = xr * cos + torch.cat([-x2, x1], dim=-1) * sin
    return torch.cat([rotated, xpass], dim=-1) if xpass.shape[-1] else rotated


def apply_rotary_(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, fast: bool = False
) -> torch.Tensor:
    """:func:`apply_rotary`, in place in ``x`` when the C++ kernel runs (``x`` may be a strided
    view, e.g. q of a fused qkv projection); returns the rotated tensor either way."""
    if (
        fast
        and x.dim() == 3
        and x.stride(2) == 1
        and _fits(x)
        and cos.dtype == sin.dtype == torch.float32
        and (ext := cpu_ext.load()) is not None
    ):
        ext.rotary_(x, cos.contiguous(), sin.contiguous())
        return x
    return apply_rotary(x, cos, sin)


def silu_mul(gate_up: torch.Tensor, fast: bool = False) -> torch.Tensor:
    """``silu(gate) * up`` where ``gate_up`` is ``[..., 2 * I]``: gate first, then up."""
    if fast and _fits(gate_up) and (ext := cpu_ext.load()) is not None:
        return ext.silu_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
