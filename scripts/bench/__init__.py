"""Benchmarks: ``python -m scripts.bench <name> [options]`` (``--help`` lists them).

Each benchmark is a module here with ``main(argv, prog) -> int``, registered in
:data:`BENCHMARKS`; it writes ``<out>/<name>.json`` (default ``results/bench/``) with the layout
of :mod:`scripts.bench.report` and prints a table. Shared pieces:

- :mod:`scripts.bench.roofline`: measure this machine's GEMM peak and memory bandwidth; turn
  FLOPs and bytes into lower bounds on time and "% of roofline";
- :mod:`scripts.bench.report`: provenance, targets with pass flags, tables, JSON files.

Benchmarks are measurements, never tests: the test suite runs them only at ``--quick`` scale to
check they work, and never asserts on their speed.
"""

BENCHMARKS: dict[str, tuple[str, str]] = {
    # name: (module, one-line description)
    "engine": (
        "scripts.bench.engine",
        "our engine vs transformers generate / continuous batching on a ~125M Llama: roofline, "
        "offline tokens/s, decode step vs batch, scheduler overhead, TTFT with a prefix hit",
    ),
    "gpu-cost-model": (
        "scripts.bench.gpu_cost_model",
        "roofline cost model vs Vidur A100/H100 operator and all-reduce times: MAPE, fitted "
        "efficiency factors",
    ),
    "fidelity": (
        "scripts.bench.fidelity",
        "simulator vs real engines on this machine: every step vs the profiled cost model "
        "(drift-corrected), Azure requests at 30/50/70/90% load beside the engine's own "
        "run-to-run spread, and vLLM's CPU build predicted from its own step times",
    ),
    "sim-speed": (
        "scripts.bench.sim_speed",
        "simulator speed: the full Azure conversation trace (19,366 requests) on 8 simulated "
        "Llama-3-8B/H100 replicas; simulated requests per wall-clock second (target < 60 s)",
    ),
    "spec": (
        "scripts.bench.spec",
        "speculative decoding: tokens/s of the target alone, with n-gram, suffix and draft-model "
        "drafting, greedy, interleaved; acceptance and the expected speedup beside the measured",
    ),
    "lora": (
        "scripts.bench.lora",
        "LoRA decode steps on a ~125M Llama: unmerged with 1/4/16/64 adapters in a batch of 64 "
        "vs merged vs peft, interleaved (target: unmerged-16 within 1.5x of merged)",
    ),
    "collectives": (
        "scripts.bench.collectives",
        "collective cost model vs measured: gloo on 2 local ranks (all-reduce, all-gather, "
        "all-to-all, broadcast; model/measured per size) and Vidur's A100/H100 NCCL tables",
    ),
    "serve": (
        "scripts.bench.serve",
        "the OpenAI-compatible HTTP server + load client vs the engine in-process on the same "
        "Azure requests (~125M model): latency percentiles at Poisson rates, overhead at "
        "saturation (target < 10%)",
    ),
}
