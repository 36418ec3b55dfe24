"""Paged attention over a flattened varlen batch: the torch reference and the backend registry.

Layout (vLLM v1 style; every tensor on the model's device):

- ``q``: ``[T, num_heads, head_dim]``, the new tokens of all sequences concatenated;
  ``k``, ``v``: ``[T, num_kv_heads, head_dim]``.
- ``k_cache``, ``v_cache``: ``[num_blocks, block_size, num_kv_heads, head_dim]``, one pair per
  attention layer. Token ``i`` of a sequence lives in block ``block_tables[b, i // block_size]``
  at offset ``i % block_size``, i.e. flat slot ``block * block_size + offset``.
- ``query_start_loc``: ``[B + 1]`` int, cumulative count of new tokens; sequence ``b`` owns rows
  ``query_start_loc[b]:query_start_loc[b + 1]``.
- ``seq_lens``: ``[B]`` int, tokens of each sequence after this step (cached context + new).
  The new tokens of sequence ``b`` are its last ones: positions
  ``seq_lens[b] - query_len[b] ... seq_lens[b] - 1``.
- ``block_tables``: ``[B, max_blocks]`` int, padded with -1.
- ``slot_mapping``: ``[T]`` long, the flat slot each new token's K/V is written to; -1 skips
  the row (padding tokens).

Semantics: new K/V are written first, then every query attends to its sequence's keys at
positions ``<= its own`` (causal, bottom-right aligned), and, with ``sliding_window=W``, only to
the last ``W`` of them (``key_pos > query_pos - W``, as Mistral and transformers define it).
Grouped-query attention maps query head ``h`` to kv head ``h // (num_heads // num_kv_heads)``.

Backends. :class:`AttentionBackend` is the contract a fast kernel (Triton, CUDA, FlashInfer)
implements; :class:`TorchPagedAttention` is the reference every backend is tested against
(``tests/kernels/test_attention.py`` runs the same cases over every backend available on the
machine). Selection, in order: the ``name`` passed to :func:`get_attention_backend`, else the
``SERVELAB_ATTENTION_BACKEND`` environment variable, else ``"auto"``: the available backend
with the highest ``priority``. To add a backend: subclass :class:`AttentionBackend`, give it a
``name``, a ``priority`` above 0 and an ``is_available(device)`` that checks its imports and the
device, decorate it with :func:`register_attention_backend`, and import its module from
``core/kernels/__init__.py`` inside a ``try`` so a machine without Triton still imports.
``"auto"`` skips backends whose ``auto_selectable(device)`` is False (Triton on CPU runs only in
its interpreter). :mod:`core.kernels.triton_attention` imports Triton lazily, so it is imported
at the end of this module and registers wherever the registry is used.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

__all__ = [
    "ATTENTION_BACKEND_ENV",
    "AttentionBackend",
    "PagedAttentionMetadata",
    "TorchPagedAttention",
    "attention_backends",
    "get_attention_backend",
    "paged_attention",
    "register_attention_backend",
]

ATTENTION_BACKEND_ENV = "SERVELAB_ATTENTION_BACKEND"


@dataclass
class PagedAttentionMetadata:
    """What the torch reference precomputes once per batch and reuses in every layer.

    Sequences with exactly one new token (decode steps) are attended together in one padded
    batch; the others (prefill chunks) one at a time, each against its gathered context.
    """

    block_size: int
    # where this step's K/V go; rows with slot -1 are dropped once here, not in every layer
    write_slots: torch.Tensor  # [T'] long
    write_rows: torch.Tensor | None  # [T'] rows of k/v to write; None: all rows, in order
    # decode group: one row per sequence with a single new token
    decode_rows: torch.Tensor  # [Bd] long: the token row of each decode sequence
    decode_blocks: torch.Tensor  # [Bd, Nb] long: cache blocks of each context (padded with 0)
    decode_key_pos: torch.Tensor  # [Nb * block_size] long: 0..Nb*block_size-1
    decode_seq_lens: torch.Tensor  # [Bd] long
    # prefill group: (first row, end row, cache blocks of the context, context length)
    prefills: list[tuple[int, int, torch.Tensor, int]]
    # (sliding window) -> boolean masks, built on first use and shared by the layers
    _decode_masks: dict[int | None, torch.Tensor] = field(default_factory=dict)
    _prefill_masks: dict[tuple[int, int | None], torch.Tensor] = field(default_factory=dict)
    # (dtype, row width) -> K and V gather buffers, allocated once per batch, reused by layers
    _decode_buffers: dict[tuple[torch.dtype, int], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict
    )

    @classmethod
    def build(
        cls,
        query_start_loc: torch.Tensor,
        seq_lens: torch.Tensor,
        block_tables: torch.Tensor,
        slot_mapping: torch.Tensor,
        block_size: int,
        *,
        query_lens_host: Sequence[int] | None = None,
        seq_lens_host: Sequence[int] | None = None,
    ) -> PagedAttentionMetadata:
        """Split the batch into decode and prefill sequences and map positions to slots.

        ``*_host`` are the same lengths as Python lists when the caller has them (the engine
        does), which saves a device-to-host copy.
        """
        device = block_tables.device
        if query_lens_host is None:
            query_lens_host = (query_start_loc[1:] - query_start_loc[:-1]).tolist()
        if seq_lens_host is None:
            seq_lens_host = seq_lens.tolist()
        starts = [0]
        for n in query_lens_host:
            starts.append(starts[-1] + n)
        tables = block_tables.long()

        def nblocks(n: int) -> int:
            return -(-n // block_size)

        # contexts are gathered block by block (contiguous block_size * heads * dim copies),
        # far cheaper on CPU than gathering token slots one by one
        decode = [b for b, n in enumerate(query_lens_host) if n == 1]
        prefills = [
            (starts[b], starts[b + 1], tables[b, : nblocks(seq_lens_host[b])], seq_lens_host[b])
            for b, n in enumerate(query_lens_host)
            if n > 1
        ]
        nb = max((nblocks(seq_lens_host[b]) for b in decode), default=0)
        key_pos = torch.arange(nb * block_size, device=device)
        if decode:
            idx = torch.tensor(decode, device=device)
            # Pad every decode row to the longest context; padded blocks read block 0 (any
            # valid memory) and are masked out.
            decode_blocks = tables[idx][:, :nb].clamp(min=0)
            decode_lens = torch.tensor([seq_lens_host[b] for b in decode], device=device)
            decode_rows = torch.tensor([starts[b] for b in decode], device=device)
        else:
            decode_blocks = torch.zeros(0, 0, dtype=torch.long, device=device)
            decode_lens = torch.zeros(0, dtype=torch.long, device=device)
            decode_rows = torch.zeros(0, dtype=torch.long, device=device)
        write_slots, write_rows = slot_mapping.long(), None
        keep = write_slots >= 0
        if not bool(keep.all()):  # padding rows: one host sync per batch
            write_rows = keep.nonzero().squeeze(1)
            write_slots = write_slots[write_rows]
        return cls(block_size, write_slots, write_rows, decode_rows, decode_blocks, key_pos,
                   decode_lens, prefills)

    def decode_mask(self, sliding_window: int | None) -> torch.Tensor:
        """``[Bd, 1, 1, Lmax]``: which padded context positions each decode query may see."""
        if sliding_window not in self._decode_masks:
            lens = self.decode_seq_lens[:, None]
            mask = self.decode_key_pos[None, :] < lens
            if sliding_window is not None:
                mask &= self.decode_key_pos[None, :] >= lens - sliding_window
            self._decode_masks[sliding_window] = mask[:, None, None, :]
        return self._decode_masks[sliding_window]

    def gather_decode_context(
        self, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[Bd, Nb * block_size, Hkv, D]`` K and V of the decode contexts, padded blocks included.

        Whole blocks are copied with ``index_select`` into buffers allocated once per batch:
        on CPU, advanced indexing of the 4-d cache and a fresh multi-megabyte allocation per
        layer each cost several times the copy itself.
        """
        num_blocks, width = k_cache.shape[0], k_cache[0].numel()
        key = (k_cache.dtype, width)
        if key not in self._decode_buffers:
            n = self.decode_blocks.numel()
            self._decode_buffers[key] = (
                k_cache.new_empty(n, width), v_cache.new_empty(n, width)
            )
        k_buf, v_buf = self._decode_buffers[key]
        ids = self.decode_blocks.view(-1)
        torch.index_select(k_cache.view(num_blocks, width), 0, ids, out=k_buf)
        torch.index_select(v_cache.view(num_blocks, width), 0, ids, out=v_buf)
        shape = (self.decode_blocks.shape[0], -1, *k_cache.shape[2:])
        return k_buf.view(shape), v_buf.view(shape)

    def prefill_mask(self, i: int, sliding_window: int | None) -> torch.Tensor:
        """``[Tq, L]``: causal (bottom-right aligned) mask of prefill sequence ``i``."""
        key = (i, sliding_window)
        if key not in self._prefill_masks:
            start, end, ctx_blocks, n_ctx = self.prefills[i]
            n_q = end - start
            q_pos = torch.arange(n_ctx - n_q, n_ctx, device=ctx_blocks.device)[:, None]
            k_pos = torch.arange(n_ctx, device=ctx_blocks.device)[None, :]
            mask = k_pos <= q_pos
            if sliding_window is not None:
                mask &= k_pos > q_pos - sliding_window
            self._prefill_masks[key] = mask
        return self._prefill_masks[key]


