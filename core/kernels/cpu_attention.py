"""The ``"cpp"`` attention backend: decode attention read in place from the paged KV cache.

The torch reference gathers each decode sequence's context blocks into a padded buffer and
calls SDPA with a mask (a dozen ops a layer, and a copy of every context); this backend hands
the block table to one C++ kernel (:mod:`core.kernels.cpu_ext`, ``paged_decode_attention``)
that reads each position's K/V row where it lives, one task per (sequence, kv head) across
torch's intra-op threads. Sequences with a few new tokens (at most
:attr:`~core.kernels.attention.AttentionBackend.max_decode_query_len`, which a speculating
runner raises to ``k + 1`` for its verify steps) go through the same kernel as multi-query
decodes (``paged_multi_query_attention``: the new tokens' query rows scored together against
each K/V row, causal among themselves). The K/V write is one C++ call too. Longer prefills keep
the reference's SDPA path. Same layouts and semantics as :mod:`core.kernels.attention`; tested
against the reference in tests/kernels/.

Runs on CPU for fp32 and bf16 (q and caches in one dtype) when the extension builds; any
other call goes to the reference.
"""

from __future__ import annotations

import math

import torch

from . import cpu_ext
from .attention import PagedAttentionMetadata, TorchPagedAttention, register_attention_backend

__all__ = ["CppPagedAttention"]

_DTYPES = (torch.float32, torch.bfloat16)


@register_attention_backend
class CppPagedAttention(TorchPagedAttention):
    """Decode attention (one new token, or up to ``max_decode_query_len``) by the C++ kernel
    over the block table; longer prefills as the reference."""

    name = "cpp"
    priority = 5
    # the kernel reads only each sequence's own blocks: no padding to trade against calls
    decode_group_cost = math.inf
    in_place_kernel = True

    @classmethod
    def is_available(cls, device: torch.device) -> bool:
        return device.type == "cpu" and cpu_ext.load() is not None

    @staticmethod
    def _fits(*tensors: torch.Tensor) -> bool:
        first = tensors[0]
        return (
            first.device.type == "cpu"
            and first.dtype in _DTYPES
            and all(t.dtype == first.dtype for t in tensors)
            and all(t.stride(-1) == 1 for t in tensors)
        )

    def write_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: PagedAttentionMetadata,
    ) -> None:
        ext = cpu_ext.load()
        if (
            ext is None
            or metadata.write_rows is not None  # padding rows: the reference drops them
            or not self._fits(k, v, k_cache, v_cache)
            or not (k_cache.is_contiguous() and v_cache.is_contiguous())
        ):
            super().write_kv(k, v, k_cache, v_cache, metadata)
            return
        ext.write_kv(k, v, k_cache, v_cache, metadata.write_slots)

    def forward(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: PagedAttentionMetadata,
        *,
        scale: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        ext = cpu_ext.load()
        if (
            ext is None
            or not self._fits(q, k_cache, v_cache)
            or not (k_cache.is_contiguous() and v_cache.is_contiguous())
        ):
            return super().forward(
                q, k_cache, v_cache, metadata, scale=scale, sliding_window=sliding_window
            )
        mq = metadata.in_place
        decoded = sum(g.rows.numel() for g in metadata.decode_groups)
        if mq is not None:
            decoded += int(mq.query_lens.sum())
        # padding rows stay zero rather than uninitialized (as in the reference)
        out = torch.empty_like(q) if decoded == q.shape[0] else torch.zeros_like(q)
        window = sliding_window or 0
        for g in metadata.decode_groups:
            if not g.blocks.is_contiguous():  # the kernel takes a dense table; once per batch
                g.blocks = g.blocks.contiguous()
            ext.paged_decode_attention(
                out, q, k_cache, v_cache, g.rows, g.blocks, g.seq_lens, scale, window
            )
        if mq is not None:
            ext.paged_multi_query_attention(
                out,
                q,
                k_cache,
                v_cache,
                mq.starts,
                mq.query_lens,
                mq.blocks,
                mq.seq_lens,
                scale,
                window,
            )
        skip = frozenset(mq.members) if mq is not None else frozenset()
        self.attend_prefills(out, q, k_cache, v_cache, metadata, scale, sliding_window, skip)
        return out
