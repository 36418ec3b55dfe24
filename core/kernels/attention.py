"""Paged attention over a flattened varlen batch: the torch reference and the backend registry.

Layout (vLLM v1 style, on the model's device): ``q`` ``[T, num_heads, head_dim]`` and ``k``,
``v`` ``[T, num_kv_heads, head_dim]`` are the new tokens of all sequences concatenated
(sequence ``b`` owns rows ``query_start_loc[b]:query_start_loc[b + 1]``, its last ones);
``k_cache``/``v_cache`` are ``[num_blocks, block_size, num_kv_heads, head_dim]`` per layer,
addressed through ``block_tables`` (``[B, max_blocks]``, -1 padded) and ``slot_mapping``
(``[T]``, -1 skips a row); ``seq_lens`` counts context + new tokens. New K/V are written first,
then each query attends causally (bottom-right aligned) to its sequence's keys, only the last
``W`` with ``sliding_window=W``; GQA maps query head ``h`` to ``h // (num_heads // num_kv_heads)``.
:class:`AttentionBackend` is the contract fast kernels implement, :class:`TorchPagedAttention`
the reference; :func:`get_attention_backend` picks ``name``, else ``SERVELAB_ATTENTION_BACKEND``,
else ``"auto"`` (the available, auto-selectable backend with the highest ``priority``).

The layout in full and how to add a backend: docs/core/kernels.md.
"""

from __future__ import annotations

import functools
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

__all__ = [
    "ATTENTION_BACKEND_ENV",
    "DECODE_GROUP_COST_BLOCKS",
    "AttentionBackend",
    "DecodeGroup",
    "GatherWorkspace",
    "InPlaceGroup",
    "PagedAttentionMetadata",
    "TorchPagedAttention",
    "attention_backends",
    "get_attention_backend",
    "group_by_length",
    "paged_attention",
    "register_attention_backend",
]

ATTENTION_BACKEND_ENV = "SERVELAB_ATTENTION_BACKEND"


# What one more decode group costs (its own gather and SDPA call: roughly 150 us a layer on a
# 2-core CPU, estimated from per-op times), in padded context blocks of one sequence (about
# 8 us each, gather plus attend, in a microbenchmark of 64 sequences).
DECODE_GROUP_COST_BLOCKS = 16


def group_by_length(nblocks: Sequence[int], group_cost: float) -> list[tuple[int, int]]:
    """Split sequences, sorted by context length, into contiguous groups that each pad to their
    longest member: the split that minimizes padded blocks plus ``group_cost`` per group.

    ``nblocks`` must be ascending. Returns ``(start, end)`` index ranges covering it in order.
    Dynamic programming over the distinct lengths (a group boundary inside a run of equal
    lengths never helps), O(distinct^2).
    """
    if any(a > b for a, b in pairwise(nblocks)):
        raise ValueError("nblocks must be sorted ascending")
    # ends[i]: one past the last sequence of the i-th run of equal lengths
    n = len(nblocks)
    ends = [i + 1 for i in range(n) if i + 1 == n or nblocks[i + 1] != nblocks[i]]
    best = [0.0] + [math.inf] * len(ends)
    cut = [0] * (len(ends) + 1)
    for j, end in enumerate(ends, start=1):
        width = nblocks[end - 1]
        for i in range(j):
            start = ends[i - 1] if i else 0
            cost = best[i] + (end - start) * width + group_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(ends)
    while j > 0:
        i = cut[j]
        groups.append((ends[i - 1] if i else 0, ends[j - 1]))
        j = i
    return groups[::-1]


@dataclass
class DecodeGroup:
    """Decode sequences attended together in one padded gather and one SDPA call.

    ``blocks`` pads every context to the group's longest with block 0 (any valid memory), which
    the mask hides; ``offset`` is where the group's blocks start in the gather workspace.
    """

    rows: torch.Tensor  # [n] long: the token row of each sequence
    blocks: torch.Tensor  # [n, nb] long: cache blocks of each context
    seq_lens: torch.Tensor  # [n] long
    offset: int