class AttentionBackend(ABC):
    """Paged attention for one varlen batch; see the module docstring for layouts.

    Contract: ``build_metadata`` is called once per batch and its result passed to every
    layer's ``write_kv`` and ``forward``. ``write_kv`` stores the new K/V at the batch's
    ``slot_mapping`` (rows with slot -1 are skipped). ``forward`` returns
    ``[T, num_heads, head_dim]`` in ``q.dtype``, attending causally over each sequence's cached
    context, which already holds this step's K/V. A backend never allocates caches or changes
    block tables.
    """

    name: ClassVar[str]
    priority: ClassVar[int] = 0

    @classmethod
    def is_available(cls, device: torch.device) -> bool:
        """Whether this backend can run on ``device`` (imports present, device supported)."""
        return True

    @classmethod
    def auto_selectable(cls, device: torch.device) -> bool:
        """Whether ``"auto"`` may pick this backend on ``device`` when it is available (False
        for a backend that runs there only to be tested, e.g. Triton's CPU interpreter)."""
        return True

    @abstractmethod
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
    ) -> Any: ...

    def write_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: Any,
    ) -> None:
        """Scatter this step's K/V into the paged caches. The default reads
        ``metadata.write_slots`` (flat slots) and ``metadata.write_rows`` (rows of ``k``/``v``
        to write, None for all) and uses ``index_copy_``; a backend may fuse it instead."""
        if metadata.write_rows is not None:
            k, v = k[metadata.write_rows], v[metadata.write_rows]
        for cache, new in ((k_cache, k), (v_cache, v)):
            flat = cache.view(-1, *cache.shape[2:])
            flat.index_copy_(0, metadata.write_slots, new.to(cache.dtype))

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: Any,
        *,
        scale: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor: ...


