"""Worker for llama.cpp through llama-cpp-python's low-level API (runs in that peer's venv);
protocol in ``_protocol.py``.

llama-cpp-python's high-level ``Llama`` runs one sequence at a time, so this worker batches
itself, the way llama.cpp's own server does: one context holding up to ``max_num_seqs``
sequences in a unified KV cache, and a loop of ``llama_decode`` calls whose batch carries one
token for every decoding sequence plus prompt chunks of the others (decodes first, then
prefill up to ``max_num_batched_tokens`` tokens per call, new requests admitted in arrival
order as sequence slots free up). Greedy: the argmax of each output row's logits. The KV cache
is f32 for an fp32 model (llama.cpp's default is f16), so both sides keep the same precision.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from _protocol import check_generate, serve_worker

GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16 = 0, 1, 30
KV_TYPES = {"fp32": GGML_TYPE_F32, "bf16": GGML_TYPE_BF16, "fp16": GGML_TYPE_F16}


@dataclass
class Seq:
    """One request in flight: ``fed`` prompt tokens are in the KV cache so far."""

    index: int
    prompt: list[int]
    want: int
    slot: int = -1
    fed: int = 0
    out: list[int] = field(default_factory=list)

    @property
    def prefilled(self) -> bool:
        return self.fed == len(self.prompt)


class Worker:
    def __init__(self) -> None:
        self.ll: Any = None
        self.np: Any = None
        self.ctx: Any = None
        self.batch: Any = None
        self.capacity = 0
        self.max_seqs = 0

    def load(self, req: dict[str, Any]) -> dict[str, Any]:
        import llama_cpp as ll
        import numpy as np

        self.ll, self.np = ll, np
        threads = int(req["threads"])
        self.capacity = int(req["max_num_batched_tokens"])
        self.max_seqs = int(req["max_num_seqs"])
        t0 = time.perf_counter()
        ll.llama_backend_init()
        mparams = ll.llama_model_default_params()
        self.model = ll.llama_model_load_from_file(str(req["model"]).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {req['model']}")
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = int(req["kv_tokens"])
        cparams.n_batch = self.capacity
        cparams.n_seq_max = self.max_seqs
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.kv_unified = True
        cparams.type_k = cparams.type_v = KV_TYPES[req["dtype"]]
        cparams.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.batch = ll.llama_batch_init(self.capacity, 0, 1)
        self.memory = ll.llama_get_memory(self.ctx)
        return {
            "load_s": time.perf_counter() - t0,
            "version": ll.__version__,
            "config": {
                "n_ctx": ll.llama_n_ctx(self.ctx),
                "n_batch": cparams.n_batch,
                "n_ubatch": cparams.n_ubatch,
                "n_seq_max": cparams.n_seq_max,
                "n_threads": threads,
                "kv_unified": True,
                "kv_type": req["dtype"],
                "flash_attn_type": cparams.flash_attn_type,
                "system_info": ll.llama_print_system_info().decode(errors="replace"),
            },
        }

    def _add(self, n: int, token: int, pos: int, slot: int, logits: bool) -> None:
        b = self.batch
        b.token[n], b.pos[n], b.n_seq_id[n] = token, pos, 1
        b.seq_id[n][0] = slot
        b.logits[n] = logits

    def _step(self, running: list[Seq], waiting: deque[Seq], free: list[int]) -> list[Seq]:
        """One ``llama_decode``: decodes, then prompt chunks; returns the sequences that got a
        new token (each from its own logits row, in batch order)."""
        n, out = 0, []
        for s in running:
            if s.prefilled:
                self._add(n, s.out[-1], len(s.prompt) + len(s.out) - 1, s.slot, True)
                out.append((n, s))
                n += 1
        while waiting and free:
            s = waiting.popleft()
            s.slot = free.pop()
            running.append(s)
        for s in running:
            if s.prefilled or n == self.capacity:
                continue
            k = min(self.capacity - n, len(s.prompt) - s.fed)
            for j in range(k):
                last = s.fed + j == len(s.prompt) - 1
                self._add(n, s.prompt[s.fed + j], s.fed + j, s.slot, last)
                if last:
                    out.append((n, s))
                n += 1
            s.fed += k
        self.batch.n_tokens = n
        rc = self.ll.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} (batch of {n} tokens)")
        for i, s in out:
            row = self.np.ctypeslib.as_array(
                self.ll.llama_get_logits_ith(self.ctx, i), (self.n_vocab,)
            )
            s.out.append(int(row.argmax()))
        return [s for _, s in out]

    def generate(self, req: dict[str, Any]) -> dict[str, Any]:
        prompts, max_tokens = check_generate(req)
        too_long = [i for i, p in enumerate(prompts) if len(p) > self.capacity]
        if too_long:
            raise ValueError(f"prompt #{too_long[0]} is longer than n_batch {self.capacity}")
        seqs = [Seq(i, p, n) for i, (p, n) in enumerate(zip(prompts, max_tokens, strict=True))]
        waiting, running = deque(seqs), []
        free = list(range(self.max_seqs - 1, -1, -1))
        t0 = time.perf_counter()
        self.ll.llama_memory_clear(self.memory, True)
        while waiting or running:
            for s in self._step(running, waiting, free):
                if len(s.out) == s.want:
                    self.ll.llama_memory_seq_rm(self.memory, s.slot, -1, -1)
                    free.append(s.slot)
                    running.remove(s)
        elapsed = time.perf_counter() - t0
        return {"elapsed_s": elapsed, "token_ids": [s.out for s in seqs]}


if __name__ == "__main__":
    serve_worker(Worker())
