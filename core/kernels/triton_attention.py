"""Paged attention in Triton: the ``"triton"`` backend (CUDA; CPU only in Triton's interpreter).

Same layouts and semantics as the torch reference (:mod:`core.kernels.attention`): a decode
kernel (PagedAttention-v1 style) and a FlashAttention-style prefill kernel, each launched only
when its group of sequences is not empty; ``write_kv`` stays in torch. Scores and softmax
accumulate in fp32; float32 inputs match the reference to ~1e-6. Importing this module does not
import Triton (that happens at the first ``forward``); set ``TRITON_INTERPRET`` before Triton is
first imported. ``"auto"`` picks it on CUDA when Triton is installed; on CPU it runs only with
``TRITON_INTERPRET=1`` and only by name (``SERVELAB_ATTENTION_BACKEND=triton``).

The kernels' design and precision in detail: docs/core/kernels.md.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .attention import AttentionBackend, register_attention_backend

__all__ = ["TritonAttentionMetadata", "TritonPagedAttention"]

# Bound by _kernels() on first use; the kernel bodies resolve them as module globals. The
# kernels' annotations stay strings (``from __future__ import annotations``), and a bare
# "constexpr" is the spelling every Triton 3.x recognizes, interpreter included.
triton: Any = None
tl: Any = None
constexpr: Any = None

_NO_WINDOW = 1 << 30  # a window no sequence reaches: one code path with and without a window
_TRUE = ("1", "true", "on", "yes")


def interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


# -- kernels (plain Python until _kernels() wraps them with triton.jit) -------------------


def _paged_decode_kernel(
    out_ptr,
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    seq_ids_ptr,
    scale_log2e,
    window,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_bt,
    PAGE_SIZE: constexpr,
    GROUP: constexpr,
    HEAD_DIM: constexpr,
    BLOCK_H: constexpr,
    BLOCK_D: constexpr,
    BLOCK_N: constexpr,
    F32_DOT: constexpr,
):
    """One decode sequence (its single query row) x one kv head and its GROUP query heads."""
    seq = tl.load(seq_ids_ptr + tl.program_id(0))
    kv_head = tl.program_id(1)
    row = tl.load(query_start_loc_ptr + seq)
    seq_len = tl.load(seq_lens_ptr + seq)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    head_ok = offs_h < GROUP
    dim_ok = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_h
    q = tl.load(
        q_ptr + row.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
        mask=head_ok[:, None] & dim_ok[None, :],
        other=0.0,
    )
    if F32_DOT:
        q = q.to(tl.float32)  # K, V and P follow q's dtype

    # keys lo..seq_len-1 are visible; start at the tile holding lo, so every tile has a key
    lo = tl.maximum(seq_len - window, 0)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for start in range((lo // BLOCK_N) * BLOCK_N, seq_len, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        key_ok = (pos >= lo) & (pos < seq_len)
        page = tl.load(table + pos // PAGE_SIZE, mask=key_ok, other=0).to(tl.int64)
        offset = pos % PAGE_SIZE
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        k = tl.load(
            k_cache_ptr
            + page[:, None] * stride_kb
            + offset[:, None] * stride_ks
            + kv_head * stride_kh
            + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        ).to(q.dtype)
        if F32_DOT:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(key_ok[None, :], s * scale_log2e, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: the tile has a visible key
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_cache_ptr
            + page[:, None] * stride_vb
            + offset[:, None] * stride_vs
            + kv_head * stride_vh
            + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        ).to(q.dtype)
        if F32_DOT:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(
        out_ptr + row.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=head_ok[:, None] & dim_ok[None, :],
    )


def _paged_prefill_kernel(
    out_ptr,
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    seq_ids_ptr,
    scale_log2e,
    window,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_bt,
    PAGE_SIZE: constexpr,
    GROUP: constexpr,
    HEAD_DIM: constexpr,
    BLOCK_M: constexpr,
    BLOCK_D: constexpr,
    BLOCK_N: constexpr,
    F32_DOT: constexpr,
):
    """BLOCK_M new tokens of one prefill sequence x one query head, over the paged context."""
    tile = tl.program_id(0)
    seq = tl.load(seq_ids_ptr + tl.program_id(1))
    head = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if tile * BLOCK_M >= q_len:  # the grid covers the longest chunk of the batch
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    n_cached = seq_len - q_len
    kv_head = head // GROUP
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt

    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < q_len
    dim_ok = offs_d < HEAD_DIM
    q_pos = n_cached + offs_m
    rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(
        q_ptr + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    )
    if F32_DOT:
        q = q.to(tl.float32)  # K, V and P follow q's dtype

    # keys this tile can see: from the window start of its first row to its last row
    lo = tl.maximum(n_cached + tile * BLOCK_M - window + 1, 0)
    hi = tl.minimum(n_cached + (tile + 1) * BLOCK_M, seq_len)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        key_ok = (pos >= lo) & (pos < hi)
        page = tl.load(table + pos // PAGE_SIZE, mask=key_ok, other=0).to(tl.int64)
        offset = pos % PAGE_SIZE
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        k = tl.load(
            k_cache_ptr
            + page[:, None] * stride_kb
            + offset[:, None] * stride_ks
            + kv_head * stride_kh
            + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        ).to(q.dtype)
        if F32_DOT:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        visible = (
            key_ok[None, :]
            & (pos[None, :] <= q_pos[:, None])
            & (pos[None, :] > q_pos[:, None] - window)
        )
        s = tl.where(visible, s * scale_log2e, float("-inf"))
        # a row may see nothing in this tile (window, causal edge): keep its exp2 finite
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_ref)
        p = tl.math.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_cache_ptr
            + page[:, None] * stride_vb
            + offset[:, None] * stride_vs
            + kv_head * stride_vh
            + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        ).to(q.dtype)
        if F32_DOT:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    # every real row saw at least its own key; padded rows are masked on store
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(
        out_ptr + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & dim_ok[None, :],
    )


@functools.cache
def _jit(interpret: bool) -> tuple[Any, Any]:
    global triton, tl, constexpr
    import triton as _triton
    import triton.language as _tl

    triton, tl, constexpr = _triton, _tl, _tl.constexpr
    if interpret and isinstance(tl.zeros, triton.runtime.JITFunction):
        # Triton decorates its own library (tl.zeros, tl.cdiv, ...) at import: those stay
        # compiled-only if TRITON_INTERPRET was not set yet, and fail inside an interpreted kernel
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after triton was imported: set it before the first "
            "`import triton` (e.g. before importing torch._inductor or calling torch.compile)"
        )
    return triton.jit(_paged_decode_kernel), triton.jit(_paged_prefill_kernel)


def _kernels() -> tuple[Any, Any]:
    """(decode, prefill) kernels, compiled or interpreted as ``TRITON_INTERPRET`` says now."""
    return _jit(interpreting())


# -- the backend ---------------------------------------------------------------------------


@dataclass
class TritonAttentionMetadata:
    """Per-batch values shared by every layer: the batch's own tensors, as int32, and which
    sequences go to which kernel."""

    block_size: int
    write_slots: torch.Tensor  # [T'] long: where this step's K/V go (slot -1 rows dropped)
    write_rows: torch.Tensor | None  # [T'] rows of k/v to write; None: all rows, in order
    query_start_loc: torch.Tensor  # [B + 1] int32
    seq_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks] int32
    decode_seqs: torch.Tensor  # [Bd] int32: sequences with one new token
    prefill_seqs: torch.Tensor  # [Bp] int32: sequences with several
    max_prefill_len: int  # longest chunk among the prefill sequences (sizes the grid)
    num_rows: int  # rows that belong to a sequence; rows past it are padding


@register_attention_backend
class TritonPagedAttention(AttentionBackend):
    """Triton kernels for decode and prefill rows over the paged cache (see docs/core/kernels.md).

    ``block_m`` and ``block_n`` override the query and key tile sizes (powers of two, >= 16).
    By default a tile holds 64 keys and up to 64 query rows (fewer for short chunks); 32 for
    float32 or head_dim > 128.
    """

    name = "triton"
    priority = 5  # above the reference; room above it for native kernels (FlashInfer, CUDA)

    def __init__(self, block_m: int | None = None, block_n: int | None = None) -> None:
        for b in (block_m, block_n):
            if b is not None and (b < 16 or b & (b - 1)):
                raise ValueError(f"tile sizes must be powers of two >= 16, got {b}")
        self.block_m = block_m
        self.block_n = block_n

    @classmethod
    def is_available(cls, device: torch.device) -> bool:
        try:
            if importlib.util.find_spec("triton") is None:  # looks, does not import
                return False
        except (ImportError, ValueError):
            return False
        if device.type == "cuda":
            return torch.cuda.is_available()
        return device.type == "cpu" and interpreting()

    @classmethod
    def auto_selectable(cls, device: torch.device) -> bool:
        return device.type == "cuda"  # the CPU interpreter is for tests, never a default

    def build_metadata(
        self,
        query_start_loc: torch.Tensor,
        seq_lens: torch.Tensor,
        block_tables: torch.Tensor,
        slot_mapping: torch.Tensor,
        block_size: int,
        *,
        query_lens_host: Sequence[int] | None = None,
        seq_lens_host: Sequence[int] | None = None,
    ) -> TritonAttentionMetadata:
        device = block_tables.device
        if query_lens_host is None:
            query_lens_host = (query_start_loc[1:] - query_start_loc[:-1]).tolist()
        decode = [b for b, n in enumerate(query_lens_host) if n == 1]
        prefill = [b for b, n in enumerate(query_lens_host) if n > 1]
        write_slots, write_rows = slot_mapping.long(), None
        keep = write_slots >= 0
        if not bool(keep.all()):  # padding rows: one host sync per batch
            write_rows = keep.nonzero().squeeze(1)
            write_slots = write_slots[write_rows]

        def ints(x: Any) -> torch.Tensor:
            return torch.as_tensor(x, dtype=torch.int32, device=device).contiguous()

        return TritonAttentionMetadata(
            block_size=block_size,
            write_slots=write_slots,
            write_rows=write_rows,
            query_start_loc=ints(query_start_loc),
            seq_lens=ints(seq_lens),
            block_tables=ints(block_tables),
            decode_seqs=ints(decode),
            prefill_seqs=ints(prefill),
            max_prefill_len=max((query_lens_host[b] for b in prefill), default=0),
            num_rows=sum(query_lens_host),
        )

    def forward(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: TritonAttentionMetadata,
        *,
        scale: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        num_heads, head_dim = q.shape[1], q.shape[2]
        num_kv_heads, page_size = k_cache.shape[2], k_cache.shape[1]
        if page_size != metadata.block_size:
            raise ValueError(f"cache block size {page_size} != batch's {metadata.block_size}")
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads}")
        group = num_heads // num_kv_heads
        if q.stride(-1) != 1:
            q = q.contiguous()
        if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
            raise ValueError("the KV cache's last (head_dim) dimension must be contiguous")
        # padding rows stay zero, as in the reference; real rows are all written
        out = (torch.empty_like if q.shape[0] == metadata.num_rows else torch.zeros_like)(
            q, memory_format=torch.contiguous_format
        )
        window = _NO_WINDOW if sliding_window is None else int(sliding_window)
        if window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
        decode_kernel, prefill_kernel = _kernels()
        # fp32 dots in IEEE precision (not TF32) for fp32 inputs; and for bf16 when interpreted:
        # the interpreter multiplies the raw bits of bf16 tl.dot operands (triton-lang/triton
        # issue 11584, "not supported yet" in 3.9)
        f32_dot = q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and interpreting())
        block_d = max(16, _next_pow2(head_dim))
        # 64-wide tiles for 16-bit heads up to 128; halved otherwise, so shared memory stays
        # within what consumer GPUs (~100 KB per block) offer
        big = q.element_size() <= 2 and block_d <= 128
        block_n = self.block_n or (64 if big else 32)
        args = (
            out,
            q,
            k_cache,
            v_cache,
            metadata.block_tables,
            metadata.seq_lens,
            metadata.query_start_loc,
        )
        tail = (
            scale * 1.4426950408889634,  # log2(e): the kernels use exp2
            window,
            q.stride(0),
            q.stride(1),
            out.stride(0),
            out.stride(1),
            k_cache.stride(0),
            k_cache.stride(1),
            k_cache.stride(2),
            v_cache.stride(0),
            v_cache.stride(1),
            v_cache.stride(2),
            metadata.block_tables.stride(0),
        )
        consts = dict(
            PAGE_SIZE=page_size,
            GROUP=group,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            BLOCK_N=block_n,
            F32_DOT=f32_dot,
            num_warps=4,
            enable_fp_fusion=True,
        )  # explicit: Triton 3.9 warns if unset
        grid: tuple[int, ...]  # (programs) per axis: 2 for decode, 3 for prefill
        with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
            if metadata.decode_seqs.numel():
                grid = (metadata.decode_seqs.numel(), num_kv_heads)
                decode_kernel[grid](
                    *args,
                    metadata.decode_seqs,
                    *tail,
                    BLOCK_H=max(16, _next_pow2(group)),
                    **consts,
                )
            if metadata.prefill_seqs.numel():
                block_m = self.block_m or min(
                    64 if big else 32, max(16, _next_pow2(metadata.max_prefill_len))
                )
                grid = (
                    triton.cdiv(metadata.max_prefill_len, block_m),
                    metadata.prefill_seqs.numel(),
                    num_heads,
                )
                prefill_kernel[grid](
                    *args,
                    metadata.prefill_seqs,
                    *tail,
                    BLOCK_M=block_m,
                    **consts,
                )
        return out