_BACKENDS: dict[str, type[AttentionBackend]] = {}


def register_attention_backend(cls: type[AttentionBackend]) -> type[AttentionBackend]:
    """Class decorator: make ``cls`` selectable by its ``name``."""
    _BACKENDS[cls.name] = cls
    return cls


def attention_backends(device: torch.device | str | None = None) -> list[str]:
    """Registered backend names, highest priority first; only those available on ``device``
    when one is given."""
    names = sorted(_BACKENDS, key=lambda n: -_BACKENDS[n].priority)
    if device is None:
        return names
    return [n for n in names if _BACKENDS[n].is_available(torch.device(device))]


def get_attention_backend(
    name: str | None = None, device: torch.device | str = "cpu"
) -> AttentionBackend:
    """The backend called ``name`` (or ``$SERVELAB_ATTENTION_BACKEND``, or the best available).

    Raises ValueError for an unknown name and RuntimeError for a backend that cannot run on
    ``device``; both messages list what is available.
    """
    device = torch.device(device)
    name = name or os.environ.get(ATTENTION_BACKEND_ENV) or "auto"
    available = attention_backends(device)
    if name == "auto":
        return _BACKENDS[next(n for n in available if _BACKENDS[n].auto_selectable(device))]()
    if name not in _BACKENDS:
        raise ValueError(
            f"unknown attention backend {name!r}; registered: {', '.join(attention_backends())}"
        )
    if name not in available:
        raise RuntimeError(
            f"attention backend {name!r} is not available on {device}; "
            f"available: {', '.join(available)}"
        )
    return _BACKENDS[name]()


