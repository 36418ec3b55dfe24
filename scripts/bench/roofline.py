"""Machine rooflines: measure this machine's GEMM peak and memory bandwidth, and turn FLOPs and
bytes into lower bounds on time (upper bounds on throughput).

Shared by every benchmark under ``scripts/bench/`` (the engine benchmark here; the simulator's
fidelity, GPU cost-model and speed benchmarks later), so that "% of roofline" means the same
thing everywhere.

Method
------
*GEMM peak* (:func:`measure_gemm_peak`): square ``n x n @ n x n`` products for each size in
``sizes`` (default 512, 1024, 2048), plus any ``m x k @ k x n`` shapes given (the engine
benchmark adds the model's own projections, :func:`model_gemm_shapes`, so that no layer of the
model can run faster than the "peak"), in the dtype asked for, through two torch entry points:
``torch.matmul`` and ``torch.nn.functional.linear`` (what ``nn.Linear`` and every model's
projections call). On CPUs without native bf16 the two take different kernels (on the AVX2 EPYC
this was written on, bf16 ``matmul`` runs at ~1.3 GFLOP/s and bf16 ``linear`` at ~9 GFLOP/s), so
a peak from ``matmul`` alone would let a model beat its own roofline. Each (method, size) runs
once untimed, then is timed ``repeats`` times (fewer if one run is slow, bounded by
``budget_s``; a product predicted to take over ``max_single_s`` per run is skipped); its rate
is ``2 m k n / best time``. The peak is the best rate over all of them:
the fastest GEMM torch reaches on this machine in this dtype, with all of torch's threads.

*Memory bandwidth* (:func:`measure_bandwidth`): a float32 tensor of ``mib`` MiB (default 256,
far larger than any CPU cache) is (a) copied into another tensor (``dst.copy_(src)``: reads
and writes ``2 x size`` bytes) and (b) summed (``src.sum()``: reads ``size`` bytes); each is
timed ``repeats`` times after an untimed run, and the rate is bytes over the best time. The
bandwidth used by rooflines is the larger of the two: the best streaming rate seen.

Both are *achieved* ceilings, not datasheet numbers, so a roofline built on them is tight and a
result near 100% means the code runs as fast as torch's own best kernel allows. Taking the best
of several runs removes most of the noise of a shared machine, but not all: on a loaded machine
the ceilings come out low, which flatters "% of roofline". The provenance records the load
average for that reason.

Bounds
------
A step that does ``F`` FLOPs and moves ``B`` bytes cannot take less than
``max(F / peak, B / bandwidth)`` (:func:`roofline_time`); a workload of ``T`` useful tokens
cannot exceed ``T / that`` tokens per second (:func:`roofline_throughput`). "% of roofline" is
the bound over the measured time (equivalently measured throughput over the bound throughput,
:func:`percent_of_roofline`): 100% is the ceiling. FLOPs and bytes of a model come from
:class:`core.model.spec.ModelSpec` (:func:`workload_flops`, :func:`decode_step_cost`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "compute_time",
    "decode_step_cost",
    "gemm_flops",
    "measure_bandwidth",
    "measure_gemm_peak",
    "memory_time",
    "model_gemm_shapes",
    "percent_of_roofline",
    "roofline_throughput",
    "roofline_time",
    "time_best",
    "workload_flops",
]


# ------------------------------------------------------------------------------------------
# Pure math
# ------------------------------------------------------------------------------------------


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def _non_negative(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return value


def gemm_flops(m: int, n: int, k: int) -> float:
    """FLOPs of an ``m x k @ k x n`` product: ``2 m n k`` (a multiply and an add each)."""
    return 2.0 * m * n * k


def compute_time(flops: float, peak_flops: float) -> float:
    """Seconds ``flops`` take at ``peak_flops`` FLOP/s: the compute bound."""
    return _non_negative("flops", flops) / _positive("peak_flops", peak_flops)


def memory_time(nbytes: float, bandwidth: float) -> float:
    """Seconds moving ``nbytes`` takes at ``bandwidth`` bytes/s: the memory bound."""
    return _non_negative("bytes", nbytes) / _positive("bandwidth", bandwidth)


def roofline_time(
    flops: float, nbytes: float = 0.0, *, peak_flops: float, bandwidth: float | None = None
) -> float:
    """Lower bound on the time of work doing ``flops`` FLOPs and moving ``nbytes`` bytes:
    ``max(flops / peak_flops, nbytes / bandwidth)``. Without a ``bandwidth`` the bound is
    compute only (``nbytes`` must then be 0)."""
    t = compute_time(flops, peak_flops)
    if bandwidth is None:
        if nbytes:
            raise ValueError("nbytes given without a bandwidth")
        return t
    return max(t, memory_time(nbytes, bandwidth))


def roofline_throughput(
    tokens: float,
    flops: float,
    nbytes: float = 0.0,
    *,
    peak_flops: float,
    bandwidth: float | None = None,
) -> float:
    """Upper bound on tokens/s of work producing ``tokens`` tokens: ``tokens /``
    :func:`roofline_time`."""
    t = roofline_time(flops, nbytes, peak_flops=peak_flops, bandwidth=bandwidth)
    if t == 0:
        raise ValueError("the work has neither FLOPs nor bytes: no bound")
    return _non_negative("tokens", tokens) / t


def percent_of_roofline(measured_time: float, bound_time: float) -> float:
    """How close a measured time is to its roofline bound, in percent: ``100 * bound /
    measured`` (equal to measured throughput over bound throughput)."""
    return (
        100.0 * _non_negative("bound_time", bound_time) / _positive("measured_time", measured_time)
    )


# ------------------------------------------------------------------------------------------
# Model FLOPs and bytes (from core.model.spec.ModelSpec)
# ------------------------------------------------------------------------------------------


def workload_flops(spec: Any, prompt_lens: Sequence[int], output_lens: Sequence[int]) -> float:
    """FLOPs a serving system must at least do to answer the requests: for each request its
    prefill (``spec.prefill_flops(prompt)``, which yields the first output token) and one decode
    per further output token (``spec.decode_flops(context)`` for contexts ``prompt .. prompt +
    output - 2``). Padding, recomputation and discarded tokens are not counted."""
    if len(prompt_lens) != len(output_lens):
        raise ValueError(f"{len(prompt_lens)} prompt lengths but {len(output_lens)} output lengths")
    total = 0.0
    for p, o in zip(prompt_lens, output_lens, strict=True):
        if p < 1 or o < 1:
            raise ValueError(f"prompt and output lengths must be >= 1, got ({p}, {o})")
        total += spec.prefill_flops(int(p))
        total += sum(spec.decode_flops(c) for c in range(int(p), int(p) + int(o) - 1))
    return total


def decode_step_cost(spec: Any, contexts: Iterable[int], dtype: str) -> tuple[float, float]:
    """``(flops, bytes)`` of one decode step of a batch whose sequences have ``contexts`` tokens
    cached, weights and KV cache in ``dtype``: the sum of ``spec.operators(decode_contexts=...)``
    (every weight read once, each sequence's whole KV cache read once, activations in and out)."""
    ops = spec.operators(decode_contexts=list(contexts), dtype=dtype)
    return float(sum(o.flops for o in ops)), float(sum(o.bytes for o in ops))


# ------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------


def time_best(fn: Callable[[], Any], repeats: int = 5, budget_s: float | None = None) -> float:
    """Best wall time of ``fn()`` over ``repeats`` timed runs after one untimed run; with
    ``budget_s``, stop early once the timed runs have used that much time (at least one)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    fn()
    best = math.inf
    spent = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        if budget_s is not None and spent >= budget_s:
            break
    return best


def measure_gemm_peak(
    dtype: Any,
    sizes: Sequence[int] = (512, 1024, 2048),
    shapes: Sequence[tuple[int, int, int]] = (),
    repeats: int = 5,
    budget_s: float = 2.0,
    max_single_s: float = 3.0,
) -> dict[str, Any]:
    """Measure the best GEMM rate (FLOP/s) torch reaches on this machine in ``dtype`` (a torch
    dtype): square products of each size in ``sizes``, then each ``(m, k, n)`` in ``shapes``
    (``m x k @ k x n``; e.g. a model's own projections, see :func:`model_gemm_shapes`), through
    ``torch.matmul`` and ``torch.nn.functional.linear``. See the module docstring.

    A GEMM predicted to take longer than ``max_single_s`` per run (its FLOPs over the best rate
    its method reached so far) is skipped: on a slow path (bf16 without hardware support) large
    products cost minutes and would not raise the peak.

    Returns ``{"peak_flops", "best": {"method", "m", "k", "n"}, "runs": [{"method", "m", "k",
    "n", "seconds", "flops_per_s"}], "skipped": [{"method", "m", "k", "n"}], "method": <text>}``.
    """
    import torch
    import torch.nn.functional as F

    gemms = [(n, n, n) for n in sorted(sizes)] + [tuple(int(x) for x in s) for s in shapes]
    if not gemms:
        raise ValueError("no GEMM to measure: give sizes or shapes")
    gen = torch.Generator().manual_seed(0)
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with torch.inference_mode():
        for name in ("torch.matmul", "torch.nn.functional.linear"):
            rate = 0.0  # best FLOP/s of this method so far
            for m, k, n in gemms:
                flops = gemm_flops(m, n, k)
                if rate and flops / rate > max_single_s:
                    skipped.append({"method": name, "m": m, "k": k, "n": n})
                    continue
                a = torch.randn(m, k, generator=gen).to(dtype)
                if name == "torch.matmul":
                    b = torch.randn(k, n, generator=gen).to(dtype)
                    fn = lambda a=a, b=b: torch.matmul(a, b)  # noqa: E731
                else:  # the layout nn.Linear keeps: weight is (out, in)
                    w = torch.randn(n, k, generator=gen).to(dtype)
                    fn = lambda a=a, w=w: F.linear(a, w)  # noqa: E731
                t0 = time.perf_counter()
                fn()  # untimed: first-call setup, and a probe of how slow one run is
                single = time.perf_counter() - t0
                reps = max(1, min(repeats, int(budget_s / max(single, 1e-9))))
                best = time_best(fn, repeats=reps, budget_s=budget_s)
                runs.append(
                    {
                        "method": name,
                        "m": m,
                        "k": k,
                        "n": n,
                        "seconds": best,
                        "flops_per_s": flops / best,
                    }
                )
                rate = max(rate, flops / best)
    top = max(runs, key=lambda r: r["flops_per_s"])
    return {
        "peak_flops": top["flops_per_s"],
        "best": {key: top[key] for key in ("method", "m", "k", "n")},
        "runs": runs,
        "skipped": skipped,
        "method": (
            "best of timed runs of m x k @ k x n products through torch.matmul and "
            f"torch.nn.functional.linear: square n in {sorted(sizes)}"
            + (f", and (m, k, n) in {[tuple(s) for s in shapes]}" if shapes else "")
            + "; rate = 2 m k n / best time; peak = best rate"
        ),
    }


def model_gemm_shapes(spec: Any, tokens: int) -> list[tuple[int, int, int]]:
    """The ``(m, k, n)`` of a model's attention and dense-MLP projections and its lm_head over
    ``tokens`` tokens, as our engine runs them (fused q/k/v and gate/up): qkv, o, gate_up, down,
    lm_head. SSM and MoE projections are not listed."""
    d = spec.hidden_size
    shapes = []
    if spec.attention is not None:
        at = spec.attention
        shapes += [(tokens, d, at.q_dim + 2 * at.kv_dim), (tokens, at.q_dim, d)]
    if spec.mlp is not None:
        up = (2 if spec.mlp.gated else 1) * spec.mlp.intermediate_size
        shapes += [(tokens, d, up), (tokens, spec.mlp.intermediate_size, d)]
    return [*shapes, (tokens, d, spec.vocab_size)]


def measure_bandwidth(mib: int = 256, repeats: int = 7) -> dict[str, Any]:
    """Measure this machine's streaming memory bandwidth (bytes/s) with a float32 tensor of
    ``mib`` MiB: the best rate of ``dst.copy_(src)`` (``2 x size`` bytes) and of ``src.sum()``
    (``size`` bytes). See the module docstring.

    Returns ``{"bandwidth", "copy_bytes_per_s", "sum_bytes_per_s", "mib", "method"}``.
    """
    import torch

    n = int(mib) * 1024 * 1024 // 4
    if n < 1:
        raise ValueError(f"mib must be >= 1, got {mib}")
    with torch.inference_mode():
        src = torch.ones(n, dtype=torch.float32)  # written once: pages are touched before timing
        dst = torch.zeros_like(src)
        size = src.numel() * src.element_size()
        copy_bw = 2 * size / time_best(lambda: dst.copy_(src), repeats)
        sum_bw = size / time_best(lambda: src.sum(), repeats)
    return {
        "bandwidth": max(copy_bw, sum_bw),
        "copy_bytes_per_s": copy_bw,
        "sum_bytes_per_s": sum_bw,
        "mib": int(mib),
        "method": (
            f"best of {repeats} timed runs over a {mib} MiB float32 tensor of dst.copy_(src) "
            "(2 x size bytes) and src.sum() (size bytes); bandwidth = the larger rate"
        ),
    }
