"""ForwardBatch: what the engine hands the model for one step of continuous batching.

A batch is a flattened list of sequences, each contributing its *new* tokens: a decode step
(one token), a whole prompt, or a chunk of a prompt whose earlier tokens are already in the KV
cache (chunked prefill or a prefix-cache hit) and, for hybrid models, whose SSM state is already
in its state slot. Metadata follows vLLM v1 (``query_start_loc``, ``seq_lens``,
``block_tables``, ``slot_mapping``) plus the Mamba serving pair (``state_indices``,
``has_initial_state``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from core.kernels.attention import AttentionBackend

    from .cache import KVCache, StatePool

__all__ = ["DENSE_SHAPE", "ForwardBatch", "ForwardContext"]

DENSE_SHAPE = "dense_shape"
"""Memo key of a dense training batch (:mod:`core.model.training`): ``(B, L)`` when every
sequence has ``L`` new tokens from an empty cache and state, so a layer may treat the rows as a
``[B, L]`` block (the Mamba mixer then scans all sequences at once)."""


@dataclass
class ForwardBatch:
    """The new tokens of ``B`` sequences, concatenated into ``T`` rows.

    Contract (all tensors on the model's device):

    - ``input_ids`` ``[T]`` long, ``positions`` ``[T]`` long: absolute positions; sequence
      ``b``'s new tokens sit at ``seq_lens[b] - query_len[b] ... seq_lens[b] - 1``.
    - ``query_start_loc`` ``[B + 1]`` int32: sequence ``b`` owns rows
      ``query_start_loc[b]:query_start_loc[b + 1]`` (at least one row each).
    - ``seq_lens`` ``[B]`` int32: tokens of each sequence after this step.
    - ``block_tables`` ``[B, max_blocks]`` int32, padded with -1: KV blocks of each sequence,
      covering at least ``seq_lens[b]`` positions.
    - ``slot_mapping`` ``[T]`` long: ``block * block_size + offset`` where each new token's K/V
      goes; -1 skips a row. Rows past ``query_start_loc[B]`` are padding (e.g. for a captured
      graph of fixed size): slot -1, and their outputs are meaningless.
    - ``state_indices`` ``[B]`` int32 (hybrid models): each sequence's slot in the state pool;
      distinct within a batch. The model reads the initial SSM state from it (when
      ``has_initial_state``) and leaves the state after this step's tokens in it.
    - ``has_initial_state`` ``[B]`` bool: False starts the conv and SSM states from zeros (a
      fresh prompt); True continues from the slot (a later chunk, a decode step, or a slot the
      engine filled by copying a prefix checkpoint). None means "True exactly for sequences
      with cached tokens" (``seq_lens > query_lens``).
    - ``query_lens_host``, ``seq_lens_host``: optional Python copies of the lengths; when the
      engine passes them, lengths are not read back from the device.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    state_indices: torch.Tensor | None = None
    has_initial_state: torch.Tensor | None = None
    query_lens_host: list[int] | None = None
    seq_lens_host: list[int] | None = None
    # per-batch values the layers share (attention metadata, decode/prefill split)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_seqs(self) -> int:
        return self.query_start_loc.shape[0] - 1

    def query_lens(self) -> list[int]:
        """New tokens per sequence, on the host."""
        if self.query_lens_host is None:
            self.query_lens_host = (self.query_start_loc[1:] - self.query_start_loc[:-1]).tolist()
        return self.query_lens_host

    def context_lens(self) -> list[int]:
        """Tokens per sequence after this step, on the host."""
        if self.seq_lens_host is None:
            self.seq_lens_host = self.seq_lens.tolist()
        return self.seq_lens_host

    def last_token_rows(self) -> torch.Tensor:
        """``[B]`` long: the row of each sequence's last new token (where logits are needed)."""
        return self.query_start_loc[1:].long() - 1

    def memo(self, key: str, build: Any) -> Any:
        """``build()`` once per batch, shared by all layers."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    @classmethod
    def build(
        cls,
        new_tokens: Sequence[Sequence[int]],
        num_cached: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        block_size: int,
        *,
        state_indices: Sequence[int] | None = None,
        has_initial_state: Sequence[bool] | None = None,
        device: torch.device | str = "cpu",
    ) -> ForwardBatch:
        """Build a batch from host lists: per sequence its new tokens, how many of its tokens
        are already computed (in the KV cache / state slot), and its block ids.

        ``has_initial_state`` defaults to ``num_cached > 0``. Raises ValueError naming the
        sequence whose block table cannot hold its tokens.
        """
        if not (len(new_tokens) == len(num_cached) == len(block_tables)):
            raise ValueError("new_tokens, num_cached and block_tables differ in length")
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts = [0]
        seq_lens: list[int] = []
        width = max((len(t) for t in block_tables), default=0)
        rows = zip(new_tokens, num_cached, block_tables, strict=True)
        for b, (toks, cached, table) in enumerate(rows):
            if not toks:
                raise ValueError(f"sequence {b} has no new tokens")
            total = cached + len(toks)
            need = -(-total // block_size)
            if need > len(table) or any(blk < 0 for blk in table[:need]):
                raise ValueError(
                    f"sequence {b}: {total} tokens need {need} blocks of {block_size}, "
                    f"block table has {table}"
                )
            ids.extend(toks)
            for pos in range(cached, total):
                positions.append(pos)
                slots.append(table[pos // block_size] * block_size + pos % block_size)
            starts.append(starts[-1] + len(toks))
            seq_lens.append(total)
        padded = [list(t) + [-1] * (width - len(t)) for t in block_tables]

        def t(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device)

        if has_initial_state is None:
            has_initial_state = [c > 0 for c in num_cached]
        return cls(
            input_ids=t(ids, torch.long),
            positions=t(positions, torch.long),
            query_start_loc=t(starts, torch.int32),
            seq_lens=t(seq_lens, torch.int32),
            block_tables=t(padded, torch.int32).view(len(padded), width),
            slot_mapping=t(slots, torch.long),
            state_indices=None if state_indices is None else t(list(state_indices), torch.int32),
            has_initial_state=t(list(has_initial_state), torch.bool),
            query_lens_host=[len(x) for x in new_tokens],
            seq_lens_host=seq_lens,
        )


@dataclass
class ForwardContext:
    """What every layer of one forward sees: the batch, the caches, the attention backend and
    the RoPE tables of the batch's positions (computed once, shared by all layers)."""

    batch: ForwardBatch
    kv_cache: KVCache | None
    state_pool: StatePool | None
    attn_backend: AttentionBackend
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    # set by the model for a batch its decoder layers may run fused (core.kernels.fused_layer)
    decode_plan: Any = None

    def kv(self) -> KVCache:
        """The paged KV cache the attention layers read and write; ValueError if absent."""
        if self.kv_cache is None:
            raise ValueError("an attention layer ran without a kv_cache")
        return self.kv_cache

    def states(self) -> StatePool:
        """The conv/SSM state pool the Mamba layers read and write; ValueError if absent."""
        if self.state_pool is None:
            raise ValueError("a Mamba layer ran without a state_pool")
        return self.state_pool

    def rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE ``(cos, sin)`` of the batch's positions; ValueError if the forward set none."""
        if self.rope is None:
            raise ValueError("an attention layer ran without RoPE tables (ForwardContext.rope)")
        return self.rope

    def attn_metadata(self) -> Any:
        """The backend's metadata for this batch, built by the first attention layer."""
        backend, block_size, batch = self.attn_backend, self.kv().block_size, self.batch
        return batch.memo(
            f"attention:{backend.name}:{block_size}",
            lambda: backend.build_metadata(
                batch.query_start_loc,
                batch.seq_lens,
                batch.block_tables,
                batch.slot_mapping,
                block_size,
                query_lens_host=batch.query_lens(),
                seq_lens_host=batch.context_lens(),
            ),
        )