@register_attention_backend
class TorchPagedAttention(AttentionBackend):
    """The reference: plain torch, any device and dtype.

    Decode sequences run as one padded batch (one gather, one SDPA call); prefill chunks run
    one SDPA call each over their gathered context. Grouped-query attention folds the query
    heads of a kv head into the query-length axis, so K/V are never repeated in memory.
    """

    name = "torch"
    priority = 0

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
    ) -> PagedAttentionMetadata:
        return PagedAttentionMetadata.build(
            query_start_loc, seq_lens, block_tables, slot_mapping, block_size,
            query_lens_host=query_lens_host, seq_lens_host=seq_lens_host,
        )

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
        num_heads, head_dim = q.shape[1], q.shape[2]
        num_kv_heads = k_cache.shape[2]
        group = num_heads // num_kv_heads
        out = torch.zeros_like(q)  # padding rows stay zero rather than uninitialized

        if metadata.decode_rows.numel():
            rows = metadata.decode_rows
            bd = rows.numel()
            # [Bd, Hkv, group, D] queries against [Bd, Hkv, Lmax, D] keys
            qd = q[rows].view(bd, num_kv_heads, group, head_dim)
            kd, vd = metadata.gather_decode_context(k_cache, v_cache)
            kd, vd = kd.transpose(1, 2).to(q.dtype), vd.transpose(1, 2).to(q.dtype)
            od = F.scaled_dot_product_attention(
                qd, kd, vd, attn_mask=metadata.decode_mask(sliding_window), scale=scale
            )
            out[rows] = od.reshape(bd, num_heads, head_dim)

        for i, (start, end, ctx_blocks, n_ctx) in enumerate(metadata.prefills):
            n_q = end - start
            # [Hkv, group * Tq, D]: each kv head's query heads stacked along the query axis
            qp = q[start:end].view(n_q, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)
            qp = qp.reshape(num_kv_heads, group * n_q, head_dim)
            kp = k_cache.index_select(0, ctx_blocks).view(-1, num_kv_heads, head_dim)[:n_ctx]
            vp = v_cache.index_select(0, ctx_blocks).view(-1, num_kv_heads, head_dim)[:n_ctx]
            kp, vp = kp.transpose(0, 1).to(q.dtype), vp.transpose(0, 1).to(q.dtype)
            mask = metadata.prefill_mask(i, sliding_window).repeat(group, 1)
            op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=scale)
            op = op.view(num_kv_heads, group, n_q, head_dim).permute(2, 0, 1, 3)
            out[start:end] = op.reshape(n_q, num_heads, head_dim)
        return out


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    slot_mapping: torch.Tensor,
    scale: float | None = None,
    sliding_window: int | None = None,
    backend: AttentionBackend | str | None = None,
) -> torch.Tensor:
    """One-shot paged attention for a single layer: write ``k``/``v``, then attend.

    Convenience for tests and scripts; a model builds the metadata once per batch instead.
    ``scale`` defaults to ``head_dim ** -0.5``.
    """
    if not isinstance(backend, AttentionBackend):
        backend = get_attention_backend(backend, q.device)
    meta = backend.build_metadata(
        query_start_loc, seq_lens, block_tables, slot_mapping, k_cache.shape[1]
    )
    backend.write_kv(k, v, k_cache, v_cache, meta)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return backend.forward(q, k_cache, v_cache, meta, scale=scale, sliding_window=sliding_window)


# Optional backends that register themselves; each imports its own dependencies lazily.
from . import triton_attention  # noqa: E402, F401
