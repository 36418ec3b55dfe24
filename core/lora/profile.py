"""Measuring LoRA's costs on this machine's engine: base, unmerged and merged step times and
the merge/unmerge time, fitted into a :class:`~core.lora.cost.LoRAProfile` and a
:class:`~core.lora.cost.LinearStepCost` for the simulator.

Steps are timed on the model's own forward over a paged KV cache: decode batches of ``B``
sequences at a fixed context (and one prefill chunk), base / unmerged with ``k`` adapters /
merged, interleaved in rounds (A/B/A/B, never one after the other); each round keeps the
best of ``repeats`` runs (a loaded machine adds noise, never speed) and the median over
rounds is reported; adapters are random (their values do not change the cost).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from core.model import ForwardBatch, load_model

from .adapter import LoRAAdapter
from .cost import LinearStepCost, LoRAProfile, nonnegative_lstsq
from .request import LoRARequest
from .runtime import LoRARuntime

__all__ = ["measure_lora", "random_adapter"]


def random_adapter(runtime: LoRARuntime, name: str, rank: int, seed: int) -> LoRAAdapter:
    """An adapter of rank ``rank`` on every module ``runtime`` can adapt, small random values."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for hf in runtime.target_modules:
        target, j = runtime._by_hf[hf]
        fan_in, fan_out = target.module.in_features, target.slices[j].size
        a = torch.randn(rank, fan_in, generator=g) * fan_in**-0.5
        b = torch.randn(fan_out, rank, generator=g) * 0.02
        weights[hf] = (a, b)
    return LoRAAdapter(name, rank, weights, path=f"<random {name}>")


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@torch.inference_mode()
def measure_lora(
    model: Any,
    *,
    rank: int = 8,
    batch_sizes: Sequence[int] = (1, 8, 32),
    adapter_counts: Sequence[int] = (1, 4, 16),
    prefill_tokens: int = 128,
    context: int = 64,
    rounds: int = 5,
    repeats: int = 3,
    switches: int = 6,
    linear_backend: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time base/unmerged/merged steps of ``model`` (a checkpoint dir or a config dict) and
    merges. Returns ``{"samples": [...], "lora": LoRAProfile, "base": LinearStepCost,
    "rho": {batch: merged/unmerged at the most adapters}, "merge_s": [...]}``."""
    net, _ = load_model(model, dtype=torch.float32, device="cpu", seed=seed)
    net.set_linear_backend(linear_backend)
    max_k = max(adapter_counts)
    rt = LoRARuntime(net, max_loras=max_k, max_lora_rank=rank, max_cpu_loras=max_k)
    loras = []
    for i in range(max_k):
        rt.add_adapter(random_adapter(rt, f"r{i}", rank, seed + i))
        loras.append(LoRARequest(f"r{i}", i + 1))
    block = 16
    per_seq = -(-(context + prefill_tokens + 1) // block)
    n_seqs = max(max(batch_sizes), 1)
    kv = net.allocate_kv_cache(n_seqs * per_seq, block)

    def batch(kind: str, b: int) -> ForwardBatch:
        tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(b)]
        if kind == "prefill":
            return ForwardBatch.build([[7] * prefill_tokens], [0], tables[:1], block)
        return ForwardBatch.build([[7]] * b, [context] * b, tables, block)

    shapes = [("decode", b) for b in batch_sizes] + [("prefill", 1)]
    samples: dict[tuple[str, int, str, int], list[float]] = {}
    for _ in range(rounds):
        for kind, b in shapes:
            fb = batch(kind, b)
            rows = [prefill_tokens] if kind == "prefill" else [1] * b
            modes: list[tuple[str, int]] = [("base", 0), ("merged", 1)]
            modes += [("unmerged", k) for k in adapter_counts if k <= len(rows) or k == 1]
            for mode, k in modes:
                if mode == "base":
                    rt.prepare([None] * len(rows), rows)
                elif mode == "merged":
                    rt.prepare([loras[0]] * len(rows), rows, merged="r0")
                else:
                    rt.prepare([loras[i % k] for i in range(len(rows))], rows)
                dt = min(_seconds(lambda fb=fb: net(fb, kv)) for _ in range(repeats))
                samples.setdefault((kind, b, mode, k), []).append(dt)
            rt.prepare([None] * len(rows), rows)  # unmerge between shapes
    merge_s, unmerge_s = [], []
    for i in range(switches):
        lora = loras[i % len(loras)]
        t0 = time.perf_counter()
        rt.merge(lora)
        merge_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rt.unmerge()
        unmerge_s.append(time.perf_counter() - t0)

    med = {key: statistics.median(v) for key, v in samples.items()}
    table = []
    extras = []
    for (kind, b, mode, k), t in sorted(med.items()):
        tokens = prefill_tokens if kind == "prefill" else b
        base = med[(kind, b, "base", 0)]
        table.append(
            {"kind": kind, "batch": b, "tokens": tokens, "mode": mode, "adapters": k, "step_s": t}
        )
        if mode == "unmerged":
            extras.append((tokens, k, t - base))
    profile = LoRAProfile.fit(
        extras,
        statistics.median(merge_s),
        statistics.median(unmerge_s),
        source=f"measured on this CPU: rank {rank}, {torch.get_num_threads()} threads",
    )
    base_rows = [(r["batch"], r["tokens"], r["step_s"]) for r in table if r["mode"] == "base"]
    x = np.array([[1.0, s, t] for s, t, _ in base_rows])
    y = np.array([v for _, _, v in base_rows])
    coef = nonnegative_lstsq(x, y)
    rho = {
        b: med[("decode", b, "merged", 1)]
        / med[
            (
                "decode",
                b,
                "unmerged",
                max(k for k in adapter_counts if ("decode", b, "unmerged", k) in med),
            )
        ]
        for b in batch_sizes
    }
    return {
        "samples": table,
        "lora": profile,
        "base": LinearStepCost(float(coef[0]), float(coef[1]), float(coef[2])),
        "rho": rho,
        "merge_s": merge_s,
        "unmerge_s": unmerge_s,
    }
