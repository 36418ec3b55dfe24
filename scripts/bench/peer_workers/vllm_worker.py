"""Worker for vLLM's CPU build (runs in that peer's venv); protocol in ``_protocol.py``.

vLLM runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set by the bench): its
threads follow ``OMP_NUM_THREADS`` and no engine-core process keeps a core busy between jobs.
Token ids in and out (``skip_tokenizer_init``: the checkpoint has no tokenizer), prefix caching
off (every round repeats the same prompts), the KV cache sized by the bench like ours, and the
same batching limits as ours.
"""

from __future__ import annotations

import os
import time
from typing import Any

from _protocol import TORCH_DTYPES, check_generate, serve_worker


class Worker:
    def __init__(self) -> None:
        self.llm: Any = None
        self.SamplingParams: Any = None

    def load(self, req: dict[str, Any]) -> dict[str, Any]:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        import torch
        import vllm

        config = {
            "dtype": TORCH_DTYPES[req["dtype"]],
            "skip_tokenizer_init": True,
            "enable_prefix_caching": False,
            "seed": 0,
            "max_num_seqs": int(req["max_num_seqs"]),
            "max_num_batched_tokens": int(req["max_num_batched_tokens"]),
            "max_model_len": int(req["max_model_len"]),
            "kv_cache_memory_bytes": int(req["kv_tokens"]) * int(req["kv_bytes_per_token"]),
        }
        t0 = time.perf_counter()
        self.llm = vllm.LLM(model=str(req["model"]), **config)
        self.SamplingParams = vllm.SamplingParams
        return {
            "load_s": time.perf_counter() - t0,
            "version": vllm.__version__,
            "config": {**config, "torch_threads": torch.get_num_threads()},
        }

    def generate(self, req: dict[str, Any]) -> dict[str, Any]:
        prompts, max_tokens = check_generate(req)
        params = [
            self.SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False)
            for n in max_tokens
        ]
        inputs = [{"prompt_token_ids": p} for p in prompts]
        t0 = time.perf_counter()
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        return {"elapsed_s": elapsed, "token_ids": [list(o.outputs[0].token_ids) for o in outs]}


if __name__ == "__main__":
    serve_worker(Worker())