@dataclass
class InPlaceGroup:
    """Sequences with a few new tokens each (a speculative verify's ``k + 1``) that a
    multi-query decode kernel attends in place through the block table, causal among the new
    tokens, instead of one SDPA call each over a gathered context.

    ``members`` index :attr:`PagedAttentionMetadata.prefills` (the reference still attends
    them there); per member its first row, its number of new tokens, its blocks (padded with
    block 0 to the group's widest, never read past ``seq_lens``) and its length. The longer
    prefills of a batch take the same form for a prefill kernel
    (:attr:`PagedAttentionMetadata.kernel_prefills`).
    """

    members: list[int]
    starts: torch.Tensor  # [n] long
    query_lens: torch.Tensor  # [n] long
    blocks: torch.Tensor  # [n, nb] long
    seq_lens: torch.Tensor  # [n] long


class GatherWorkspace:
    """Reusable K and V buffers that decode contexts are gathered into.

    Owned by a backend and kept across batches: a fresh multi-megabyte buffer can cost a page
    fault per 4 KiB on first touch (in a CPU microbenchmark, 17 ms for a 50 MB gather that took
    6 ms warm; inside the engine glibc often reuses the freed memory, and the saving was small).
    Grows to the largest gather seen and never shrinks. Not safe for two batches in flight at
    once: each engine (and each cluster replica) has its own model, backend and workspace, and
    runs one forward at a time.
    """

    def __init__(self) -> None:
        Key = tuple[torch.dtype, torch.device, int]
        self._buffers: dict[Key, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, like: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V buffers of ``[rows, like[0].numel()]`` in ``like``'s dtype and device."""
        width = like[0].numel()
        key = (like.dtype, like.device, width)
        bufs = self._buffers.get(key)
        if bufs is None or bufs[0].shape[0] < rows:
            self._buffers.pop(key, None)  # free the old pair before allocating the larger one
            bufs = (like.new_empty(rows, width), like.new_empty(rows, width))
            self._buffers[key] = bufs
        return bufs[0][:rows], bufs[1][:rows]


@dataclass
class PagedAttentionMetadata:
    """What the torch reference precomputes once per batch and reuses in every layer.

    Sequences with exactly one new token (decode steps) are attended in a few padded groups of
    similar context length (:func:`group_by_length`): one group pads short contexts to the
    longest, many groups pay a call each; the prefill chunks one at a time, each against its
    gathered context.
    """

    block_size: int
    # where this step's K/V go; rows with slot -1 are dropped once here, not in every layer
    write_slots: torch.Tensor  # [T'] long
    write_rows: torch.Tensor | None  # [T'] rows of k/v to write; None: all rows, in order
    decode_groups: list[DecodeGroup]
    # prefill group: (first row, end row, cache blocks of the context, context length)
    prefills: list[tuple[int, int, torch.Tensor, int]]
    workspace: GatherWorkspace = field(default_factory=GatherWorkspace)
    # prefills short enough for a multi-query decode kernel (None: none, or not asked for)
    in_place: InPlaceGroup | None = None
    # (group, sliding window) -> boolean masks, built on first use and shared by the layers
    _decode_masks: dict[tuple[int, int | None], torch.Tensor] = field(default_factory=dict)
    _prefill_masks: dict[tuple[int, int | None], torch.Tensor] = field(default_factory=dict)

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
        workspace: GatherWorkspace | None = None,
        group_cost: float = DECODE_GROUP_COST_BLOCKS,
        max_in_place_query_len: int = 1,
    ) -> PagedAttentionMetadata:
        """Split the batch into decode groups and prefill sequences and map positions to slots.

        ``*_host`` are the same lengths as Python lists when the caller has them (the engine
        does), which saves a device-to-host copy. ``workspace`` is the caller's reusable gather
        buffer (a fresh one if None); ``group_cost`` is passed to :func:`group_by_length`
        (``math.inf``: one group for all decode sequences; 0: one group per context length).
        Prefill sequences of at most ``max_in_place_query_len`` new tokens are also listed in
        :attr:`in_place` for a backend with a multi-query decode kernel.
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
        decode = sorted(
            (b for b, n in enumerate(query_lens_host) if n == 1), key=lambda b: seq_lens_host[b]
        )
        prefills = [
            (starts[b], starts[b + 1], tables[b, : nblocks(seq_lens_host[b])], seq_lens_host[b])
            for b, n in enumerate(query_lens_host)
            if n > 1
        ]
        decode_nb = [nblocks(seq_lens_host[b]) for b in decode]
        groups, offset = [], 0
        for start, end in group_by_length(decode_nb, group_cost) if decode else []:
            members, nb = decode[start:end], decode_nb[end - 1]
            idx = torch.tensor(members, device=device)
            groups.append(
                DecodeGroup(
                    rows=torch.tensor([starts[b] for b in members], device=device),
                    blocks=tables[idx][:, :nb].clamp(min=0),
                    seq_lens=torch.tensor([seq_lens_host[b] for b in members], device=device),
                    offset=offset,
                )
            )
            offset += len(members) * nb
        write_slots, write_rows = slot_mapping.long(), None
        keep = write_slots >= 0
        if not bool(keep.all()):  # padding rows: one host sync per batch
            write_rows = keep.nonzero().squeeze(1)
            write_slots = write_slots[write_rows]
        in_place = None
        short = [b for b, n in enumerate(query_lens_host) if 1 < n <= max_in_place_query_len]
        if short:
            nb = max(nblocks(seq_lens_host[b]) for b in short)
            idx = torch.tensor(short, device=device)
            prefill_of = {
                b: i for i, b in enumerate(b for b, n in enumerate(query_lens_host) if n > 1)
            }
            in_place = InPlaceGroup(
                members=[prefill_of[b] for b in short],
                starts=torch.tensor([starts[b] for b in short], device=device),
                query_lens=torch.tensor([query_lens_host[b] for b in short], device=device),
                blocks=tables[idx][:, :nb].clamp(min=0).contiguous(),
                seq_lens=torch.tensor([seq_lens_host[b] for b in short], device=device),
            )
        return cls(
            block_size,
            write_slots,
            write_rows,
            groups,
            prefills,
            workspace if workspace is not None else GatherWorkspace(),
            in_place,
        )

    @functools.cached_property
    def kernel_prefills(self) -> InPlaceGroup | None:
        """The prefills :attr:`in_place` does not list, as one group for a backend's prefill
        kernel over the block table (None: none); built on first use, shared by the layers."""
        skip = set(self.in_place.members) if self.in_place is not None else set()
        members = [i for i in range(len(self.prefills)) if i not in skip]
        if not members:
            return None
        rows = [self.prefills[i] for i in members]
        device = rows[0][2].device
        return InPlaceGroup(
            members=members,
            starts=torch.tensor([r[0] for r in rows], device=device),
            query_lens=torch.tensor([r[1] - r[0] for r in rows], device=device),
            blocks=torch.nn.utils.rnn.pad_sequence([r[2] for r in rows], batch_first=True),
            seq_lens=torch.tensor([r[3] for r in rows], device=device),
        )

    def decode_mask(self, group: int, sliding_window: int | None) -> torch.Tensor:
        """``[n, 1, 1, L]``: which padded context positions each query of decode group
        ``group`` may see."""
        key = (group, sliding_window)
        if key not in self._decode_masks:
            g = self.decode_groups[group]
            lens = g.seq_lens[:, None]
            pos = torch.arange(g.blocks.shape[1] * self.block_size, device=lens.device)[None, :]
            mask = pos < lens
            if sliding_window is not None:
                mask &= pos >= lens - sliding_window
            self._decode_masks[key] = mask[:, None, None, :]
        return self._decode_masks[key]

    def gather_decode_context(
        self, group: int, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n, nb * block_size, Hkv, D]`` K and V of decode group ``group``'s contexts,
        padded blocks included.

        Whole blocks are copied with ``index_select`` into the workspace: on CPU, advanced
        indexing of the 4-d cache costs several times the copy itself.
        """
        g = self.decode_groups[group]
        last = self.decode_groups[-1]
        total = last.offset + last.blocks.numel()
        k_buf, v_buf = self.workspace.get(k_cache, total)
        n = g.blocks.numel()
        k_buf, v_buf = k_buf[g.offset : g.offset + n], v_buf[g.offset : g.offset + n]
        num_blocks, width = k_cache.shape[0], k_buf.shape[1]
        ids = g.blocks.view(-1)
        torch.index_select(k_cache.view(num_blocks, width), 0, ids, out=k_buf)
        torch.index_select(v_cache.view(num_blocks, width), 0, ids, out=v_buf)
        shape = (g.blocks.shape[0], -1, *k_cache.shape[2:])
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
    max_decode_query_len: int = 1
    """The most new tokens a sequence may have for the backend's decode path to attend it in
    place (a multi-query decode kernel); longer ones take its prefill path. A runner raises it
    for a step whose non-prefill sequences carry several query tokens (a speculative verify's
    ``k + 1``); a backend without such a kernel ignores it."""

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

    Decode sequences run in a few padded groups of similar context length (one gather and
    one SDPA call per group, into a workspace kept across batches); prefill chunks run one SDPA
    call each over their gathered context. K/V are never repeated in memory for grouped-query
    attention: decode folds the query heads of a kv head into the query-length axis, prefill
    passes ``enable_gqa``.
    """

    name = "torch"
    priority = 0
    decode_group_cost: float = DECODE_GROUP_COST_BLOCKS
    # whether a subclass attends PagedAttentionMetadata.in_place with a multi-query decode
    # kernel (the reference attends those sequences as prefills: it never lists them)
    in_place_kernel: ClassVar[bool] = False

    def __init__(self) -> None:
        self.workspace = GatherWorkspace()

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
            query_start_loc,
            seq_lens,
            block_tables,
            slot_mapping,
            block_size,
            query_lens_host=query_lens_host,
            seq_lens_host=seq_lens_host,
            workspace=self.workspace,
            group_cost=self.decode_group_cost,
            max_in_place_query_len=self.max_decode_query_len if self.in_place_kernel else 1,
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

        for i, dg in enumerate(metadata.decode_groups):
            n = dg.rows.numel()
            # [n, Hkv, group, D] queries against [n, Hkv, L, D] keys
            qd = q[dg.rows].view(n, num_kv_heads, group, head_dim)
            kd, vd = metadata.gather_decode_context(i, k_cache, v_cache)
            kd, vd = kd.transpose(1, 2).to(q.dtype), vd.transpose(1, 2).to(q.dtype)
            od = F.scaled_dot_product_attention(
                qd, kd, vd, attn_mask=metadata.decode_mask(i, sliding_window), scale=scale
            )
            out[dg.rows] = od.reshape(n, num_heads, head_dim)
        self.attend_prefills(out, q, k_cache, v_cache, metadata, scale, sliding_window)
        return out

    def attend_prefills(
        self,
        out: torch.Tensor,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: PagedAttentionMetadata,
        scale: float,
        sliding_window: int | None,
        skip: Collection[int] = (),
    ) -> None:
        """Write the attention of every prefill sequence of the batch into ``out``: one SDPA
        call each over its gathered context (except those ``skip`` lists, by index into
        ``metadata.prefills``: a kernel attended them)."""
        num_heads, head_dim = q.shape[1], q.shape[2]
        num_kv_heads = k_cache.shape[2]
        group = num_heads // num_kv_heads
        for i, (start, end, ctx_blocks, n_ctx) in enumerate(metadata.prefills):
            if i in skip:
                continue
            n_q = end - start
            # [1, H, Tq, D] against [1, Hkv, L, D]: batched 4-d inputs take torch's fused CPU
            # kernel (3-d ones fell back to the unfused math path, 1.8-3.3x slower), and
            # enable_gqa reads each kv head for its query heads without repeating it
            qp = q[start:end].transpose(0, 1)[None]
            kp = k_cache.index_select(0, ctx_blocks).view(-1, num_kv_heads, head_dim)[:n_ctx]
            vp = v_cache.index_select(0, ctx_blocks).view(-1, num_kv_heads, head_dim)[:n_ctx]
            kp, vp = kp.transpose(0, 1)[None].to(q.dtype), vp.transpose(0, 1)[None].to(q.dtype)
            # a prefill with no cached context is plainly causal: the kernel then skips the
            # masked half instead of reading a mask
            plain = n_ctx == n_q and sliding_window is None
            op = F.scaled_dot_product_attention(
                qp,
                kp,
                vp,
                scale=scale,
                enable_gqa=group > 1,
                is_causal=plain,
                attn_mask=None if plain else metadata.prefill_mask(i, sliding_window),
            )
            out[start:end] = op[0].transpose(0, 1)


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
from . import cpu_attention, triton_attention  # noqa: E402, F401
