"""CPU kernel benchmark: the engine's kernel backends against each other, interleaved in one
process on the engine benchmark's 125M Llama (the ``tiny-llama-125m`` preset, random init).

``python -m scripts.kernel_bench [--parts linears,decode,offline,prefill] [--threads 1,2]
[--rounds 3] [--dtype fp32|bf16] [--variants onednn,cpp] [--quick] [--out results/kernel_bench.json]``

A variant is a (linear backend, attention backend) pair: ``torch`` = (torch, torch), ``onednn``
= (onednn, torch), the engine's default before the C++ kernels, and ``cpp`` = (cpp, cpp);
``cpp-sdpa`` is ``cpp`` with the prefills on the torch reference's SDPA path instead of the
C++ prefill kernel (``CppPagedAttention.prefill_kernel = False``), the old path;
``cpp-layers`` is ``cpp`` with decode steps layer by layer through Python instead of the fused
decode layer (``model.fused_decode = False``). One model serves every variant: it is switched with ``set_linear_backend`` /
``set_attention_backend`` between measurements (repacking is not timed). Each round measures
every variant at every thread count, in ABBA order across rounds, so drift in the machine's load
hits all variants alike; the report gives per-round values, the median of each, the median of
the per-round ratios to the first variant, and the 1-minute load average seen during each
measurement.

Parts:

- ``linears``: one pass over every linear layer of the model and the LM head (all the weights,
  ~400 MB in fp32, far beyond any cache) with inputs of 1..64 rows: weight GB/s per row count
  (the best of three passes).
- ``decode``: TPOT (seconds per decode step, from the request metrics) of batches of 1 and 8
  equal requests with ~128 tokens of context, reported as decode tok/s per sequence and total.
- ``offline``: generated tok/s of 64 requests (prompts uniform in 32..256 tokens, outputs in
  16..128, greedy, EOS ignored), as in the engine benchmark; ``--quick`` uses 16 shorter ones.
- ``prefill``: the engine benchmark's first step, the offline batch's first 17 prompts (2495
  tokens; fewer with ``--quick``) at once: the attention alone (the model's attention backend
  over all its layers, on random q and caches of the model's shapes; ms) and the whole prefill
  step (``generate`` with ``max_tokens=1``; ms). Lower is better here: the ratio column is
  then the variant's time over the first's. ``--variants cpp-sdpa,cpp`` compares the prefill
  kernel with the old path (``--variants cpp-layers,cpp --parts decode`` the fused decode
  layer with the layer-by-layer path).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.engine import LLM, SamplingParams
from core.kernels.attention import AttentionBackend
from core.kernels.cpu_attention import CppPagedAttention
from core.kernels.linear import Linear
from core.model.presets import preset_config

VARIANTS = {
    "torch": ("torch", "torch"),
    "onednn": ("onednn", "torch"),
    "cpp": ("cpp", "cpp"),
    "cpp-sdpa": ("cpp", "cpp"),  # prefills on the reference's SDPA path
    "cpp-layers": ("cpp", "cpp"),  # decode layers through Python, not the fused C++ layer
}
FIRST_TOKEN_ID = 3
PREFILL_PROMPTS = 17  # the offline batch's prompts in the engine benchmark's first step
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "kernel_bench.json"


def _use(llm: LLM, variant: str) -> None:
    linear, attention = VARIANTS[variant]
    llm.model.set_linear_backend(linear)
    llm.model.set_attention_backend(attention)
    llm.model.fused_decode = variant != "cpp-layers"
    backend = llm.model.attention_backend()
    if isinstance(backend, CppPagedAttention):
        backend.prefill_kernel = variant != "cpp-sdpa"


def _prompts(rng: np.random.Generator, lengths: list[int], vocab: int) -> list[list[int]]:
    return [rng.integers(FIRST_TOKEN_ID, vocab, size=n).tolist() for n in lengths]


def measure_linears(llm: LLM, rows: int) -> float:
    """Weight GB/s of one pass over every linear layer (and the LM head) at ``rows`` rows."""
    model = llm.model
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    inputs = [torch.randn(rows, m.in_features, dtype=model.dtype) for m in layers]
    nbytes = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    with torch.inference_mode():
        for layer, x in zip(layers, inputs, strict=True):  # warm-up
            layer(x)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for layer, x in zip(layers, inputs, strict=True):
                layer(x)
            times.append(time.perf_counter() - start)
    return nbytes / min(times) / 1e9


def measure_decode(llm: LLM, batch: int, vocab: int, steps: int, context: int) -> float:
    """Decode tok/s per sequence: 1 / TPOT of ``batch`` equal requests decoding together."""
    rng = np.random.default_rng(batch)
    prompts = _prompts(rng, [context - steps // 2] * batch, vocab)
    params = SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True)
    outs = llm.generate(prompts, params, use_tqdm=False)
    tpots = [
        (o.metrics["finish_time"] - o.metrics["first_token_time"]) / (len(o.token_ids) - 1)
        for o in outs
    ]
    return 1.0 / statistics.fmean(tpots)


def measure_offline(llm: LLM, prompts: list[list[int]], output_lens: list[int]) -> float:
    """Generated tok/s of the whole offline batch."""
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in output_lens]
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return sum(len(o.token_ids) for o in outs) / elapsed


class PrefillAttention:
    """The attention of one prefill step over every layer of the model: random q and paged
    caches of the model's shapes for prompts of ``lengths`` tokens (shuffled blocks of 16),
    attended by whatever backend the model uses when :meth:`ms` is called."""

    def __init__(self, llm: LLM, lengths: list[int], block_size: int = 16) -> None:
        config = llm.model.config
        heads, kv_heads, head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.llm, self.layers, self.scale = llm, len(config.attention_layers), head_dim**-0.5
        gen = torch.Generator().manual_seed(0)
        nblocks = [-(-n // block_size) for n in lengths]
        ids = torch.randperm(sum(nblocks), generator=gen).tolist()
        tables = [[ids.pop() for _ in range(nb)] for nb in nblocks]
        shape = (sum(nblocks), block_size, kv_heads, head_dim)
        dtype = llm.model.dtype
        self.k_cache = torch.randn(shape, generator=gen).to(dtype)
        self.v_cache = torch.randn(shape, generator=gen).to(dtype)
        self.q = torch.randn(sum(lengths), heads, head_dim, generator=gen).to(dtype)
        width = max(nblocks)
        starts = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        slots = [
            t[p // block_size] * block_size + p % block_size
            for t, n in zip(tables, lengths, strict=True)
            for p in range(n)
        ]
        self.args = (
            torch.tensor(starts, dtype=torch.int32),
            torch.tensor(lengths, dtype=torch.int32),
            torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int32),
            torch.tensor(slots),
            block_size,
        )

    def ms(self) -> float:
        backend: AttentionBackend = self.llm.model.attention_backend()
        meta = backend.build_metadata(*self.args)
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(self.layers):
                backend.forward(self.q, self.k_cache, self.v_cache, meta, scale=self.scale)
        return (time.perf_counter() - start) * 1e3


def measure_prefill_step(llm: LLM, prompts: list[list[int]]) -> float:
    """ms of one engine step that prefills all ``prompts`` (and samples one token each)."""
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    return (time.perf_counter() - start) * 1e3


def _measure(fn: Callable[[], float]) -> dict[str, float]:
    value = fn()
    return {"value": value, "load1": os.getloadavg()[0]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.dtype]
    config = preset_config("tiny-llama-125m")
    vocab = config["vocab_size"]
    llm = LLM(
        config,
        dtype=dtype,
        seed=0,
        kv_cache_memory=256 * 2**20,
        enable_prefix_caching=False,  # rounds reuse prompts: no round may hit an earlier one's
        max_num_seqs=64,
        max_num_batched_tokens=4096,
    )
    rng = np.random.default_rng(0)
    n_req = 16 if args.quick else 64
    plens = rng.integers(32, (128 if args.quick else 256) + 1, size=n_req).tolist()
    olens = rng.integers(16, (48 if args.quick else 128) + 1, size=n_req).tolist()
    offline_prompts = _prompts(rng, plens, vocab)
    steps = 16 if args.quick else 32

    cases: list[tuple[str, str, Callable[[], float]]] = []  # (part, case, measurement)
    for part in args.parts:
        if part == "linears":
            for rows in (1, 4, 8, 16, 24, 32, 48, 64):
                cases.append((part, f"{rows} rows GB/s", lambda r=rows: measure_linears(llm, r)))
        elif part == "decode":
            for batch in (1, 8):
                cases.append(
                    (
                        part,
                        f"batch {batch} tok/s per seq",
                        lambda b=batch: measure_decode(llm, b, vocab, steps, 128),
                    )
                )
        elif part == "prefill":
            # the engine benchmark's first step: its first 17 prompts (2495 tokens) at once
            step = offline_prompts[:PREFILL_PROMPTS]
            attention = PrefillAttention(llm, [len(p) for p in step])
            n_tok = sum(len(p) for p in step)
            cases.append((part, f"attention ms ({len(step)} prompts, {n_tok} tok)", attention.ms))
            cases.append(
                (
                    part,
                    f"prefill step ms ({len(step)} prompts)",
                    lambda s=step: measure_prefill_step(llm, s),
                )
            )
        elif part == "offline":
            cases.append(
                (part, "generated tok/s", lambda: measure_offline(llm, offline_prompts, olens))
            )

    # greedy tokens must not depend on the variant
    check = _prompts(np.random.default_rng(7), [40, 90], vocab)
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    tokens = {}
    for v in args.variants:
        _use(llm, v)
        tokens[v] = [o.token_ids for o in llm.generate(check, greedy, use_tqdm=False)]
    same = all(t == tokens[args.variants[0]] for t in tokens.values())

    results: dict[str, Any] = {}
    for r in range(args.rounds):
        order = args.variants if r % 2 == 0 else args.variants[::-1]
        for threads in args.threads:
            torch.set_num_threads(threads)
            for v in order:
                _use(llm, v)
                for part, case, fn in cases:
                    if part != "offline":  # (offline is long enough to need none)
                        fn()  # warm-up (and the first call's allocations) outside the timing
                    key = f"{part} | {case} | {threads} thr"
                    results.setdefault(key, {}).setdefault(v, []).append(_measure(fn))
        print(f"round {r + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)

    base = args.variants[0]
    table = []
    for key, per_variant in results.items():
        row: dict[str, Any] = {"case": key}
        for v, ms in per_variant.items():
            row[v] = statistics.median(m["value"] for m in ms)
        for v in args.variants[1:]:
            ratios = [
                a["value"] / b["value"]
                for a, b in zip(per_variant[v], per_variant[base], strict=True)
            ]
            row[f"{v}/{base}"] = statistics.median(ratios)
        row["load1"] = [round(m["load1"], 2) for ms in per_variant.values() for m in ms]
        table.append(row)
    return {
        "dtype": args.dtype,
        "variants": {v: VARIANTS[v] for v in args.variants},
        "rounds": args.rounds,
        "greedy_tokens_equal": same,
        "isa": getattr(__import__("core.kernels.cpu_ext", fromlist=["load"]).load(), "isa", None),
        "table": table,
        "raw": results,
    }


def print_table(report: dict[str, Any]) -> None:
    variants = list(report["variants"])
    base = variants[0]
    head = ["case", *variants, *(f"{v}/{base}" for v in variants[1:]), "load1 (min-max)"]
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for row in report["table"]:
        loads = row["load1"]
        cells = [row["case"], *(f"{row[v]:.1f}" for v in variants)]
        cells += [f"{row[f'{v}/{base}']:.2f}x" for v in variants[1:]]
        cells.append(f"{min(loads):.1f}-{max(loads):.1f}")
        print(" | ".join(cells))
    print(f"greedy tokens equal across variants: {report['greedy_tokens_equal']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="linears,decode,offline")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--variants", default="onednn,cpp")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.parts = args.parts.split(",")
    args.threads = [int(t) for t in args.threads.split(",")]
    args.variants = args.variants.split(",")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    report = run(args)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
