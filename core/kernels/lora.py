"""LoRA products for a batch whose rows use different adapters: torch references of the two
kernel shapes multi-adapter servers use.

An adapter's delta on a linear layer is ``(x @ A.T) @ B.T`` (``A`` ``[r, in]``, ``B`` ``[out, r]``,
the scaling folded into ``B``). Adapters sit in stacked slots: ``a`` ``[S, R, in]`` and ``b``
``[S, out, R]`` (ranks below ``R`` padded with zeros, which add exact zeros). Each row of ``x``
names its slot (-1: no adapter). Two ways to batch the products:

- **gather-BMM** (Punica's BGMV, for decode): gather every row's ``A``/``B`` and run one batched
  matrix-vector product per row (:func:`bgmv_shrink`, :func:`bgmv_expand`);
- **segmented GEMM** (Punica/S-LoRA's SGMV): one dense product per adapter over the rows that
  use it (:func:`sgmv_shrink`, :func:`sgmv_expand`), rows given as :class:`Segment` lists from
  :func:`segments_of`.

Both compute ``shrink`` (``x -> x @ A.T``, ``[T, R]``) then ``expand`` (``out += xa @ B.T``) and
agree up to fp rounding; rows without an adapter get exactly zero. Device-agnostic torch; a
fast kernel (Triton, C++) belongs beside these and is tested against them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "Segment",
    "bgmv_expand",
    "bgmv_shrink",
    "lora_delta_reference",
    "segments_of",
    "sgmv_expand",
    "sgmv_shrink",
]


@dataclass(frozen=True)
class Segment:
    """The rows of one adapter slot: a contiguous ``slice`` when they are (no gather needed),
    else a long tensor of row indices."""

    slot: int
    rows: slice | torch.Tensor


def segments_of(slots: Sequence[int], device: torch.device | str = "cpu") -> list[Segment]:
    """Group row indices by slot (rows with slot -1 are left out), in order of first use."""
    rows: dict[int, list[int]] = {}
    for i, s in enumerate(slots):
        if s >= 0:
            rows.setdefault(int(s), []).append(i)
    out = []
    for slot, idx in rows.items():
        if idx[-1] - idx[0] + 1 == len(idx):
            out.append(Segment(slot, slice(idx[0], idx[-1] + 1)))
        else:
            out.append(Segment(slot, torch.tensor(idx, dtype=torch.long, device=device)))
    return out


def sgmv_shrink(x: torch.Tensor, a: torch.Tensor, segments: Sequence[Segment]) -> torch.Tensor:
    """``[T, R]``: each segment's rows times its slot's ``A`` transposed; zeros elsewhere."""
    xa = x.new_zeros(x.shape[0], a.shape[1])
    for seg in segments:
        xa[seg.rows] = x[seg.rows] @ a[seg.slot].T
    return xa


def sgmv_expand(
    xa: torch.Tensor, b: torch.Tensor, segments: Sequence[Segment], out: torch.Tensor
) -> torch.Tensor:
    """``out[rows] += xa[rows] @ B[slot].T`` for each segment, in place; returns ``out``."""
    for seg in segments:
        delta = xa[seg.rows] @ b[seg.slot].T
        if isinstance(seg.rows, slice):
            out[seg.rows] += delta
        else:
            out.index_add_(0, seg.rows, delta)
    return out


def bgmv_shrink(x: torch.Tensor, a: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``[T, R]``: row ``t`` times ``A[slots[t]]`` transposed (zero where ``slots[t] < 0``)."""
    keep = (slots >= 0).to(x.dtype).unsqueeze(-1)
    gathered = a[slots.clamp(min=0)]  # [T, R, in]
    return torch.bmm(gathered, x.unsqueeze(-1)).squeeze(-1) * keep


def bgmv_expand(
    xa: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """``out[t] += B[slots[t]] @ xa[t]`` for rows with a slot, in place; returns ``out``."""
    keep = (slots >= 0).to(xa.dtype).unsqueeze(-1)
    gathered = b[slots.clamp(min=0)]  # [T, out, R]
    out += torch.bmm(gathered, xa.unsqueeze(-1)).squeeze(-1) * keep
    return out


def lora_delta_reference(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: Sequence[int]):
    """The definition, one row at a time: ``[T, out]`` deltas (tests compare against it)."""
    out = x.new_zeros(x.shape[0], b.shape[1])
    for t, s in enumerate(slots):
        if s >= 0:
            out[t] = (x[t] @ a[s].T) @ b[s].T
    return out
