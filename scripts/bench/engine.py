"""Engine benchmark: our engine (``core.engine``) against transformers on one ~125M Llama.

``python -m scripts.bench engine [--quick] [--out results/bench] [--dtype fp32,bf16]``

One process, one random-initialised model: ``transformers.LlamaForCausalLM`` built from the
``tiny-llama-125m`` preset (hidden 768, 12 layers, 12 heads, 4 KV heads, vocab 32000) with a
fixed seed and saved with ``save_pretrained`` to a temporary folder, which transformers and our
engine then both load, so both run the very same weights. For each dtype asked (fp32, bf16):

1. **roofline**: this machine's GEMM peak in that dtype and its memory bandwidth (method in
   :mod:`scripts.bench.roofline`), measured before and after the dtype's runs; the best of the
   two is used, because load from other work only ever lowers them.
2. **offline**: a seeded batch of requests (full scale: 64, prompt lengths uniform in 32..256,
   output lengths uniform in 16..128, EOS ignored), answered by
   (a) ``model.generate`` in static batches in arrival order, left padded, greedy, each batch
   run to its longest output (``min_new_tokens = max_new_tokens``), at the best of several batch
   sizes; only each request's own output tokens count as useful, so padding and the tokens
   generated past a request's end count against it;
   (b) transformers continuous batching (the manager ``generate_batch`` wraps, fed through
   ``continuous_batching_context_manager`` and ``add_request(..., max_new_tokens=<own
   length>)``, because ``generate_batch`` itself takes one ``max_new_tokens`` for every request);
   (c) our engine's ``LLM.generate``.
   Both continuous batchers get the same token budget and sequence limit, and a KV cache large
   enough for the whole workload (so neither is slowed by preemption).
   Useful generated tokens per second of each, our ratio to (a) and (b), and each as a % of the
   roofline bound: the workload's FLOPs (every prefill and decode, from ``ModelSpec``) over the
   GEMM peak is a lower bound on time.
3. **decode**: time per decode step at batch sizes 1..64 with ~128 tokens of context (prompts of
   ``context - steps/2`` tokens, ``steps`` decode steps), for our engine and ``generate``, both as
   TPOT = (last token time - first token time) / (tokens - 1), and as a % of the roofline of a
   step: ``max(bytes / bandwidth, FLOPs / peak)`` with bytes = every weight and each sequence's
   KV cache read once (``ModelSpec.operators``).
4. **scheduler**: with N equal requests running together (full: 64), the share of step time
   spent outside the model forward, over the steps where all N decode. ``llm.engine.step`` is
   wrapped so every step is recorded, with three views of "forward": the engine's own per-step
   timing (``llm.engine.last_step``: ``total_s``, ``forward_s``, ``num_tokens``, ``num_seqs``;
   the target uses this one), the runner's forward method timed around each call
   (``llm.engine.runner.execute``), the model's forward plus its lm_head (``compute_logits``),
   and the model ``nn.Module``'s forward alone (forward hooks); with the last two, batch
   building and sampling count as outside. Without ``last_step`` the steady steps are the
   middle half of those that ran a forward.
5. **ttft**: our engine's time to first token for a prompt that shares a 1,024-token prefix
   with an earlier one (prefix cache hit) and for one that shares nothing (miss).

Until ``core.engine`` can be imported, every engine measurement is recorded as skipped with the
import error, and the transformers measurements still run.

The engine API used (see ``ENGINE_API``): ``LLM(model=<checkpoint dir>, dtype="float32" |
"bfloat16", block_size=16, enable_prefix_caching=True, seed=0, max_num_seqs=...,
max_num_batched_tokens=..., kv_cache_memory=<bytes>)`` (``kv_cache_memory`` only if ``LLM``
takes it); ``llm.generate(prompts: list[list[int]], sampling_params: SamplingParams |
list[SamplingParams], use_tqdm=False) -> list[RequestOutput]`` in prompt order;
``SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)``; ``RequestOutput.token_ids``
(generated ids), ``.metrics`` (a dict or an object) with ``arrival_time``, ``first_token_time``,
``finish_time`` (seconds, one clock), ``.num_cached_tokens`` and ``.error`` if present;
``llm.engine.step()`` called by ``generate`` once per step; optionally ``llm.engine.last_step``
and ``llm.engine.runner`` (see 4).

Writes ``<out>/engine.json`` (layout in :mod:`scripts.bench.report`) after every part, so an
interrupted run keeps what it measured, and prints the tables. ``--quick`` shrinks everything
(fewer, shorter requests, fp32 only) to run in well under a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import report as rep
from . import roofline as rf
from .peers import bench as peer_bench
from .peers.systems import PEERS

MODEL_PRESET = "tiny-llama-125m"
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
FIRST_TOKEN_ID = 3  # random prompts avoid the special ids
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "results" / "bench"  # <repo>/results/bench
PARTS = ("offline", "decode", "scheduler", "ttft")

DTYPES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16"}
_DTYPE_ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
}

ENGINE_API = (
    "from core.engine import LLM, SamplingParams; LLM(model=<checkpoint dir>, dtype='float32'|"
    "'bfloat16', block_size=16, enable_prefix_caching=True, seed=0, max_num_seqs=N, "
    "max_num_batched_tokens=T[, kv_cache_memory=bytes]); llm.generate(list[list[int]], "
    "SamplingParams | list[SamplingParams], use_tqdm=False) -> list[RequestOutput] in prompt "
    "order; SamplingParams(temperature=0, max_tokens=n, ignore_eos=True); "
    "RequestOutput.token_ids, RequestOutput.metrics[arrival_time, first_token_time, "
    "finish_time] (s), RequestOutput.num_cached_tokens; llm.engine.step(); optional: "
    "llm.engine.last_step.{total_s, forward_s, num_tokens, num_seqs}, llm.engine.runner.execute"
)

# fmt: off
TARGETS = {  # from the engine issue: (description, op, threshold, unit)
    "offline_vs_generate": ("offline tokens/s of our engine / HF generate (best batch)", ">=", 2.0, "x"),
    "offline_vs_generate_batch": ("offline tokens/s of our engine / HF continuous batching", ">=", 3.0, "x"),
    "offline_roofline": ("our engine's offline tokens/s as % of the FLOP roofline", ">=", 60.0, "%"),
    "decode_b1_roofline": ("our engine's batch-1 decode step as % of its roofline", ">=", 60.0, "%"),
    "scheduler_share": ("share of step time outside the model forward, N running", "<=", 10.0, "%"),
}
# fmt: on


@dataclass(frozen=True)
class Scale:
    """Every size of the benchmark. ``FULL`` is the issue's; ``QUICK`` runs in seconds."""

    name: str
    dtypes: tuple[str, ...]
    n_requests: int
    prompt_range: tuple[int, int]
    output_range: tuple[int, int]
    hf_batch_sizes: tuple[int, ...]
    decode_batches: tuple[int, ...]
    decode_context: int
    decode_steps: int
    sched_requests: int
    sched_prompt: int
    sched_output: int
    ttft_prefix: int
    ttft_suffix: int
    ttft_repeats: int
    gemm_sizes: tuple[int, ...]
    gemm_tokens: int  # the model's own projections are timed at this many tokens too
    bandwidth_mib: int
    max_num_seqs: int
    max_num_batched_tokens: int
    hf_cb_page_size: int = 256  # transformers' default page size
    block_size: int = 16


