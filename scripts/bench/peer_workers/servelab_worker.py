"""Worker for our engine (``core.engine.LLM``), run with the project's interpreter and the
repository on ``PYTHONPATH``; protocol in ``_protocol.py``. Prefix caching is off, as in the
peers, because the benchmark repeats the same prompts in every round."""

from __future__ import annotations

import time
from typing import Any

from _protocol import TORCH_DTYPES, check_generate, serve_worker


class Worker:
    def __init__(self) -> None:
        self.llm: Any = None
        self.SamplingParams: Any = None

    def load(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        torch.set_num_threads(int(req["threads"]))
        from core.engine import LLM, SamplingParams

        kv_bytes = int(req["kv_tokens"]) * int(req["kv_bytes_per_token"])
        config = {
            "dtype": TORCH_DTYPES[req["dtype"]],
            "block_size": 16,
            "enable_prefix_caching": False,
            "seed": 0,
            "max_num_seqs": int(req["max_num_seqs"]),
            "max_num_batched_tokens": int(req["max_num_batched_tokens"]),
            "max_model_len": int(req["max_model_len"]),
            "kv_cache_memory": kv_bytes,
        }
        t0 = time.perf_counter()
        self.llm = LLM(model=req["model"], **config)
        self.SamplingParams = SamplingParams
        load_s = time.perf_counter() - t0
        model = self.llm.model
        backends = {  # the kernels chosen (core.model names them; absent names are skipped)
            k: v
            for k in ("linear_backend", "attention_backend_name")
            if isinstance(v := getattr(model, k, None), str)
        }
        return {
            "load_s": load_s,
            "version": "this checkout",
            "config": {**config, "torch_threads": torch.get_num_threads(), **backends},
        }

    def generate(self, req: dict[str, Any]) -> dict[str, Any]:
        prompts, max_tokens = check_generate(req)
        params = [
            self.SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in max_tokens
        ]
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        bad = [o for o in outs if getattr(o, "finish_reason", None) == "error"]
        if bad:
            raise RuntimeError(f"{len(bad)} request(s) failed, e.g. {getattr(bad[0], 'error', '')}")
        return {"elapsed_s": elapsed, "token_ids": [list(o.token_ids) for o in outs]}


if __name__ == "__main__":
    serve_worker(Worker())
