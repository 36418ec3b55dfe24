"""The memory a model reads and writes across steps: the paged KV cache and the SSM state pool.

Both are plain tensors the engine owns. The model allocates them (it knows the shapes) through
``allocate_kv_cache`` / ``allocate_state_pool``; the engine's block manager decides which block
and which slot each sequence uses and passes them in every :class:`~core.model.batch.ForwardBatch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import torch

__all__ = ["KVCache", "Slots", "StatePool"]

Slots: TypeAlias = int | Sequence[int] | torch.Tensor
"""One state slot or several (anything ``torch.as_tensor`` makes a tensor of longs from)."""


@dataclass
class KVCache:
    """Paged K and V for every attention layer, in layer order.

    ``k[i]`` and ``v[i]`` are ``[num_blocks, block_size, num_kv_heads, head_dim]`` for the
    ``i``-th attention layer (hybrid models count attention layers only). Block ids are shared
    across layers: block ``j`` of a sequence is block ``j`` in every layer.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @property
    def num_blocks(self) -> int:
        return self.k[0].shape[0] if self.k else 0

    @property
    def block_size(self) -> int:
        return self.k[0].shape[1] if self.k else 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))


@dataclass
class StatePool:
    """Per-sequence recurrent state of every Mamba layer, in slots.

    ``conv[i]`` is ``[num_slots, conv_dim, d_conv - 1]`` (the last inputs of the causal conv)
    and ``ssm[i]`` is ``[num_slots, n_heads, head_dim, d_state]`` for the ``i``-th Mamba
    layer. A slot holds one sequence's state after the tokens computed so far; the model
    updates it in place after each step. Prefix checkpoints are slots too: the engine copies a
    checkpoint into a free slot (:meth:`copy_`) before continuing from it, so the checkpoint
    itself is never written (copy-on-write).
    """

    conv: list[torch.Tensor]
    ssm: list[torch.Tensor]

    @property
    def num_slots(self) -> int:
        return self.ssm[0].shape[0] if self.ssm else 0

    def copy_(self, src: Slots, dst: Slots) -> None:
        """Copy slot(s) ``src`` into slot(s) ``dst`` in every layer (``dst`` not in ``src``)."""
        src_t = torch.as_tensor(src, dtype=torch.long).reshape(-1)
        dst_t = torch.as_tensor(dst, dtype=torch.long).reshape(-1)
        for t in (*self.conv, *self.ssm):
            t.index_copy_(0, dst_t.to(t.device), t.index_select(0, src_t.to(t.device)))

    def zero_(self, slots: Slots) -> None:
        """Reset slot(s) to the zero state."""
        idx = torch.as_tensor(slots, dtype=torch.long).reshape(-1)
        for t in (*self.conv, *self.ssm):
            t.index_fill_(0, idx.to(t.device), 0)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.conv, *self.ssm))