FULL = Scale(
    name="full",
    dtypes=("fp32", "bf16"),
    n_requests=64,
    prompt_range=(32, 256),
    output_range=(16, 128),
    hf_batch_sizes=(8, 16, 32, 64),
    decode_batches=(1, 2, 4, 8, 16, 32, 64),
    decode_context=128,
    decode_steps=32,
    sched_requests=64,
    sched_prompt=64,
    sched_output=48,
    ttft_prefix=1024,
    ttft_suffix=32,
    ttft_repeats=5,
    gemm_sizes=(512, 1024, 2048),
    gemm_tokens=512,
    bandwidth_mib=256,
    max_num_seqs=64,
    max_num_batched_tokens=4096,
)
QUICK = Scale(
    name="quick",
    dtypes=("fp32",),
    n_requests=8,
    prompt_range=(16, 48),
    output_range=(2, 8),
    hf_batch_sizes=(4, 8),
    decode_batches=(1, 4),
    decode_context=32,
    decode_steps=4,
    sched_requests=8,
    sched_prompt=16,
    sched_output=8,
    ttft_prefix=128,
    ttft_suffix=16,
    ttft_repeats=2,
    gemm_sizes=(256, 512),
    gemm_tokens=64,
    bandwidth_mib=64,
    max_num_seqs=16,
    max_num_batched_tokens=1024,
)


# ------------------------------------------------------------------------------------------
# Workload
# ------------------------------------------------------------------------------------------


class Tokens:
    """A seeded source of random prompts (ids in ``[FIRST_TOKEN_ID, vocab)``): every call gives
    fresh tokens, so no two prompts share a prefix by accident."""

    def __init__(self, vocab: int, seed: int) -> None:
        import numpy as np

        self.vocab = vocab
        self.rng = np.random.default_rng(seed)

    def prompt(self, n: int) -> list[int]:
        return self.rng.integers(FIRST_TOKEN_ID, self.vocab, size=int(n)).tolist()

    def lengths(self, n: int, lo: int, hi: int) -> list[int]:
        """``n`` lengths uniform in ``lo..hi`` (both included)."""
        return self.rng.integers(lo, hi + 1, size=int(n)).tolist()


@dataclass
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def prompt_lens(self) -> list[int]:
        return [len(p) for p in self.prompts]

    @property
    def useful_tokens(self) -> int:
        return sum(self.output_lens)

    def describe(self) -> dict[str, Any]:
        p, o = self.prompt_lens, self.output_lens
        return {
            "n_requests": len(p),
            "prompt_tokens": sum(p),
            "prompt_len_min_mean_max": [min(p), statistics.fmean(p), max(p)],
            "output_tokens": sum(o),
            "output_len_min_mean_max": [min(o), statistics.fmean(o), max(o)],
        }


def make_workload(scale: Scale, vocab: int, seed: int) -> Workload:
    """The offline requests: prompt and output lengths uniform in the scale's ranges."""
    tok = Tokens(vocab, seed)
    plens = tok.lengths(scale.n_requests, *scale.prompt_range)
    olens = tok.lengths(scale.n_requests, *scale.output_range)
    return Workload([tok.prompt(n) for n in plens], olens)


# ------------------------------------------------------------------------------------------
# Model and transformers baselines
# ------------------------------------------------------------------------------------------


def build_checkpoint(directory: Path, seed: int) -> dict[str, Any]:
    """Build the random-initialised ``tiny-llama-125m`` with transformers (seeded) and save it
    to ``directory``; return its config dict."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.model.spec import preset_config

    cfg = preset_config(MODEL_PRESET)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.save_pretrained(directory)
    del model
    gc.collect()
    return cfg


def load_hf(directory: Path, dtype: str) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(
        directory, dtype=getattr(torch, DTYPES[dtype]), attn_implementation="sdpa"
    )
    return model.eval()


def _left_pad(prompts: Sequence[list[int]]) -> tuple[Any, Any]:
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


def hf_generate_static(model: Any, wl: Workload, batch_size: int) -> dict[str, Any]:
    """``model.generate`` over static batches of ``batch_size`` requests in arrival order, left
    padded, greedy, each batch to its longest output. Returns timings, token counts and each
    request's own output tokens."""
    import torch

    outputs: list[list[int]] = []
    computed = padded_prompt = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(wl.prompts), batch_size):
            prompts = wl.prompts[i : i + batch_size]
            want = wl.output_lens[i : i + batch_size]
            ids, mask = _left_pad(prompts)
            n = max(want)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=PAD_ID,
                eos_token_id=EOS_ID,
            )
            gen = out[:, ids.shape[1] :].tolist()
            outputs += [g[:k] for g, k in zip(gen, want, strict=True)]
            computed += len(prompts) * n
            padded_prompt += ids.numel()
    elapsed = time.perf_counter() - t0
    return {
        "batch_size": batch_size,
        "elapsed_s": elapsed,
        "useful_tokens": wl.useful_tokens,
        "tokens_per_s": wl.useful_tokens / elapsed,
        "generated_token_slots": computed,
        "output_waste_fraction": 1 - wl.useful_tokens / computed,
        "padded_prompt_tokens": padded_prompt,
        "prompt_padding_fraction": 1 - sum(wl.prompt_lens) / padded_prompt,
        "_outputs": outputs,
    }


def _cb_config(scale: Scale, wl: Workload) -> Any:
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    page = scale.hf_cb_page_size
    blocks = sum(
        math.ceil((p + o) / page) + 1 for p, o in zip(wl.prompt_lens, wl.output_lens, strict=True)
    )
    # Sized explicitly: on a CPU transformers would otherwise size the cache from system RAM.
    return ContinuousBatchingConfig(
        page_size=page,
        num_blocks=blocks,
        max_batch_tokens=scale.max_num_batched_tokens,
        max_requests_per_batch=scale.max_num_seqs,
        seed=0,
    )


def hf_continuous_batching(model: Any, wl: Workload, scale: Scale) -> dict[str, Any]:
    """transformers continuous batching (the manager behind ``generate_batch``), with each
    request's own ``max_new_tokens`` and EOS disabled. Timed from the first ``add_request`` to
    the last result; the manager (and its KV cache) is built before the clock starts, as our
    engine's is."""
    from transformers import GenerationConfig

    if not hasattr(model, "continuous_batching_context_manager"):
        raise Unavailable(
            "this transformers has no continuous batching (no "
            "continuous_batching_context_manager / generate_batch on the model)"
        )
    gen_cfg = GenerationConfig(
        do_sample=False, max_new_tokens=max(wl.output_lens), eos_token_id=-1, pad_token_id=PAD_ID
    )
    results: dict[str, Any] = {}
    with model.continuous_batching_context_manager(
        generation_config=gen_cfg, continuous_batching_config=_cb_config(scale, wl), warmup=False
    ) as manager:
        t0 = time.perf_counter()
        ids = [
            manager.add_request(p, max_new_tokens=n)
            for p, n in zip(wl.prompts, wl.output_lens, strict=True)
        ]
        while len(results) < len(ids):
            r = manager.get_result(timeout=1)
            if r is None:
                if not manager.is_running():
                    raise RuntimeError("transformers' continuous batching thread stopped early")
                continue
            if r.is_finished():
                if r.error is not None:
                    raise RuntimeError(f"request {r.request_id} failed: {r.error}")
                results[r.request_id] = r
        elapsed = time.perf_counter() - t0
    outputs = [list(results[i].generated_tokens) for i in ids]
    got = sum(min(len(o), n) for o, n in zip(outputs, wl.output_lens, strict=True))
    return {
        "elapsed_s": elapsed,
        "useful_tokens": got,
        "tokens_per_s": got / elapsed,
        "output_lengths_ok": [len(o) for o in outputs] == wl.output_lens,
        "config": {
            "page_size": scale.hf_cb_page_size,
            "max_batch_tokens": scale.max_num_batched_tokens,
            "max_requests_per_batch": scale.max_num_seqs,
            "attn_implementation": "sdpa (paged)",
        },
        "_outputs": outputs,
    }


class Unavailable(RuntimeError):
    """A system this benchmark compares with is not available here (the reason is the
    message); its measurements are recorded as skipped."""


