"""Model runners: the one narrow interface between a scheduler step and model execution.

:class:`ModelRunner` runs a real forward pass over the paged KV cache; the simulator plugs in a
runner that returns a cost model's time instead. Either way the engine loop is the same:
``out = scheduler.schedule(now); result = runner.execute(out); scheduler.update(out, ...)``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from core.kv.backend import KVBackend, KVRequest, PendingCopies
from core.kv.swap import copy_blocks
from core.lora.runtime import LoRARuntime
from core.model import ForwardBatch
from core.model.base import CausalLM
from core.model.cache import KVCache, StatePool
from core.sched.runner import StepResult
from core.sched.scheduler import SchedulerOutput

from .sampling import Sampler, prompt_logprob_entries

# rows of prompt logits turned into logprobs at once: bounds the [rows, vocab] temporaries
_PROMPT_LOGPROB_ROWS = 256


class ModelRunner:
    """Runs steps of a :class:`CausalLM` over its KV cache, SSM state pool and host swap pool.

    Contract: the block and state-slot ids in a step come from the scheduler's KV backend
    ``kv`` and index ``kv_cache``/``state_pool`` directly; host block ids index ``host_kv``. Copies queued
    by the backend are applied in a safe order: device->host swaps, host->device swaps, state
    forks, the forward, then state checkpoints. With ``lora`` (a
    :class:`~core.lora.runtime.LoRARuntime`) each request's adapter applies to its rows, in the
    mode the step's ``lora_step`` says (unmerged when it says nothing). Requests whose
    sampling asks for ``prompt_logprobs`` get the logits of every prompt row their chunk
    computes (:meth:`collect_prompt_logprobs`).
    """

    def __init__(
        self,
        model: CausalLM,
        kv_cache: KVCache,
        kv: KVBackend,
        sampler: Sampler,
        *,
        state_pool: StatePool | None = None,
        host_kv: KVCache | None = None,
        lora: LoRARuntime | None = None,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.kv = kv
        self.block_size = kv.block_size
        self.state_pool = state_pool
        self.host_kv = host_kv
        self.sampler = sampler
        self.lora = lora
        self.device = model.device
        self._generators: dict[str, torch.Generator] = {}

    def apply_copies(self, copies: PendingCopies, *, after: bool) -> None:
        if after:
            if copies.states_after:
                self._copy_states(copies.states_after)
            return
        if copies.swap_out or copies.swap_in:
            if self.host_kv is None:
                raise RuntimeError("a swap was scheduled but the runner has no host KV pool")
            dev = [*self.kv_cache.k, *self.kv_cache.v]
            host = [*self.host_kv.k, *self.host_kv.v]
            for direction, mapping in copies.swaps:  # in order: see PendingCopies
                if direction == "out":
                    copy_blocks(dev, host, mapping)
                else:
                    copy_blocks(host, dev, mapping)
        if copies.states_before:
            self._copy_states(copies.states_before)

    def _copy_states(self, pairs: list[tuple[int, int]]) -> None:
        if self.state_pool is None:
            raise RuntimeError("an SSM state copy was scheduled for a model without SSM layers")
        src, dst = zip(*pairs, strict=True)
        self.state_pool.copy_(list(src), list(dst))

    def _state_slot(self, req: KVRequest) -> int:
        slot = self.kv.state_slot(req)
        if slot is None:
            raise RuntimeError(f"request {req.request_id!r} has no state slot (hybrid model)")
        return slot

    def build_batch(self, out: SchedulerOutput) -> ForwardBatch:
        chunks = out.chunks
        state_slots = (
            [self._state_slot(c.request) for c in chunks] if self.state_pool is not None else None
        )
        return ForwardBatch.build(
            [c.input_token_ids for c in chunks],
            [c.start for c in chunks],
            [self.kv.block_table(c.request) for c in chunks],
            self.block_size,
            state_indices=state_slots,
            has_initial_state=[c.start > 0 for c in chunks] if state_slots is not None else None,
            device=self.device,
        )

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> StepResult:
        """Run one step: copies, forward, sampling of the chunks that end a sequence."""
        result = StepResult()
        self.apply_copies(out.copies, after=False)
        if out.chunks:
            t0 = time.perf_counter()
            batch = self.build_batch(out)
            self._prepare_lora(out)
            hidden = self.model(batch, self.kv_cache, self.state_pool)
            self.collect_prompt_logprobs(out, batch, hidden, result)
            rows = [i for i, c in enumerate(out.chunks) if c.sample]
            if rows:
                last = batch.last_token_rows()[torch.tensor(rows, device=hidden.device)]
                logits = self.model.compute_logits(hidden[last])
                self.sample_into(result, [out.chunks[i].request for i in rows], logits)
            result.forward_s = time.perf_counter() - t0
        self.apply_copies(out.copies, after=True)
        return result

    def collect_prompt_logprobs(
        self, out: SchedulerOutput, batch: ForwardBatch, hidden: torch.Tensor, result: StepResult
    ) -> None:
        """Prompt logprobs of the chunks whose requests ask for them: the row at position
        ``p`` predicts prompt token ``p + 1``, so a chunk over ``[start, end)`` gives the
        entries of positions ``start + 1 ..`` up to its end or the prompt's last token."""
        row = 0
        for c, n in zip(out.chunks, batch.query_lens(), strict=True):
            req = c.request
            k = getattr(req.sampling, "prompt_logprobs", None)
            count = min(c.end, req.num_prompt_tokens - 1) - c.start
            if k is not None and count > 0:
                first = c.start + 1
                targets = torch.tensor(
                    req.prompt_token_ids[first : first + count], device=hidden.device
                )
                entries = []
                for lo in range(0, count, _PROMPT_LOGPROB_ROWS):
                    hi = min(count, lo + _PROMPT_LOGPROB_ROWS)
                    logits = self.model.compute_logits(hidden[row + lo : row + hi])
                    entries.extend(prompt_logprob_entries(logits, targets[lo:hi], k))
                result.prompt_logprobs[req.request_id] = (first, entries)
            row += n

    def sample_into(self, result: StepResult, reqs: list[Any], logits: torch.Tensor) -> None:
        """Sample one token per request from its row of ``logits`` into ``result``."""
        sampled = self.sampler.sample(
            logits,
            [r.sampling for r in reqs],
            [self._generator(r) for r in reqs],
            output_lens=[r.num_output_tokens for r in reqs],
            eos_token_id=reqs[0].eos_token_ids,  # one model, one set of EOS ids
        )
        tokens = sampled.sampled_token_ids.tolist()
        for i, r in enumerate(reqs):
            result.sampled[r.request_id] = tokens[i]
            if sampled.logprobs[i] is not None:
                result.logprobs[r.request_id] = sampled.logprobs[i]

    def _prepare_lora(self, out: SchedulerOutput) -> None:
        loras = [c.request.lora for c in out.chunks]
        if self.lora is None:
            if any(lr is not None for lr in loras):
                raise RuntimeError("a request asks for a LoRA adapter but LoRA is not enabled")
            return
        merged = out.lora_step.merged if out.lora_step is not None else None
        self.lora.prepare(loras, [c.num_tokens for c in out.chunks], merged=merged)

    def _generator(self, req: Any) -> torch.Generator | None:
        seed = getattr(req.sampling, "seed", None)
        if seed is None:
            return None
        gen = self._generators.get(req.request_id)
        if gen is None:
            gen = req.sampling.new_generator(self.device)
            self._generators[req.request_id] = gen
        return gen

    def forget(self, request_id: str) -> None:
        """Drop per-request state (its sampling generator) once it finished."""
        self._generators.pop(request_id, None)
