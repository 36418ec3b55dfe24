"""The ``"cpp"`` attention backend: paged attention read in place from the KV cache.

The torch reference gathers each sequence's context blocks into a padded buffer and calls SDPA
(with a mask) per decode group and per prefill sequence; this backend hands the block tables to
C++ kernels (:mod:`core.kernels.cpu_ext`) that read each position's K/V row where it lives,
across torch's intra-op threads:

- decodes (one new token): ``paged_decode_attention``, one task per (sequence, kv head);
- sequences with a few new tokens (at most
  :attr:`~core.kernels.attention.AttentionBackend.max_decode_query_len`, which a speculating
  runner raises to ``k + 1`` for its verify steps): the same kernel as multi-query decodes
  (``paged_multi_query_attention``: the new tokens' query rows scored together against each
  K/V row, causal among themselves);
- every other prefill (a prompt, a chunk of one, a prompt after a prefix-cache hit):
  ``paged_prefill_attention``, a tiled FlashAttention-style kernel (tasks of a sequence, a kv
  head and a block of query positions; S = Q K^T and O += P V as register-blocked outer
  products, online softmax in fp32), from :attr:`PagedAttentionMetadata.kernel_prefills`.

The K/V write is one C++ call too. Same layouts and semantics as :mod:`core.kernels.attention`;
tested against the reference in tests/kernels/.

Runs on CPU for fp32 and bf16 (q and caches in one dtype) when the extension builds; any
other call goes to the reference. ``prefill_kernel = False`` sends the prefills to the
reference's SDPA path (for A/B measurements).
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
    """Decode, multi-query and prefill attention by the C++ kernels over the block table;
    the reference for inputs they do not take (another device or dtype, no extension)."""

    name = "cpp"
    priority = 5
    # the kernel reads only each sequence's own blocks: no padding to trade against calls
    decode_group_cost = math.inf
    in_place_kernel = True
    # False: prefills take the reference's SDPA path (the old path, for A/B measurements)
    prefill_kernel: bool = True

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
        pf = metadata.kernel_prefills if self.prefill_kernel else None
        covered = sum(g.rows.numel() for g in metadata.decode_groups)
        covered += sum(end - start for start, end, _, _ in metadata.prefills)
        # padding rows stay zero rather than uninitialized (as in the reference)
        out = torch.empty_like(q) if covered == q.shape[0] else torch.zeros_like(q)
        window = sliding_window or 0
        for g in metadata.decode_groups:
            if not g.blocks.is_contiguous():  # the kernel takes a dense table; once per batch
                g.blocks = g.blocks.contiguous()
            ext.paged_decode_attention(
                out, q, k_cache, v_cache, g.rows, g.blocks, g.seq_lens, scale, window
            )
        for kernel, group in (
            (ext.paged_multi_query_attention, mq),
            (ext.paged_prefill_attention, pf),
        ):
            if group is not None:
                kernel(
                    out,
                    q,
                    k_cache,
                    v_cache,
                    group.starts,
                    group.query_lens,
                    group.blocks,
                    group.seq_lens,
                    scale,
                    window,
                )
        if pf is None:
            skip = frozenset(mq.members) if mq is not None else frozenset()
            self.attend_prefills(out, q, k_cache, v_cache, metadata, scale, sliding_window, skip)
        return out
