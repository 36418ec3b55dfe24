"""A draft model: a second, smaller model with its own paged KV cache, run with the engine's
batch machinery (:class:`~core.model.ForwardBatch`, :class:`~core.kv.manager.KVCacheManager`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from core.kv.manager import KVCacheManager
from core.model import ForwardBatch
from core.model.base import CausalLM
from core.model.cache import KVCache

from .drafter import Draft, Drafter, DraftRequest
from .verify import block_stop_tokens, blocks_stop_tokens, is_greedy, target_probs

# Feeds up to this long (after a cache hit on the request's earlier tokens) take the attention
# backend's multi-query decode path; a longer one is a prefill.
_MAX_FEED = 8


class DraftModelDrafter(Drafter):
    """Drafts with ``model``: per step, one forward over each request's tokens the draft cache
    lacks (the verified ones, usually one or two), then ``k - 1`` one-token forwards, the whole
    batch at once. Greedy requests take the argmax; sampled ones draw from the draft's
    distribution under the request's temperature/top-k/top-p and return it as ``q``.

    The draft cache keeps, per request, the KV of the tokens it last saw; the next proposal
    keeps the part that still prefixes the request's tokens (rejected drafts' slots are freed)
    and computes the rest. A request whose KV does not fit (after dropping the caches of
    requests not drafted now) gets no drafts this step. Attention-only draft models (an SSM
    state cannot be rolled back here); the vocabulary must be the target's. The first forward
    of a step (one or two tokens per cached request) takes the attention backend's multi-query
    decode path unless ``in_place_feeds`` is False (for A/B measurements).
    """

    in_place_feeds: bool = True

    name = "draft_model"

    def __init__(
        self,
        model: CausalLM,
        num_blocks: int,
        block_size: int = 16,
        *,
        eos_token_id: int | Sequence[int] | None = None,
        max_model_len: int | None = None,
    ) -> None:
        if model.config.mamba_layers:
            raise ValueError(
                "speculative_config: the draft model must be attention-only (its SSM state "
                "cannot be rolled back); use a Llama/Mixtral-style draft"
            )
        self.model = model
        self.block_size = block_size
        self.kv_cache: KVCache = model.allocate_kv_cache(num_blocks, block_size)
        self.manager = KVCacheManager(num_blocks, block_size, enable_prefix_caching=False)
        self.eos_token_id = eos_token_id
        self.max_model_len = max_model_len or model.config.max_position_embeddings
        self._seen: dict[str, list[int]] = {}  # tokens whose KV is in the draft cache
        self.num_forwards = 0

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def release(self, request_id: str) -> None:
        self._seen.pop(request_id, None)
        if self.manager.has_request(request_id):
            self.manager.free(request_id)

    def _reuse(self, req: DraftRequest) -> int:
        """Keep the cached KV of the longest common prefix (short of the last token, which is
        fed again so there is a position to read logits from); free the rest."""
        seen = self._seen.get(req.request_id)
        if seen is None:
            return 0
        limit = min(len(seen), len(req.token_ids) - 1)
        n = 0
        while n < limit and seen[n] == req.token_ids[n]:
            n += 1
        self.manager.truncate(req.request_id, n)
        del seen[n:]
        return n

    def _admit(self, req: DraftRequest, new: int, keep: set[str]) -> bool:
        rid = req.request_id
        while self.manager.allocate_slots(rid, new) is None:
            others = [r for r in self._seen if r not in keep]
            if not others:
                return False
            self.release(others[0])
        self._seen.setdefault(rid, [])
        return True

    @torch.inference_mode()
    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]:
        out = [Draft([]) for _ in requests]
        active: list[int] = []
        starts: list[int] = []
        keep = {r.request_id for r in requests}
        for i, r in enumerate(requests):
            k = self._k(r)
            if k <= 0 or len(r.token_ids) == 0:
                continue
            start = self._reuse(r)
            if not self._admit(r, len(r.token_ids) + k - 1 - start, keep):
                self.release(r.request_id)
                continue
            active.append(i)
            starts.append(start)
        if not active:
            return out
        steps = max(self._k(requests[i]) for i in active)
        feeds = [list(requests[i].token_ids[s:]) for i, s in zip(active, starts, strict=True)]
        cached = list(starts)
        probs: list[list[torch.Tensor]] = [[] for _ in active]
        # the first forward feeds each cached request the one or two tokens its KV lacks: a
        # multi-query decode the attention backend may attend in place
        backend = self.model.attention_backend()
        backend.max_decode_query_len = max(
            (len(f) for f, c in zip(feeds, cached, strict=True) if c and len(f) <= _MAX_FEED),
            default=1,
        )
        if not self.in_place_feeds:
            backend.max_decode_query_len = 1
        for _ in range(steps):
            rows = [j for j, i in enumerate(active) if len(out[i].token_ids) < self._k(requests[i])]
            if not rows:
                break
            batch = ForwardBatch.build(
                [feeds[j] for j in rows],
                [cached[j] for j in rows],
                [self.manager.block_ids(requests[active[j]].request_id) for j in rows],
                self.block_size,
                device=self.model.device,
            )
            hidden = self.model(batch, self.kv_cache)
            logits = self.model.compute_logits(hidden[batch.last_token_rows()])
            self.num_forwards += 1
            best = logits.argmax(dim=-1).tolist()
            for row, j in enumerate(rows):
                r = requests[active[j]]
                n_out = len(r.token_ids) - r.num_prompt_tokens + len(out[active[j]].token_ids)
                if is_greedy(r.sampling) and not blocks_stop_tokens(r.sampling, n_out):
                    tok, q = best[row], None
                else:
                    tok, q = self._pick(logits[row : row + 1], r, n_out)
                out[active[j]].token_ids.append(tok)
                if q is not None:
                    probs[j].append(q)
                self._seen[r.request_id].extend(feeds[j])
                cached[j] += len(feeds[j])
                feeds[j] = [tok]
        for j, i in enumerate(active):
            # slots were reserved for k - 1 drafts; keep those whose KV was written
            self.manager.truncate(requests[i].request_id, cached[j])
            if probs[j]:
                out[i].probs = torch.cat(probs[j])
        return out

    def _k(self, r: DraftRequest) -> int:
        return min(r.num_drafts, self.max_model_len - len(r.token_ids))

    def _pick(self, logits: torch.Tensor, r: DraftRequest, out_len: int) -> tuple[int, Any]:
        """The draft token for output position ``out_len`` and the distribution it was drawn
        from (None: argmax)."""
        sp = r.sampling
        if sp is not None:
            logits = block_stop_tokens(logits, sp, out_len, self.eos_token_id)
        if is_greedy(sp):
            return int(logits[0].argmax()), None
        q = target_probs(logits, sp)
        return int(torch.multinomial(q[0], 1, generator=r.generator)), q
