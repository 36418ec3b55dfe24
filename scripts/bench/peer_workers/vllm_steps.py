"""Worker that drives vLLM's CPU build one engine step at a time (runs in that peer's venv) for
the fidelity benchmark; the JSON-lines framing is ``_protocol.py``'s.

vLLM runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so ``LLMEngine.step()`` is one
whole iteration: schedule, forward, sample, update, output processing. Each step is timed here
(``time.perf_counter`` and the process CPU time around it), and what vLLM's scheduler chose for
it is read from its ``SchedulerOutput``: per request, the tokens scheduled and the tokens
already computed before the step. Commands (besides ``quit``):

- ``load`` (as ``vllm_worker.py``'s, plus ``block_size``, ``enable_prefix_caching``,
  ``enforce_eager``) -> ``{"load_s", "version", "config", "num_kv_blocks", "block_size"}``;
- ``add`` ``{"requests": [{"id", "prompt", "max_tokens"}]}``: queue them (greedy, EOS ignored);
- ``step`` ``{"budget": n|null, "seqs": n|null}``: one step with the token budget and sequence
  limit set for it alone -> ``{"record", "requests", "running", "waiting"}``;
- ``abort`` ``{"ids": [...]}`` -> ``{"running", "waiting"}``;
- ``probe`` -> ``{"seconds"}``: the reference computation (:func:`reference_work`) once;
- ``replay`` ``{"requests": [{"id", "prompt", "max_tokens", "arrival"}]}``: with the prefix
  cache emptied first, serve them in wall time, each added when its arrival (seconds after the start) has come, probing in idle waits ->
  ``{"t0", "steps": [record, ...], "requests": [{"id", "arrival", "token_times", "finish"}],
  "probes": [[t, seconds], ...]}`` (times in seconds since ``t0``, the replay's start on
  ``time.perf_counter``'s clock).

A ``record`` is ``{"start", "seconds", "cpu_seconds", "new": [[id, computed, scheduled], ...],
"cached": [[id, computed, scheduled], ...]}`` (``new``: requests scheduled for the first time).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from _protocol import TORCH_DTYPES, serve

PROBE_REPEATS = 3


def reference_work() -> Any:
    """A fixed computation whose time tracks the machine's speed: 8 rows through a 256 x 32000
    fp32 matrix (the shape of the fidelity model's LM head, ~33 MB streamed)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 256, generator=gen)
    w = torch.randn(256, 32000, generator=gen)

    def work() -> None:
        with torch.inference_mode():
            torch.mm(x, w)

    return work


class StepWorker:
    def __init__(self) -> None:
        self.llm: Any = None
        self.engine: Any = None
        self.sched: Any = None
        self.params: Any = None
        self._last: Any = None
        self._work: Any = None

    # ---- setup ----------------------------------------------------------------------------

    def load(self, req: dict[str, Any]) -> dict[str, Any]:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # our ids are unique; vLLM's scheduler then uses them as they are
        os.environ.setdefault("VLLM_DISABLE_REQUEST_ID_RANDOMIZATION", "1")
        import torch
        import vllm

        config = {
            "dtype": TORCH_DTYPES[req["dtype"]],
            "skip_tokenizer_init": True,
            "enable_prefix_caching": bool(req.get("enable_prefix_caching", True)),
            "enable_chunked_prefill": True,
            "enforce_eager": bool(req.get("enforce_eager", True)),
            "block_size": int(req.get("block_size", 16)),
            "seed": 0,
            "max_num_seqs": int(req["max_num_seqs"]),
            "max_num_batched_tokens": int(req["max_num_batched_tokens"]),
            "max_model_len": int(req["max_model_len"]),
            "kv_cache_memory_bytes": int(req["kv_tokens"]) * int(req["kv_bytes_per_token"]),
        }
        t0 = time.perf_counter()
        self.llm = vllm.LLM(model=str(req["model"]), **config)
        self.engine = self.llm.llm_engine
        core = self.engine.engine_core.engine_core  # the in-process EngineCore
        self.sched = core.scheduler
        schedule = self.sched.schedule

        def recording_schedule(*a: Any, **k: Any) -> Any:
            out = schedule(*a, **k)
            self._last = out
            return out

        self.sched.schedule = recording_schedule
        self.params = vllm.SamplingParams
        self._work = reference_work()
        cache = self.engine.vllm_config.cache_config
        return {
            "load_s": time.perf_counter() - t0,
            "version": vllm.__version__,
            "config": {**config, "torch_threads": torch.get_num_threads()},
            "num_kv_blocks": int(cache.num_gpu_blocks or 0),
            "block_size": int(cache.block_size),
        }

    # ---- one step at a time ------------------------------------------------------------------

    def _add(self, r: dict[str, Any]) -> None:
        p = self.params(
            temperature=0.0, max_tokens=int(r["max_tokens"]), ignore_eos=True, detokenize=False
        )
        self.engine.add_request(str(r["id"]), {"prompt_token_ids": list(r["prompt"])}, p)

    def add(self, req: dict[str, Any]) -> dict[str, Any]:
        for r in req["requests"]:
            self._add(r)
        return self._counts()

    def _counts(self) -> dict[str, Any]:
        return {"running": len(self.sched.running), "waiting": len(self.sched.waiting)}

    def _step(self) -> tuple[dict[str, Any] | None, list[Any]]:
        """One ``LLMEngine.step()``; its record (None if nothing ran) and its outputs."""
        self._last = None
        c0, t0 = time.process_time(), time.perf_counter()
        outs = self.engine.step()
        t1, c1 = time.perf_counter(), time.process_time()
        out = self._last
        self._last = None
        if out is None or not out.total_num_scheduled_tokens:
            return None, outs
        n = out.num_scheduled_tokens
        new = [
            [r.req_id, int(r.num_computed_tokens), int(n[r.req_id])] for r in out.scheduled_new_reqs
        ]
        c = out.scheduled_cached_reqs
        cached = [
            [rid, int(k), int(n[rid])]
            for rid, k in zip(c.req_ids, c.num_computed_tokens, strict=True)
            if rid in n
        ]
        rec = {
            "start": t0,
            "seconds": t1 - t0,
            "cpu_seconds": c1 - c0,
            "new": new,
            "cached": cached,
        }
        return rec, outs

    def step(self, req: dict[str, Any]) -> dict[str, Any]:
        s = self.sched
        saved = s.max_num_scheduled_tokens, s.max_num_running_reqs, s.max_num_active_reqs
        cap = self.engine.vllm_config.scheduler_config
        try:
            if req.get("budget") is not None:
                s.max_num_scheduled_tokens = min(int(req["budget"]), cap.max_num_batched_tokens)
            if req.get("seqs") is not None:
                seqs = min(
                    int(req["seqs"]), cap.max_num_seqs
                )  # the runner's buffers hold this many
                s.max_num_running_reqs = s.max_num_active_reqs = seqs
            rec, outs = self._step()
        finally:
            s.max_num_scheduled_tokens, s.max_num_running_reqs, s.max_num_active_reqs = saved
        state = {}
        for o in outs:
            state[o.request_id] = {"finished": bool(o.finished)}
        for rid, r in s.requests.items():
            state.setdefault(rid, {})
            state[rid].update(computed=int(r.num_computed_tokens), tokens=int(r.num_tokens))
        if rec is not None:
            for rid, _, _ in rec["new"] + rec["cached"]:
                state.setdefault(rid, {"finished": rid not in s.requests})
        return {"record": rec, "requests": state, **self._counts()}

    def abort(self, req: dict[str, Any]) -> dict[str, Any]:
        ids = [str(i) for i in req["ids"]]
        if ids:
            self.engine.abort_request(ids)
        return self._counts()

    def _probe(self) -> float:
        times = []
        for _ in range(PROBE_REPEATS):
            t0 = time.perf_counter()
            self._work()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def probe(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"seconds": self._probe()}

    # ---- a stream in wall time ---------------------------------------------------------------

    def replay(self, req: dict[str, Any]) -> dict[str, Any]:
        pending = sorted(req["requests"], key=lambda r: float(r["arrival"]))
        times: dict[str, list[float]] = {str(r["id"]): [] for r in pending}
        finish: dict[str, float] = {}
        steps: list[dict[str, Any]] = []
        probes: list[list[float]] = []
        probe_cost = 0.0
        # every stream starts cold: a replay of the same prompts must not hit the last one's KV
        self.engine.reset_prefix_cache()
        t0 = time.perf_counter()
        i = 0
        while i < len(pending) or self.engine.has_unfinished_requests():
            now = time.perf_counter()
            while i < len(pending) and t0 + float(pending[i]["arrival"]) <= now:
                self._add(pending[i])
                i += 1
            if self.engine.has_unfinished_requests():
                rec, outs = self._step()
                end = time.perf_counter() - t0
                if rec is not None:
                    rec["start"] -= t0
                    steps.append(rec)
                for o in outs:
                    got = len(o.outputs[0].token_ids)
                    ts = times[o.request_id]
                    ts.extend([end] * (got - len(ts)))
                    if o.finished:
                        finish[o.request_id] = end
                continue
            wait_until = t0 + float(pending[i]["arrival"])
            while wait_until - time.perf_counter() > 2 * max(probe_cost, 1e-4):
                a = time.perf_counter()
                s = self._probe()
                b = time.perf_counter()
                probe_cost = max(probe_cost, b - a)
                probes.append([(a + b) / 2 - t0, s])
            left = wait_until - time.perf_counter()
            if left > 0:
                time.sleep(left)
        return {
            "t0": t0,
            "steps": steps,
            "probes": probes,
            "requests": [
                {
                    "id": str(r["id"]),
                    "arrival": float(r["arrival"]),
                    "token_times": times[str(r["id"])],
                    "finish": finish.get(str(r["id"])),
                }
                for r in pending
            ],
        }


if __name__ == "__main__":
    w = StepWorker()
    serve(
        {
            "load": w.load,
            "add": w.add,
            "step": w.step,
            "abort": w.abort,
            "probe": w.probe,
            "replay": w.replay,
        }
    )
