"""The speculative model runner: verify the scheduled draft tokens in one target forward,
then draft the next ones."""

from __future__ import annotations

import time
from typing import Any

import torch

from core.engine.runner import ModelRunner
from core.model.cache import StatePool
from core.sched.runner import StepResult
from core.sched.scheduler import ScheduledChunk, SchedulerOutput, SpecOutcome

from .drafter import Drafter, DraftRequest
from .verify import (
    block_stop_tokens,
    blocks_stop_tokens,
    is_greedy,
    target_probs,
    verify_greedy,
    verify_sampled,
)

# Longest verify chunk sent down the multi-query decode path: k + 1 for any k in use, and
# more after a hybrid rollback; longer chunks are prefills in all but name.
_MAX_IN_PLACE = 32


class SpecModelRunner(ModelRunner):
    """A :class:`~core.engine.runner.ModelRunner` that speculates with ``drafter``.

    Each step, a chunk carrying draft tokens (``ScheduledChunk.spec_token_ids``) is verified
    in the same forward as everything else: the logits at its last ``k + 1`` rows decide how
    many drafts are accepted and the token after them (greedy: argmax matching; sampled:
    modified rejection sampling against the draft's ``q``), so the output is the target's.
    Chunks without drafts sample as usual. Then every request that sampled gets up to
    ``num_speculative_tokens`` drafts for its next step (none for requests that want logprobs).

    Hybrid (SSM) targets: before the forward, each drafting request's state is copied into a
    scratch pool; after a rejection it is copied back, and the request is reported in
    ``SpecOutcome.rolled_back`` so the scheduler recomputes the accepted tokens from the
    chunk's start in the next step (with the next drafts).

    Attention path: when a step's non-prefill sequences carry several query tokens (a verify
    chunk: the known tokens and the drafts), the attention backend is told to attend chunks
    that short in place as multi-query decodes (``max_decode_query_len``; the ``"cpp"``
    backend's kernel reads the paged KV where it lives) rather than down its prefill path;
    ``verify_in_place = False`` keeps the prefill path (for A/B measurements).
    """

    verify_in_place: bool = True

    def __init__(
        self,
        *args: Any,
        drafter: Drafter,
        num_speculative_tokens: int,
        max_num_seqs: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.drafter = drafter
        self.k = num_speculative_tokens
        self._draft_probs: dict[str, torch.Tensor] = {}
        self._requests: dict[str, Any] = {}
        self.scratch: StatePool | None = None
        if self.state_pool is not None:
            self.scratch = self.model.allocate_state_pool(
                max_num_seqs, dtype=self.state_pool.conv[0].dtype, device=self.device
            )

    # -- hybrid state snapshots ------------------------------------------------------------------

    def _snapshot(self, chunks: list[ScheduledChunk]) -> dict[str, int]:
        if self.scratch is None or self.state_pool is None:
            return {}
        slots = {c.request.request_id: self._state_slot(c.request) for c in chunks}
        pos = {rid: i for i, rid in enumerate(slots)}
        _copy_between(self.state_pool, list(slots.values()), self.scratch, list(pos.values()))
        return pos

    def _restore(self, chunks: list[ScheduledChunk], snap: dict[str, int], rids: set[str]) -> None:
        if self.scratch is None or self.state_pool is None or not rids:
            return
        live = [self._state_slot(c.request) for c in chunks if c.request.request_id in rids]
        saved = [snap[c.request.request_id] for c in chunks if c.request.request_id in rids]
        _copy_between(self.scratch, saved, self.state_pool, live)

    # -- the step --------------------------------------------------------------------------------

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> StepResult:
        spec = SpecOutcome()
        result = StepResult(spec=spec)
        self.apply_copies(out.copies, after=False)
        if out.chunks:
            t0 = time.perf_counter()
            spec_chunks = [c for c in out.chunks if c.sample and c.num_spec_tokens]
            if (
                spec_chunks
                and self.scratch is not None
                and len(spec_chunks) > self.scratch.num_slots
            ):
                raise RuntimeError(
                    f"{len(spec_chunks)} speculating hybrid requests but {self.scratch.num_slots} "
                    "scratch state slots (max_num_seqs)"
                )
            snap = self._snapshot(spec_chunks)
            self._select_attention(spec_chunks)
            batch = self.build_batch(out)
            self._prepare_lora(out)
            hidden = self.model(batch, self.kv_cache, self.state_pool)
            self.collect_prompt_logprobs(out, batch, hidden, result)
            ends = batch.last_token_rows().tolist()
            plain = [i for i, c in enumerate(out.chunks) if c.sample and not c.num_spec_tokens]
            verify = [i for i, c in enumerate(out.chunks) if c.sample and c.num_spec_tokens]
            rows = [ends[i] for i in plain]
            for i in verify:
                n = out.chunks[i].num_spec_tokens
                rows.extend(range(ends[i] - n, ends[i] + 1))
            logits = (
                self.model.compute_logits(hidden[torch.tensor(rows, device=hidden.device)])
                if rows
                else None
            )
            if plain and logits is not None:
                reqs = [out.chunks[i].request for i in plain]
                self.sample_into(result, reqs, logits[: len(plain)])
            at = len(plain)
            # one argmax for every verified row: greedy requests need nothing else
            best = logits[at:].argmax(dim=-1).tolist() if verify and logits is not None else []
            for i in verify:
                c = out.chunks[i]
                n = c.num_spec_tokens
                assert logits is not None
                a, tok = self._verify(c, logits[at : at + n + 1], best[at - len(plain) :][: n + 1])
                at += n + 1
                rid = c.request.request_id
                spec.accepted[rid] = list(c.spec_token_ids[:a])
                result.sampled[rid] = tok
                if a < n:
                    spec.rolled_back.add(rid)
            self._restore(spec_chunks, snap, spec.rolled_back)
            if self.scratch is None:
                spec.rolled_back.clear()  # attention KV needs no rollback: slots are freed
            self._propose(out, result)
            result.forward_s = time.perf_counter() - t0
        self.apply_copies(out.copies, after=True)
        return result

    def _select_attention(self, spec_chunks: list[ScheduledChunk]) -> None:
        """Verify chunks (at most ``_MAX_IN_PLACE`` tokens) take the backend's multi-query
        decode path in this step; without them only one-token decodes do."""
        longest = max((c.num_tokens for c in spec_chunks), default=1)
        in_place = longest if self.verify_in_place and longest <= _MAX_IN_PLACE else 1
        self.model.attention_backend().max_decode_query_len = in_place

    def _verify(
        self, c: ScheduledChunk, logits: torch.Tensor, argmax: list[int]
    ) -> tuple[int, int]:
        req = c.request
        sp = req.sampling
        draft = list(c.spec_token_ids)
        q = self._draft_probs.pop(req.request_id, None)
        if is_greedy(sp) and not blocks_stop_tokens(sp, req.num_output_tokens):
            return verify_greedy(argmax, draft)
        logits = block_stop_tokens(logits, sp, req.num_output_tokens, req.eos_token_ids)
        if is_greedy(sp):
            return verify_greedy(logits, draft)
        if q is not None:
            q = q[: len(draft)]
        p = target_probs(logits, sp)
        gen = self._generator(req) or self.sampler.generator(self.device)
        return verify_sampled(p, draft, q, gen)

    def _propose(self, out: SchedulerOutput, result: StepResult) -> None:
        spec = result.spec
        assert spec is not None
        asks: list[DraftRequest] = []
        for c in out.chunks:
            req = c.request
            rid = req.request_id
            if not c.sample or rid not in result.sampled:
                continue
            self._requests[rid] = req
            self._draft_probs.pop(rid, None)
            if getattr(req.sampling, "logprobs", None) is not None:
                continue  # logprobs are per sampled token; speculation would skip some
            new = [*spec.accepted.get(rid, ()), result.sampled[rid]]
            n_out = req.num_output_tokens + len(new)
            room = min(self.k, req.max_tokens - n_out - 1)
            if room <= 0:
                continue
            asks.append(
                DraftRequest(
                    rid,
                    [*req.token_ids, *new],
                    req.num_prompt_tokens,
                    room,
                    req.sampling,
                    self._generator(req) or self.sampler.generator(self.device),
                )
            )
        if not asks:
            return
        for ask, draft in zip(asks, self.drafter.propose(asks), strict=True):
            if draft.token_ids:
                spec.drafts[ask.request_id] = list(draft.token_ids)
                if draft.probs is not None:
                    self._draft_probs[ask.request_id] = draft.probs

    def forget(self, request_id: str) -> None:
        """The request finished: show its tokens to the drafter, drop its state."""
        super().forget(request_id)
        self._draft_probs.pop(request_id, None)
        req = self._requests.pop(request_id, None)
        if req is not None and req.status.finish_reason in ("stop", "length"):
            self.drafter.observe(req.prompt_token_ids, req.output_token_ids)
        self.drafter.release(request_id)


def _copy_between(
    src: StatePool, src_slots: list[int], dst: StatePool, dst_slots: list[int]
) -> None:
    """Copy state slots from one pool to another (every Mamba layer's conv and SSM state)."""
    if not src_slots:
        return
    s = torch.tensor(src_slots, dtype=torch.long)
    d = torch.tensor(dst_slots, dtype=torch.long)
    for a, b in zip((*src.conv, *src.ssm), (*dst.conv, *dst.ssm), strict=True):
        b.index_copy_(0, d.to(b.device), a.index_select(0, s.to(a.device)))
