"""A minimal stand-in for the engine's model runner, for tests: it hands out KV blocks (in a
shuffled order, so block tables are never contiguous) and state slots, builds ForwardBatches,
and returns the logits of every new token."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from core.model import CausalLM, ForwardBatch


@dataclass
class Seq:
    tokens: list[int] = field(default_factory=list)  # every token fed so far
    blocks: list[int] = field(default_factory=list)
    slot: int = -1


class PagedRunner:
    def __init__(
        self,
        model: CausalLM,
        num_blocks: int = 96,
        block_size: int = 4,
        num_slots: int = 8,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.kv = model.allocate_kv_cache(num_blocks, block_size)
        self.pool = model.allocate_state_pool(num_slots)
        self.free_blocks = list(range(num_blocks))
        random.Random(seed).shuffle(self.free_blocks)
        self.free_slots = list(range(num_slots))
        self.seqs: dict[object, Seq] = {}

    def _seq(self, key: object) -> Seq:
        if key not in self.seqs:
            self.seqs[key] = Seq(slot=self.free_slots.pop(0))
        return self.seqs[key]

    @torch.inference_mode()
    def step(self, work: dict[object, list[int]]) -> dict[object, torch.Tensor]:
        """Feed each sequence its new tokens in one batch; logits ``[n_new, vocab]`` per key."""
        seqs = [self._seq(k) for k in work]
        for s, new in zip(seqs, work.values(), strict=True):
            need = -(-(len(s.tokens) + len(new)) // self.block_size)
            while len(s.blocks) < need:
                s.blocks.append(self.free_blocks.pop())
        batch = ForwardBatch.build(
            [list(t) for t in work.values()],
            [len(s.tokens) for s in seqs],
            [s.blocks for s in seqs],
            self.block_size,
            state_indices=[s.slot for s in seqs],
            device=self.model.device,
        )
        logits = self.model.compute_logits(self.model(batch, self.kv, self.pool))
        out, row = {}, 0
        for key, s, new in zip(work, seqs, work.values(), strict=True):
            out[key] = logits[row : row + len(new)]
            row += len(new)
            s.tokens.extend(new)
        return out

    def fork(self, src: object, dst: object) -> None:
        """Start ``dst`` from ``src``'s computed prefix, copy-on-write: full KV blocks are
        shared, the partial last block and the state slot are copied."""
        s = self.seqs[src]
        d = self._seq(dst)
        d.tokens = list(s.tokens)
        full = len(s.tokens) // self.block_size
        d.blocks = s.blocks[:full]
        if len(s.tokens) % self.block_size:
            blk = self.free_blocks.pop()
            for t in (*self.kv.k, *self.kv.v):
                t[blk] = t[s.blocks[full]]
            d.blocks.append(blk)
        self.model.copy_state_slot(self.pool, s.slot, d.slot)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding of all prompts together: one batch of prefills, then decode steps."""
        keys = list(range(len(prompts)))
        last = self.step(dict(zip(keys, prompts, strict=True)))
        outs = [[int(last[k][-1].argmax())] for k in keys]
        for _ in range(max_new_tokens - 1):
            last = self.step({k: [outs[k][-1]] for k in keys})
            for k in keys:
                outs[k].append(int(last[k][-1].argmax()))
        return outs