class _StepClock:
    """A logits processor that only records when ``generate`` reaches it: once per generated
    token, right after that token's forward."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.times.append(time.perf_counter())
        return scores


def linear_only_step(model: Any, rows: int, repeats: int = 5) -> dict[str, Any]:
    """Best time of a decode step's linear layers alone, through the model's own kernels.

    Every ``core.kernels.Linear`` of ``model`` runs once in module order on a ``rows``-row
    input, then the LM head (``model.compute_logits``), so all the weights are streamed as in
    a step but nothing else runs: no attention, norms, sampling or Python around them. With
    ~400 MB of weights per step nothing stays in cache between runs. A step of the whole model
    cannot beat this on these kernels, so its % of the step roofline is the ceiling those
    kernels put on the engine's own.
    """
    import torch

    from core.kernels.linear import Linear

    gen = torch.Generator().manual_seed(0)
    layers = [m for m in model.modules() if isinstance(m, Linear) and m is not model.lm_head]
    inputs = [torch.randn(rows, m.in_features, generator=gen).to(model.dtype) for m in layers]
    head_in = torch.randn(rows, model.config.hidden_size, generator=gen).to(model.dtype)

    def step() -> None:
        with torch.inference_mode():
            for m, x in zip(layers, inputs, strict=True):
                m(x)
            model.compute_logits(head_in)

    return {
        "step_s": rf.time_best(step, repeats),
        "linear_layers": len(layers) + 1,
        "linear_backend": model.linear_backend,
    }


def hf_decode_step(model: Any, prompts: list[list[int]], steps: int) -> dict[str, Any]:
    """One ``generate`` call over equal-length prompts (no padding) for ``steps + 1`` tokens;
    TPOT = (last token time - first token time) / steps, and the median step."""
    import torch
    from transformers import LogitsProcessorList

    clock = _StepClock()
    ids = torch.tensor(prompts, dtype=torch.long)
    with torch.inference_mode():
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=steps + 1,
            min_new_tokens=steps + 1,
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
            logits_processor=LogitsProcessorList([clock]),
        )
    t = clock.times
    gaps = [b - a for a, b in zip(t[:-1], t[1:], strict=True)]
    return {"step_s": (t[-1] - t[0]) / (len(t) - 1), "median_step_s": statistics.median(gaps)}


# ------------------------------------------------------------------------------------------
# Our engine
# ------------------------------------------------------------------------------------------


def import_engine() -> tuple[Any, Any, str | None]:
    """``(LLM, SamplingParams, None)``, or ``(None, None, reason)`` when ``core.engine`` cannot
    be imported (not written yet, or broken)."""
    try:
        from core.engine import LLM, SamplingParams
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip the engine"
        return None, None, f"core.engine cannot be imported ({type(exc).__name__}: {exc})"
    return LLM, SamplingParams, None


def _metric(metrics: Any, name: str) -> float:
    value = metrics[name] if isinstance(metrics, dict) else getattr(metrics, name)
    return float(value)


def _ttft(out: Any) -> float:
    return _metric(out.metrics, "first_token_time") - _metric(out.metrics, "arrival_time")


def _tpot(out: Any) -> float:
    n = len(out.token_ids)
    if n < 2:
        raise ValueError("TPOT needs at least two generated tokens")
    return (_metric(out.metrics, "finish_time") - _metric(out.metrics, "first_token_time")) / (
        n - 1
    )


class Engine:
    """Our engine for one dtype, built once and reused by every part.

    ``kv_tokens`` sizes the KV cache (``kv_cache_memory``, when ``LLM`` takes it) to hold that
    many tokens, as transformers' continuous batching cache is sized for the whole workload:
    neither system runs out of blocks, so neither is slowed by preemption.
    """

    def __init__(self, ckpt: Path, dtype: str, scale: Scale, seed: int, kv_bytes: int) -> None:
        import inspect

        LLM, SamplingParams, reason = import_engine()
        if reason:
            raise RuntimeError(reason)
        self.SamplingParams = SamplingParams
        self.kwargs: dict[str, Any] = {
            "model": str(ckpt),
            "dtype": DTYPES[dtype],
            "block_size": scale.block_size,
            "enable_prefix_caching": True,
            "seed": seed,
            "max_num_seqs": scale.max_num_seqs,
            "max_num_batched_tokens": scale.max_num_batched_tokens,
        }
        try:
            accepted = inspect.signature(LLM).parameters
        except (TypeError, ValueError):
            accepted = {}
        if "kv_cache_memory" in accepted:
            self.kwargs["kv_cache_memory"] = int(kv_bytes)
        t0 = time.perf_counter()
        self.llm = LLM(**self.kwargs)
        self.init_s = time.perf_counter() - t0

    def params(self, max_tokens: int) -> Any:
        return self.SamplingParams(temperature=0, max_tokens=int(max_tokens), ignore_eos=True)

    def generate(self, prompts: list[list[int]], max_tokens: int | Sequence[int]) -> list[Any]:
        if isinstance(max_tokens, int):
            sp: Any = self.params(max_tokens)
        else:
            sp = [self.params(n) for n in max_tokens]
        outs = self.llm.generate(prompts, sp, use_tqdm=False)
        if len(outs) != len(prompts):
            raise RuntimeError(
                f"LLM.generate returned {len(outs)} outputs for {len(prompts)} prompts"
            )
        bad = [o for o in outs if getattr(o, "error", None)]
        if bad:
            raise RuntimeError(f"{len(bad)} request(s) failed, e.g.: {bad[0].error}")
        return outs


# ------------------------------------------------------------------------------------------
# Step instrumentation (scheduler overhead)
# ------------------------------------------------------------------------------------------


@dataclass
class _Timer:
    total: float = 0.0
    _start: list[float] = field(default_factory=list)

    def start(self) -> None:
        self._start.append(time.perf_counter())

    def stop(self) -> None:
        if self._start:
            self.total += time.perf_counter() - self._start.pop()


def _find_model_module(root: Any, max_depth: int = 3) -> Any:
    """The model (a ``torch.nn.Module``) somewhere under ``root``'s attributes: a
    ``core.model.CausalLM`` if there is one, else the module with the most parameters."""
    import torch

    try:
        from core.model.base import CausalLM
    except Exception:  # noqa: BLE001
        CausalLM = None  # type: ignore[assignment,misc]
    seen: set[int] = set()
    best, best_n = None, -1
    frontier = [root]
    for _ in range(max_depth + 1):
        nxt = []
        for obj in frontier:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, torch.nn.Module):
                if CausalLM is not None and isinstance(obj, CausalLM):
                    return obj
                n = sum(p.numel() for p in obj.parameters())
                if n > best_n:
                    best, best_n = obj, n
                continue  # never walk into submodules
            attrs = getattr(obj, "__dict__", None)
            if isinstance(attrs, dict):
                nxt += [v for v in attrs.values() if not isinstance(v, (str, bytes, int, float))]
        frontier = nxt
    return best


RUNNER_ATTRS = ("runner", "model_runner")
RUNNER_FORWARD_METHODS = ("execute", "execute_model", "run_model", "forward", "run")


@contextlib.contextmanager
def instrument_engine(engine: Any) -> Iterator[dict[str, Any]]:
    """Time every ``engine.step()`` and the forward inside it while the context is open.

    Yields ``{"steps": [record, ...], "runner_forward": <what was timed or None>,
    "module_forward": <model class or None>}``; one record per step with ``wall_s`` (the step,
    timed around it), ``runner_s`` (inside the runner's forward method: the first of
    ``RUNNER_FORWARD_METHODS`` on ``engine.runner`` / ``engine.model_runner``, wrapped on the
    instance), ``module_s`` (inside the model ``nn.Module``'s forward, by forward hooks),
    ``logits_s`` (inside the model's ``compute_logits``, the lm_head, when it has one),
    ``model_s`` (their sum: all model compute) and, when the engine keeps its own
    ``engine.last_step`` timing, ``stats_total_s``, ``stats_forward_s``, ``num_tokens``,
    ``num_seqs``. Everything is restored on exit.
    """
    if not callable(getattr(engine, "step", None)):
        raise RuntimeError("llm.engine has no step() method")
    info: dict[str, Any] = {"steps": [], "runner_forward": None, "module_forward": None}
    runner_t, module_t, logits_t = _Timer(), _Timer(), _Timer()
    restore: list[Callable[[], None]] = []

    def wrap(obj: Any, name: str, before: Callable[[], None], after: Callable[[], None]) -> None:
        orig = getattr(obj, name)
        had_own = name in getattr(obj, "__dict__", {})

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before()
            try:
                return orig(*args, **kwargs)
            finally:
                after()

        setattr(obj, name, wrapped)
        restore.append(lambda: setattr(obj, name, orig) if had_own else delattr(obj, name))

    for attr in RUNNER_ATTRS:
        runner = getattr(engine, attr, None)
        meth = next((m for m in RUNNER_FORWARD_METHODS if callable(getattr(runner, m, None))), None)
        if runner is not None and meth:
            wrap(runner, meth, runner_t.start, runner_t.stop)
            info["runner_forward"] = f"engine.{attr}.{meth}"
            break
    module = _find_model_module(engine)
    if module is not None:
        h1 = module.register_forward_pre_hook(lambda *a: module_t.start())
        h2 = module.register_forward_hook(lambda *a: module_t.stop())
        restore += [h1.remove, h2.remove]
        info["module_forward"] = type(module).__name__
        if callable(getattr(module, "compute_logits", None)):  # core.model: the lm_head
            wrap(module, "compute_logits", logits_t.start, logits_t.stop)
    mark: dict[str, float] = {}

    def before_step() -> None:
        mark.update(r=runner_t.total, m=module_t.total, lg=logits_t.total, t=time.perf_counter())

    def after_step() -> None:
        rec: dict[str, Any] = {
            "wall_s": time.perf_counter() - mark["t"],
            "runner_s": runner_t.total - mark["r"],
            "module_s": module_t.total - mark["m"],
            "logits_s": logits_t.total - mark["lg"],
        }
        rec["model_s"] = rec["module_s"] + rec["logits_s"]
        stats = getattr(engine, "last_step", None)
        for key, attr in (
            ("stats_total_s", "total_s"),
            ("stats_forward_s", "forward_s"),
            ("num_tokens", "num_tokens"),
            ("num_seqs", "num_seqs"),
        ):
            rec[key] = getattr(stats, attr, None)
        info["steps"].append(rec)

    wrap(engine, "step", before_step, after_step)
    try:
        yield info
    finally:
        for undo in reversed(restore):
            undo()


def steady_steps(records: Sequence[dict[str, Any]], n_running: int) -> tuple[list[dict], str]:
    """The steps where all ``n_running`` requests decode together: those whose engine stats say
    exactly ``n_running`` sequences and tokens; without stats, the middle half of the steps
    that ran a forward (all requests are equal, so that is past every prefill and before any
    request finishes)."""
    if records and all(r.get("num_seqs") is not None for r in records):
        sel = [r for r in records if r["num_seqs"] == n_running and r["num_tokens"] == n_running]
        return sel, f"steps with exactly {n_running} sequences decoding one token each"
    fwd = [r for r in records if r.get("runner_s") or r.get("module_s")]
    return fwd[len(fwd) // 4 : len(fwd) - len(fwd) // 4], "middle half of the steps with a forward"


def outside_share(
    steps: Sequence[dict[str, Any]], total_key: str, forward_key: str
) -> dict[str, Any]:
    """``100 * sum(total - forward) / sum(total)`` over ``steps``, with the mean step and
    forward times."""
    if not steps:
        raise ValueError("no steps to measure")
    total = sum(r[total_key] for r in steps)
    inside = sum(r[forward_key] for r in steps)
    if total <= 0:
        raise ValueError("steps took no time")
    return {
        "steps": len(steps),
        "mean_step_s": total / len(steps),
        "mean_forward_s": inside / len(steps),
        "outside_share_pct": 100.0 * (total - inside) / total,
    }


SHARE_SOURCES = {  # name: (step time key, forward time key, what the forward is)
    "engine_stats": (
        "stats_total_s",
        "stats_forward_s",
        "the engine's own StepStats (engine.last_step: total_s, forward_s)",
    ),
    "runner": ("wall_s", "runner_s", "the runner's forward method, timed around each call"),
    "model": (
        "wall_s",
        "model_s",
        "the model's forward plus its lm_head (compute_logits): all "
        "model compute, so batch building and sampling count as outside",
    ),
    "module": (
        "wall_s",
        "module_s",
        "the model nn.Module's forward alone, by forward hooks "
        "(so batch building, the lm_head/logits and sampling count as outside)",
    ),
}


# ------------------------------------------------------------------------------------------
# The parts
# ------------------------------------------------------------------------------------------


def _guard(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; :class:`Unavailable` becomes ``{"status": "skipped", "reason"}``,
    any other exception ``{"status": "error", ...}``, so the others still run and the report
    says why."""
    try:
        out = fn()
    except Unavailable as exc:
        return _skipped(str(exc))
    except Exception as exc:  # noqa: BLE001 - a benchmark reports failures, it does not stop
        return {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=-3),
        }
    return {"status": "ok", **out}


def _skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def _agreement(a: list[list[int]], b: list[list[int]]) -> dict[str, float]:
    n = len(a)
    return {
        "exact_match_fraction": sum(x == y for x, y in zip(a, b, strict=True)) / n,
        "first_token_match_fraction": sum(x[:1] == y[:1] for x, y in zip(a, b, strict=True)) / n,
    }


def _ok(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("status") == "ok"


def annotate(res: dict[str, Any]) -> None:
    """(Re)compute every roofline-derived number of one dtype's results from its measured
    times, FLOPs and bytes and the current ``res["roofline"]`` ceilings."""
    roof = res.get("roofline") or {}
    peak, bw = roof.get("gemm_peak_flops"), roof.get("bandwidth_bytes_per_s")
    if not peak or not bw:
        return
    off = res.get("offline")
    if off:
        off["roofline_time_s"] = rf.compute_time(off["total_flops"], peak)
        off["roofline_tokens_per_s"] = off["workload"]["output_tokens"] / off["roofline_time_s"]
        entries = [off.get("hf_generate_batch"), off.get("engine"), off.get("hf_generate")]
        entries += list((off.get("hf_generate") or {}).get("by_batch_size", {}).values())
        for e in entries:
            if _ok(e):
                e["pct_of_roofline"] = 100.0 * e["tokens_per_s"] / off["roofline_tokens_per_s"]
    for row in (res.get("decode") or {}).get("rows", []):
        row["roofline_compute_s"] = rf.compute_time(row["flops_per_step"], peak)
        row["roofline_memory_s"] = rf.memory_time(row["bytes_per_step"], bw)
        row["roofline_step_s"] = max(row["roofline_compute_s"], row["roofline_memory_s"])
        row["bound_by"] = (
            "memory" if row["roofline_memory_s"] >= row["roofline_compute_s"] else "compute"
        )
        for key in ("engine", "hf_generate", "engine_linear_only"):
            if _ok(row.get(key)):
                row[key]["pct_of_roofline"] = rf.percent_of_roofline(
                    row[key]["step_s"], row["roofline_step_s"]
                )
    ttft = res.get("ttft")
    if _ok(ttft):
        for case in ("miss", "hit"):
            bound = rf.roofline_time(
                ttft[f"{case}_flops"], ttft[f"{case}_bytes"], peak_flops=peak, bandwidth=bw
            )
            ttft[f"{case}_roofline_s"] = bound
            ttft[f"{case}_pct_of_roofline"] = rf.percent_of_roofline(ttft[f"{case}_ttft_s"], bound)


class Bench:
    """Runs the parts for one dtype; collects ``self.res`` (the report's ``results[dtype]``)."""

    def __init__(self, scale: Scale, dtype: str, ckpt: Path, seed: int, progress: Any) -> None:
        from core.model.spec import ModelSpec

        self.scale, self.dtype, self.ckpt, self.seed = scale, dtype, ckpt, seed
        self.spec = ModelSpec.from_preset(MODEL_PRESET)
        self.tokens = Tokens(self.spec.vocab_size, seed + 1)
        self.progress = progress
        self.res: dict[str, Any] = {}
        self.hf: Any = None
        self.engine: Engine | None = None
        self.engine_reason: str | None = import_engine()[2]
        self.outputs: dict[str, list[list[int]]] = {}

    # -- plumbing --------------------------------------------------------------------------

    def tick(self, label: str) -> None:
        self.progress.set_description(f"{self.dtype}: {label}")

    def done(self) -> None:
        self.progress.update(1)

    def get_hf(self) -> Any:
        if self.hf is None:
            self.hf = load_hf(self.ckpt, self.dtype)
            hf_generate_static(self.hf, Workload([self.tokens.prompt(8)] * 2, [2, 2]), 2)  # warm-up
        return self.hf

    def kv_tokens(self, wl: Workload | None) -> int:
        """Tokens the engine's KV cache must hold so that no part runs short of blocks."""
        sc, blk = self.scale, self.scale.block_size
        need = [
            max(sc.decode_batches) * (sc.decode_context + sc.decode_steps + 2 * blk),
            sc.sched_requests * (sc.sched_prompt + sc.sched_output + blk),
            4 * (sc.ttft_prefix + sc.ttft_suffix + blk),
        ]
        if wl is not None:
            need.append(
                sum(p + o + blk for p, o in zip(wl.prompt_lens, wl.output_lens, strict=True))
            )
        return int(1.25 * max(need))

    def get_engine(self, wl: Workload | None = None) -> Engine:
        if self.engine_reason:
            raise RuntimeError(self.engine_reason)
        if self.engine is None:
            kv_bytes = self.kv_tokens(wl) * self.spec.kv_bytes_per_token(DTYPES[self.dtype])
            try:
                self.engine = Engine(self.ckpt, self.dtype, self.scale, self.seed, kv_bytes)
                self.engine.generate([self.tokens.prompt(8) for _ in range(2)], 2)  # warm-up
            except Exception as exc:
                self.engine_reason = f"our engine failed to start ({type(exc).__name__}: {exc})"
                raise
        return self.engine

    def engine_part(self, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``fn()`` guarded, or skipped with the reason when our engine is unavailable."""
        if self.engine_reason:
            return _skipped(self.engine_reason)
        return _guard(fn)

    def close(self) -> None:
        self.hf = self.engine = None
        gc.collect()

    # -- 1. roofline -----------------------------------------------------------------------

    def roofline(self, when: str) -> None:
        """Measure the GEMM peak and bandwidth now (``when``: "start" or "end"); the ceilings
        used are the best over the measurements, since load from other work only lowers them."""
        import torch

        self.tick(f"roofline ({when})")
        gemm = rf.measure_gemm_peak(
            getattr(torch, DTYPES[self.dtype]),
            self.scale.gemm_sizes,
            shapes=rf.model_gemm_shapes(self.spec, self.scale.gemm_tokens),
        )
        bw = rf.measure_bandwidth(self.scale.bandwidth_mib)
        roof = self.res.setdefault("roofline", {"measurements": []})
        roof["measurements"].append(
            {
                "when": when,
                "gemm_peak_flops": gemm["peak_flops"],
                "bandwidth_bytes_per_s": bw["bandwidth"],
                "gemm": gemm,
                "bandwidth": bw,
            }
        )
        best_gemm = max(roof["measurements"], key=lambda m: m["gemm_peak_flops"])
        best_bw = max(roof["measurements"], key=lambda m: m["bandwidth_bytes_per_s"])
        roof.update(
            {
                "gemm_peak_flops": best_gemm["gemm_peak_flops"],
                "gemm_best": {"when": best_gemm["when"], **best_gemm["gemm"]["best"]},
                "bandwidth_bytes_per_s": best_bw["bandwidth_bytes_per_s"],
                "bandwidth_best": {
                    "when": best_bw["when"],
                    "copy_bytes_per_s": best_bw["bandwidth"]["copy_bytes_per_s"],
                    "sum_bytes_per_s": best_bw["bandwidth"]["sum_bytes_per_s"],
                },
                "method": (
                    "GEMM peak and bandwidth measured at the start and at the end of this "
                    "dtype's runs (scripts/bench/roofline.py); the best of the two is used"
                ),
                "weight_bytes": self.spec.weight_bytes(DTYPES[self.dtype]),
                "kv_bytes_per_token": self.spec.kv_bytes_per_token(DTYPES[self.dtype]),
            }
        )
        annotate(self.res)
        self.done()

    # -- 2. offline throughput --------------------------------------------------------------

    def offline(self, wl: Workload) -> None:
        off: dict[str, Any] = {
            "workload": wl.describe(),
            "total_flops": rf.workload_flops(self.spec, wl.prompt_lens, wl.output_lens),
            "roofline_method": (
                "lower bound on time = the workload's FLOPs (ModelSpec: every prefill, then one "
                "decode per further output token) / GEMM peak; roofline tokens/s = useful "
                "tokens / that; % of roofline = measured tokens/s / roofline tokens/s"
            ),
        }
        self.res["offline"] = off

        # (a) generate, static batches
        runs: dict[str, Any] = {}
        for bs in self.scale.hf_batch_sizes:
            self.tick(f"HF generate, batch {bs}")
            r = _guard(lambda bs=bs: hf_generate_static(self.get_hf(), wl, bs))
            if _ok(r):
                self.outputs[f"hf_generate_bs{bs}"] = r.pop("_outputs")
            runs[str(bs)] = r
            self.done()
        ok = {k: v for k, v in runs.items() if _ok(v)}
        if ok:
            best = max(ok, key=lambda k: ok[k]["tokens_per_s"])
            gen: dict[str, Any] = {"status": "ok", "best_batch_size": int(best)}
            gen.update({k: ok[best][k] for k in ("tokens_per_s", "elapsed_s", "useful_tokens")})
            self.outputs["hf_generate"] = self.outputs[f"hf_generate_bs{best}"]
        else:
            gen = {"status": "error", "error": "every batch size failed (see by_batch_size)"}
        gen["method"] = (
            "model.generate over static batches in arrival order, left padded, greedy, "
            "min_new_tokens = max_new_tokens = the batch's longest output; useful tokens = each "
            "request's own output length; best batch size reported"
        )
        gen["by_batch_size"] = runs
        off["hf_generate"] = gen

        # (b) continuous batching
        self.tick("HF continuous batching")
        warm = Workload([self.tokens.prompt(8) for _ in range(2)], [2, 2])

        def run_cb() -> dict[str, Any]:
            hf_continuous_batching(self.get_hf(), warm, self.scale)  # warm-up, untimed
            return hf_continuous_batching(self.get_hf(), wl, self.scale)

        cb = _guard(run_cb)
        if _ok(cb):
            self.outputs["hf_generate_batch"] = cb.pop("_outputs")
        cb["method"] = (
            "transformers continuous batching through model.continuous_batching_context_manager "
            "+ manager.add_request(ids, max_new_tokens=<own length>): the manager generate_batch "
            "wraps (generate_batch itself takes one max_new_tokens for all requests); EOS "
            "disabled (eos_token_id=-1); manager and KV cache built before the clock starts"
        )
        off["hf_generate_batch"] = cb
        self.done()

        # (c) our engine
        self.tick("engine offline")
        off["engine"] = self.engine_part(lambda: self._engine_offline(wl))
        self.done()

        eng = off["engine"]
        for key, base in (("hf_generate", gen), ("hf_generate_batch", cb)):
            ok_both = _ok(eng) and _ok(base)
            off[f"engine_vs_{key}"] = (
                eng["tokens_per_s"] / base["tokens_per_s"] if ok_both else None
            )
        agree = {}
        pairs = [
            ("engine", "hf_generate"),
            ("engine", "hf_generate_batch"),
            ("hf_generate", "hf_generate_batch"),
        ]
        for a, b in pairs:
            if a in self.outputs and b in self.outputs:
                agree[f"{a}_vs_{b}"] = _agreement(self.outputs[a], self.outputs[b])
        off["greedy_agreement"] = agree
        annotate(self.res)

    def _engine_offline(self, wl: Workload) -> dict[str, Any]:
        engine = self.get_engine(wl)
        t0 = time.perf_counter()
        outs = engine.generate(wl.prompts, wl.output_lens)
        elapsed = time.perf_counter() - t0
        got = [list(o.token_ids) for o in outs]
        self.outputs["engine"] = got
        useful = sum(min(len(g), n) for g, n in zip(got, wl.output_lens, strict=True))
        return {
            "elapsed_s": elapsed,
            "useful_tokens": useful,
            "tokens_per_s": useful / elapsed,
            "output_lengths_ok": [len(g) for g in got] == wl.output_lens,
            "engine_init_s": engine.init_s,
            "engine_kwargs": {k: v for k, v in engine.kwargs.items() if k != "model"},
        }

    # -- 3. decode step vs batch size ---------------------------------------------------------

    def decode(self) -> None:
        sc = self.scale
        steps = sc.decode_steps
        plen = sc.decode_context - steps // 2
        contexts = range(plen, plen + steps)
        dec: dict[str, Any] = {
            "context": sc.decode_context,
            "prompt_len": plen,
            "steps": steps,
            "method": (
                f"B fresh prompts of {plen} tokens, {steps + 1} output tokens each, submitted "
                "together; step time = TPOT = (last token time - first token time) / (tokens - "
                "1) (engine: RequestOutput.metrics, mean over the requests; HF: one generate "
                "call with a logits processor recording each token's time). Roofline of a step: "
                "max(bytes / bandwidth, FLOPs / GEMM peak), bytes and FLOPs from "
                "ModelSpec.operators (all weights and each sequence's KV read once) averaged "
                f"over contexts {plen}..{plen + steps - 1}"
            ),
            "rows": [],
        }
        self.res["decode"] = dec
        for b in sc.decode_batches:
            self.tick(f"decode batch {b}")
            costs = [rf.decode_step_cost(self.spec, [c] * b, DTYPES[self.dtype]) for c in contexts]
            row: dict[str, Any] = {
                "batch": b,
                "flops_per_step": statistics.fmean(f for f, _ in costs),
                "bytes_per_step": statistics.fmean(n for _, n in costs),
            }
            prompts = [self.tokens.prompt(plen) for _ in range(b)]  # fresh: no prefix-cache hit
            row["hf_generate"] = _guard(lambda p=prompts: hf_decode_step(self.get_hf(), p, steps))
            row["engine"] = self.engine_part(lambda p=prompts: self._engine_decode(p, steps))
            row["engine_linear_only"] = self.engine_part(
                lambda b=b: linear_only_step(self.get_engine().llm.model, b)
            )
            dec["rows"].append(row)
            annotate(self.res)
            self.done()

    def _engine_decode(self, prompts: list[list[int]], steps: int) -> dict[str, Any]:
        outs = self.get_engine().generate(prompts, steps + 1)
        tpots = [_tpot(o) for o in outs]
        return {"step_s": statistics.fmean(tpots), "median_step_s": statistics.median(tpots)}

    # -- 4. scheduler overhead ----------------------------------------------------------------

    def scheduler(self) -> None:
        self.tick("scheduler overhead")
        self.res["scheduler"] = self.engine_part(self._scheduler)
        self.done()

    def _scheduler(self) -> dict[str, Any]:
        sc = self.scale
        n = sc.sched_requests
        engine = self.get_engine()
        prompts = [self.tokens.prompt(sc.sched_prompt) for _ in range(n)]
        with instrument_engine(engine.llm.engine) as info:
            engine.generate(prompts, sc.sched_output)
        records = info["steps"]
        if not records:
            raise RuntimeError("llm.generate never called llm.engine.step(): cannot time steps")
        steady, how = steady_steps(records, n)
        if len(steady) < 2:
            raise RuntimeError(f"only {len(steady)} steps had all {n} requests decoding")
        out: dict[str, Any] = {
            "running_requests": n,
            "prompt_len": sc.sched_prompt,
            "output_len": sc.sched_output,
            "steps_total": len(records),
            "steps_measured": len(steady),
            "steps_selected": how,
            "runner_forward": info["runner_forward"],
            "module_forward": info["module_forward"],
            "method": (
                f"llm.generate of {n} equal requests with llm.engine.step wrapped by a timer; "
                "share = sum(step - forward) / sum(step) over the steps where all of them "
                "decode; the forward is, by preference, the engine's own per-step timing "
                "(engine.last_step), else the runner's forward method timed around each call, "
                "else the model module's forward; the other available ones are reported too"
            ),
        }
        available = {
            "engine_stats": all(r["stats_total_s"] is not None for r in steady),
            "runner": info["runner_forward"] is not None,
            "model": info["module_forward"] is not None,
            "module": info["module_forward"] is not None,
        }
        for name, (total_key, fwd_key, what) in SHARE_SOURCES.items():
            if available[name]:
                out[name] = {"forward_is": what, **outside_share(steady, total_key, fwd_key)}
        source = next((s for s in SHARE_SOURCES if s in out), None)
        if source is None:
            raise RuntimeError(
                "no forward timing: no engine.last_step, runner method or model module"
            )
        out["share_from"] = source
        out["outside_share_pct"] = out[source]["outside_share_pct"]
        return out

    # -- 5. TTFT with and without a prefix hit -------------------------------------------------

    def ttft(self) -> None:
        self.tick("TTFT prefix hit/miss")
        self.res["ttft"] = self.engine_part(self._ttft)
        annotate(self.res)
        self.done()

    def _ttft(self) -> dict[str, Any]:
        sc = self.scale
        engine = self.get_engine()
        prefix = self.tokens.prompt(sc.ttft_prefix)
        engine.generate([prefix + self.tokens.prompt(sc.ttft_suffix)], 1)  # warms the cache
        hit, miss, cached, miss_cached = [], [], [], []
        for _ in range(sc.ttft_repeats):
            out = engine.generate([self.tokens.prompt(sc.ttft_prefix + sc.ttft_suffix)], 1)[0]
            miss.append(_ttft(out))
            miss_cached.append(getattr(out, "num_cached_tokens", None))
            out = engine.generate([prefix + self.tokens.prompt(sc.ttft_suffix)], 1)[0]
            hit.append(_ttft(out))
            cached.append(getattr(out, "num_cached_tokens", None))
        dt = DTYPES[self.dtype]

        def cost(new: int, before: int) -> tuple[float, float]:
            ops = self.spec.operators(prefill_chunks=[(new, before)], dtype=dt)
            return float(sum(o.flops for o in ops)), float(sum(o.bytes for o in ops))

        miss_f, miss_b = cost(sc.ttft_prefix + sc.ttft_suffix, 0)
        hit_f, hit_b = cost(sc.ttft_suffix, sc.ttft_prefix)
        miss_s, hit_s = statistics.median(miss), statistics.median(hit)
        return {
            "prefix_len": sc.ttft_prefix,
            "suffix_len": sc.ttft_suffix,
            "repeats": sc.ttft_repeats,
            "miss_ttft_s": miss_s,
            "hit_ttft_s": hit_s,
            "speedup": miss_s / hit_s,
            "miss_all_s": miss,
            "hit_all_s": hit,
            "hit_num_cached_tokens": cached,
            "miss_num_cached_tokens": miss_cached,
            "miss_flops": miss_f,
            "miss_bytes": miss_b,
            "hit_flops": hit_f,
            "hit_bytes": hit_b,
            "method": (
                "prefix caching on; one request with the prefix warms the cache; then, repeated, "
                "a prompt sharing nothing (miss: fresh tokens) and the prefix + a fresh suffix "
                "(hit), each alone with max_tokens=1; TTFT = first_token_time - arrival_time, "
                "median over repeats; roofline = max(FLOPs / peak, bytes / bandwidth) of the "
                "prefill that must run (the whole prompt, or the suffix over the cached prefix)"
            ),
        }


# ------------------------------------------------------------------------------------------
# Targets and tables
# ------------------------------------------------------------------------------------------


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _why(entry: Any, default: str = "") -> str:
    if isinstance(entry, dict):
        if entry.get("status") == "skipped":
            return entry.get("reason") or default
        if entry.get("status") == "error":
            return entry.get("error") or default
    return default


peer_targets = peer_bench.targets


def make_targets(results: dict[str, Any], parts: Sequence[str]) -> list[dict[str, Any]]:
    """The issue's targets for each dtype measured, each with its pass flag (or the reason it
    could not be checked)."""
    out = []
    for dtype, r in results.items():
        off = r.get("offline")
        eng = _get(off, "engine")
        rows = _get(r, "decode", "rows") or []
        b1 = next((row for row in rows if row["batch"] == 1), None)
        sched = r.get("scheduler")

        def off_reason(base: str | None = None, off: Any = off, eng: Any = eng) -> str:
            if "offline" not in parts:
                return "offline part not run"
            if off is None:
                return "offline part not reached"
            if not _ok(eng):
                return _why(eng, "our engine's offline run did not finish")
            return _why(off.get(base), "not measured") if base else "not measured"

        measured = {
            "offline_vs_generate": (_get(off, "engine_vs_hf_generate"), off_reason("hf_generate")),
            "offline_vs_generate_batch": (
                _get(off, "engine_vs_hf_generate_batch"),
                off_reason("hf_generate_batch"),
            ),
            "offline_roofline": (_get(eng, "pct_of_roofline"), off_reason()),
            "decode_b1_roofline": (
                _get(b1, "engine", "pct_of_roofline"),
                "decode part not run"
                if "decode" not in parts
                else "batch 1 not in the sweep"
                if b1 is None
                else _why(b1["engine"], "not measured"),
            ),
            "scheduler_share": (
                _get(sched, "outside_share_pct"),
                "scheduler part not run"
                if "scheduler" not in parts
                else _why(sched, "not measured"),
            ),
        }
        for tid, (desc, op, thr, unit) in TARGETS.items():
            value, reason = measured[tid]
            out.append(
                rep.target(
                    f"{dtype}/{tid}",
                    desc,
                    value,
                    op,
                    thr,
                    unit,
                    None if value is not None else reason,
                )
            )
    return out


def _tps(entry: Any) -> Any:
    return entry["tokens_per_s"] if _ok(entry) else None


def _ms(x: Any) -> Any:
    return None if x is None else 1e3 * x


def render(report: dict[str, Any]) -> str:
    """The printed summary: tables per dtype, then the targets."""
    blocks = []
    for dtype, r in report["results"].items():
        if dtype == "peers":  # printed by peers.bench.render
            continue
        roof = r.get("roofline") or {}
        if roof.get("gemm_peak_flops"):
            g, b = roof["gemm_best"], roof["bandwidth_best"]
            rows = [
                [
                    "GEMM peak (GFLOP/s)",
                    roof["gemm_peak_flops"] / 1e9,
                    f"{g['method']}, {g['m']}x{g['k']} @ {g['k']}x{g['n']}, at the {g['when']}",
                ],
                [
                    "memory bandwidth (GB/s)",
                    roof["bandwidth_bytes_per_s"] / 1e9,
                    f"copy {b['copy_bytes_per_s'] / 1e9:.1f}, sum {b['sum_bytes_per_s'] / 1e9:.1f}, "
                    f"at the {b['when']}",
                ],
            ]
            for m in roof["measurements"]:
                rows.append(
                    [
                        f"  measured at the {m['when']}",
                        m["gemm_peak_flops"] / 1e9,
                        f"{m['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s",
                    ]
                )
            blocks.append(
                rep.format_table(
                    ["quantity", "value", "how"],
                    rows,
                    title=f"== {dtype}: machine roofline (measured here)",
                    formats=[None, ".1f", None],
                )
            )
        off = r.get("offline")
        if off:
            gen, cb, eng = off["hf_generate"], off["hf_generate_batch"], off["engine"]
            ratio = " / ".join(
                f"{x:.2f}x" if x else "-"
                for x in (off.get("engine_vs_hf_generate"), off.get("engine_vs_hf_generate_batch"))
            )
            rows = [
                [
                    f"HF generate, static (best: batch {gen.get('best_batch_size', '-')})",
                    _tps(gen),
                    gen.get("pct_of_roofline"),
                    "",
                    _why(gen),
                ]
            ]
            rows += [
                [f"  batch {bs}", _tps(run), run.get("pct_of_roofline"), "", _why(run)]
                for bs, run in gen["by_batch_size"].items()
            ]
            rows += [
                ["HF continuous batching", _tps(cb), cb.get("pct_of_roofline"), "", _why(cb)],
                ["our engine", _tps(eng), eng.get("pct_of_roofline"), ratio, _why(eng)],
                ["roofline (FLOPs / GEMM peak)", off.get("roofline_tokens_per_s"), 100.0, "", ""],
            ]
            w = off["workload"]
            blocks.append(
                rep.format_table(
                    ["system", "useful tok/s", "% roofline", "engine vs gen / CB", "note"],
                    rows,
                    title=(
                        f"== {dtype}: offline throughput, {w['n_requests']} requests, "
                        f"{w['prompt_tokens']} prompt + {w['output_tokens']} output tokens"
                    ),
                    formats=[None, ".1f", ".1f", None, None],
                )
            )
        dec = r.get("decode")
        if dec and dec["rows"]:
            rows = []
            for row in dec["rows"]:
                e, h = row["engine"], row["hf_generate"]
                lin = row.get("engine_linear_only")
                rows.append(
                    [
                        row["batch"],
                        _ms(row.get("roofline_step_s")),
                        row.get("bound_by"),
                        _ms(_get(e, "step_s")),
                        _get(e, "pct_of_roofline"),
                        _ms(_get(lin, "step_s")),
                        _get(lin, "pct_of_roofline"),
                        _ms(_get(h, "step_s")),
                        _get(h, "pct_of_roofline"),
                    ]
                )
            note = _why(dec["rows"][0]["engine"])
            blocks.append(
                rep.format_table(
                    [
                        "batch",
                        "roofline ms",
                        "bound",
                        "engine ms",
                        "engine %",
                        "linears ms",
                        "linears %",
                        "HF ms",
                        "HF %",
                    ],
                    rows,
                    title=(
                        f"== {dtype}: decode step, context ~{dec['context']}"
                        + (f" (engine: {note})" if note else "")
                        + "; linears: the engine's linear layers and LM head alone"
                    ),
                    formats=[None, ".2f", None, ".2f", ".1f", ".2f", ".1f", ".2f", ".1f"],
                )
            )
        lines = []
        sched = r.get("scheduler")
        if sched:
            if _ok(sched):
                for name in SHARE_SOURCES:
                    if name in sched:
                        s = sched[name]
                        lines.append(
                            [
                                f"outside forward, {sched['running_requests']} running ({name}) %",
                                s["outside_share_pct"],
                                f"step {s['mean_step_s'] * 1e3:.1f} ms, forward "
                                f"{s['mean_forward_s'] * 1e3:.1f} ms",
                            ]
                        )
            else:
                lines.append(["scheduler share outside forward %", None, _why(sched)])
        ttft = r.get("ttft")
        if ttft:
            for case in ("miss", "hit"):
                pct = _get(ttft, f"{case}_pct_of_roofline")
                lines.append(
                    [
                        f"TTFT, prefix {case} (ms)",
                        _ms(_get(ttft, f"{case}_ttft_s")),
                        _why(ttft)
                        or f"{pct:.1f}% of roofline"
                        + (f", {ttft['speedup']:.2f}x faster" if case == "hit" else ""),
                    ]
                )
        if lines:
            blocks.append(
                rep.format_table(
                    ["quantity", "value", "note"],
                    lines,
                    title=f"== {dtype}: engine internals",
                    formats=[None, ".2f", None],
                )
            )
    blocks.append(
        rep.targets_table(report["targets"], title="== targets (measured on this machine)")
    )
    return "\n\n".join(blocks)


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


def parse_dtypes(text: str) -> tuple[str, ...]:
    out: list[str] = []
    for part in text.split(","):
        key = part.strip().lower()
        if not key:
            continue
        if key not in _DTYPE_ALIASES:
            raise argparse.ArgumentTypeError(
                f"unknown dtype {part.strip()!r}; choose from fp32 (float32), bf16 (bfloat16)"
            )
        if _DTYPE_ALIASES[key] not in out:
            out.append(_DTYPE_ALIASES[key])
    if not out:
        raise argparse.ArgumentTypeError("no dtype given")
    return tuple(out)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers, got {text!r}")
    return vals


def _parts(text: str) -> tuple[str, ...]:
    vals = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [v for v in vals if v not in PARTS]
    if bad or not vals:
        raise argparse.ArgumentTypeError(
            f"unknown part(s) {', '.join(bad) or repr(text)}; choose from {', '.join(PARTS)}"
        )
    return vals


def build_parser(prog: str = "python -m scripts.bench engine") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Benchmark our engine (core.engine) against transformers generate and continuous "
            "batching on a random ~125M Llama: machine roofline, offline throughput, decode "
            "step vs batch size, scheduler overhead, TTFT with/without a prefix hit. Writes "
            "<out>/engine.json and prints tables. A measurement, not a test: targets are "
            "reported with pass flags, never raised. On CPUs without native bf16 (no "
            "AVX512-BF16/AMX) bf16 runs ~10x slower than fp32."
        ),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="shrink everything (8 short requests, small sweeps, fp32 only): well "
        "under a minute; for tests, not for numbers",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder (default: results/bench/ of the repository); writes engine.json there",
    )
    p.add_argument(
        "--dtype",
        type=parse_dtypes,
        default=None,
        help="comma-separated dtypes: fp32,bf16 (default: both; --quick: fp32)",
    )
    p.add_argument(
        "--parts",
        type=_parts,
        default=None,
        help=f"measurements besides the roofline (default all: {','.join(PARTS)}; with "
        "--peers: none)",
    )
    p.add_argument(
        "--requests",
        type=rep.positive_int,
        default=None,
        help="number of offline requests (default 64; --quick 8)",
    )
    p.add_argument(
        "--hf-batch-sizes",
        type=_int_list,
        default=None,
        help="static batch sizes tried for HF generate (default 8,16,32,64)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the model weights and workload")
    p.add_argument(
        "--threads",
        type=rep.positive_int,
        default=None,
        help="torch intra-op threads (default: torch's default, all cores)",
    )
    peers = p.add_argument_group(
        "peers",
        "--peers compares our engine with vLLM's CPU build and llama.cpp on the offline "
        "workload and at batch-1 decode, each in its own process and cached venv "
        "(scripts/bench/peers/; built on first use, vLLM ~2 min, llama.cpp ~10 CPU-min)",
    )
    peers.add_argument("--peers", action="store_true", help="run the peer comparison")
    peers.add_argument(
        "--peer-systems",
        type=peer_bench.parse_systems,
        default=tuple(PEERS),
        help=f"peers to compare with (default {','.join(PEERS)})",
    )
    peers.add_argument(
        "--peer-threads",
        type=_int_list,
        default=peer_bench.DEFAULT_THREADS,
        help="thread counts, each a separate interleaved comparison (default 1,2)",
    )
    peers.add_argument(
        "--peer-rounds",
        type=rep.positive_int,
        default=peer_bench.DEFAULT_ROUNDS,
        help=f"interleaved rounds per thread count (default {peer_bench.DEFAULT_ROUNDS})",
    )
    peers.add_argument(
        "--peer-dtype",
        type=parse_dtypes,
        default=("fp32",),
        help="dtypes of the peer comparison (default fp32; bf16: llama.cpp gets a bf16 GGUF)",
    )
    return p


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def scale_from_args(args: argparse.Namespace) -> Scale:
    scale = QUICK if args.quick else FULL
    if args.dtype:
        scale = replace(scale, dtypes=tuple(args.dtype))
    if args.requests:
        scale = replace(scale, n_requests=args.requests)
    if args.hf_batch_sizes:
        scale = replace(scale, hf_batch_sizes=tuple(args.hf_batch_sizes))
    return scale


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark for parsed ``args``; returns the report (also written to
    ``<out>/engine.json`` after every part)."""
    import torch
    from tqdm.auto import tqdm

    started = time.perf_counter()
    scale = scale_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    _quiet_transformers()
    parts = tuple(args.parts if args.parts is not None else () if args.peers else PARTS)
    out_path = Path(args.out) / "engine.json"
    prov = rep.provenance()
    reason = import_engine()[2]
    prov["engine"] = {"importable": reason is None, "reason": reason}
    config = {
        "scale": asdict(scale),
        "parts": list(parts),
        "seed": args.seed,
        "model": {
            "preset": MODEL_PRESET,
            "built_with": (
                "transformers.LlamaForCausalLM(LlamaConfig(**preset_config(preset))) after "
                "torch.manual_seed(seed), save_pretrained to a temporary folder every system loads"
            ),
        },
        "engine_api_assumed": ENGINE_API,
    }
    results: dict[str, Any] = {}
    peers: dict[str, Any] = {}

    def write() -> dict[str, Any]:
        report = rep.make_report(
            "engine",
            config,
            {**results, **({"peers": peers} if peers else {})},
            make_targets(results, parts) + peer_targets(peers),
            prov,
            time.perf_counter() - started,
        )
        rep.write_json(out_path, report)
        return report

    per_dtype = 2 + sum(
        (
            ("offline" in parts) * (len(scale.hf_batch_sizes) + 2),
            ("decode" in parts) * len(scale.decode_batches),
            "scheduler" in parts,
            "ttft" in parts,
        )
    )
    dtypes = scale.dtypes if parts else ()  # --peers alone: no roofline or HF runs
    with (
        tempfile.TemporaryDirectory(prefix="servelab-bench-") as tmp,
        tqdm(total=1 + per_dtype * len(dtypes), unit="step", file=sys.stderr) as progress,
    ):
        progress.set_description("build model")
        ckpt = Path(tmp) / MODEL_PRESET
        build_checkpoint(ckpt, args.seed)
        progress.update(1)
        for dtype in dtypes:
            bench = Bench(scale, dtype, ckpt, args.seed, progress)
            results[dtype] = bench.res
            bench.roofline("start")
            write()
            if "offline" in parts:
                bench.offline(make_workload(scale, bench.spec.vocab_size, args.seed))
                write()
            if "decode" in parts:
                bench.decode()
                write()
            for part in ("scheduler", "ttft"):
                if part in parts:
                    getattr(bench, part)()
                    write()
            bench.close()
            bench.roofline("end")
            write()
        if args.peers:
            progress.set_description("peers (log lines below)")
            config["peers"] = {
                "systems": list(args.peer_systems),
                "threads": list(args.peer_threads),
                "rounds": args.peer_rounds,
                "dtypes": list(args.peer_dtype),
            }
            for dtype in args.peer_dtype:

                def update(res: dict[str, Any], dtype: str = dtype) -> None:
                    peers[dtype] = res
                    write()

                peer_args = (args.peer_threads, args.peer_rounds, args.peer_systems)
                peer_bench.run_part(
                    ckpt,
                    scale,
                    args.seed,
                    dtype,
                    *peer_args,
                    work=Path(tmp) / "peers",
                    logs=Path(args.out) / "peer-logs",
                    log=lambda msg: tqdm.write(msg, file=sys.stderr),
                    on_update=update,
                )
    return write()


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(**({"prog": prog} if prog else {})).parse_args(argv)
    report = run(args)
    print(render(report))
    if "peers" in report["results"]:
        print("\n" + peer_bench.render(report["results"]["peers"]))
    print(f"\nwrote {Path(args.out) / 'engine.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
