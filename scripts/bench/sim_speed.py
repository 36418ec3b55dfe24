"""``python -m scripts.bench sim-speed``: how fast the simulator is, on a whole production trace.

The issue's target: simulating the full Azure LLM inference trace 2023, conversation part
(19,366 requests, ~58 minutes), on 8 replicas of Llama-3-8B on H100 (roofline cost model,
bf16, as many 16-token KV blocks as fit next to the weights) finishes in under 60 s on a
2-core machine. The benchmark prints and writes (``<out>/sim-speed.json``) the simulated
requests per wall-clock second, the steps simulated, the wall time, the simulated makespan and
the latency summary of the simulated requests (:func:`core.metrics.summarize`).

What makes it fast (see :mod:`core.sim.cost` and :mod:`core.sim.simulator`): the roofline
model's fast path (operator costs as linear functions of a few batch features) and decode
fast-forward (runs of identical decode steps applied at once). ``--compare`` also runs the
same simulation step by step (``fast_forward=False``, ~2 minutes on the full trace) and checks
that every request's timeline, replica and cache hit, every replica's step count and busy time,
and the makespan are identical.

Options: ``--limit N`` (first N requests; the 60 s target is only checked on the full trace),
``--quick`` (500 requests, with ``--compare``: seconds; for tests), ``--router``,
``--replicas``, ``--prefix-cache``, ``--no-fast-forward``, ``--out``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import report as rep

BENCHMARK = "sim-speed"
DEFAULT_OUT = Path("results") / "bench"
FULL_TRACE_REQUESTS = 19_366
TARGET_S = 60.0
QUICK_LIMIT = 500
MODEL, GPU, DTYPE, BLOCK_SIZE = "llama-3-8b", "h100-sxm", "bf16", 16
SCHEDULER = dict(max_num_batched_tokens=8192, max_num_seqs=256, max_model_len=16384)


def build_parser(prog: str = "python -m scripts.bench sim-speed") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Simulator speed: the Azure conversation trace (19,366 requests) on 8 simulated "
            "replicas of Llama-3-8B on H100. Prints simulated requests per wall-clock second and "
            f"writes <out>/{BENCHMARK}.json. Target: the full trace in under {TARGET_S:.0f} s."
        ),
    )
    p.add_argument(
        "--limit",
        type=rep.positive_int,
        default=None,
        help="simulate only the first N requests of the trace (default: all)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_LIMIT} requests and --compare: seconds; for tests, not for numbers",
    )
    p.add_argument(
        "--router",
        choices=("round-robin", "least-work"),
        default="round-robin",
        help="global router (default round-robin)",
    )
    p.add_argument("--replicas", type=rep.positive_int, default=8, help="replicas (default 8)")
    p.add_argument(
        "--prefix-cache",
        choices=("none", "block", "radix"),
        default="none",
        help="prefix cache of each replica (default none: the trace has no token ids)",
    )
    p.add_argument(
        "--no-fast-forward",
        dest="fast_forward",
        action="store_false",
        help="simulate every decode step on its own (the reference; slow)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="also simulate step by step and check the results are identical",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder (default {DEFAULT_OUT}/); writes {BENCHMARK}.json there",
    )
    return p


def _replicas(args: argparse.Namespace, cost: Any, blocks: int) -> list[Any]:
    from core.sched import SchedulerConfig
    from core.sim import ReplicaConfig

    return [
        ReplicaConfig(
            cost,
            num_kv_blocks=blocks,
            block_size=BLOCK_SIZE,
            prefix_cache=args.prefix_cache,
            scheduler=SchedulerConfig(**SCHEDULER),
        )
        for _ in range(args.replicas)
    ]


def _simulate(
    args: argparse.Namespace, workload: Any, cost: Any, blocks: int, fast_forward: bool
) -> tuple[Any, float]:
    from core.sim import Simulator

    sim = Simulator(_replicas(args, cost, blocks), args.router, fast_forward=fast_forward)
    t0 = time.perf_counter()
    res = sim.run(workload)
    return res, time.perf_counter() - t0


def _clean(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN/inf (undefined metrics) to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark for parsed ``args``; returns the report (also written)."""
    from core.metrics import RequestRecord, summarize
    from core.model.spec import ModelSpec
    from core.sim.cost import RooflineCostModel
    from core.sim.hardware import get_hardware
    from core.workload import azure_trace_path, load_azure

    started = time.perf_counter()
    limit = QUICK_LIMIT if args.quick and args.limit is None else args.limit
    compare = args.compare or args.quick
    prov = rep.provenance()
    t0 = time.perf_counter()
    workload = load_azure(kind="conv", limit=limit)
    cost = RooflineCostModel(ModelSpec.from_preset(MODEL), get_hardware(GPU), dtype=DTYPE)
    blocks = cost.max_kv_blocks(BLOCK_SIZE)
    setup_s = time.perf_counter() - t0
    n = len(workload)
    config = {
        "trace": str(azure_trace_path("conv")),
        "kind": "conv",
        "limit": limit,
        "requests": n,
        "full_trace": limit is None,
        "replicas": args.replicas,
        "router": args.router,
        "model": MODEL,
        "hardware": GPU,
        "dtype": DTYPE,
        "cost_model": cost.describe(),
        "num_kv_blocks": blocks,
        "block_size": BLOCK_SIZE,
        "prefix_cache": args.prefix_cache,
        "scheduler": SCHEDULER,
        "fast_forward": args.fast_forward,
        "compare": compare,
        "sessions": "open",
    }

    res, wall = _simulate(args, workload, cost, blocks, args.fast_forward)
    records = [
        RequestRecord.from_request(r, replica=res.replica_of[r.request_id]) for r in res.requests
    ]
    metrics = _clean(summarize(records, duration=res.makespan))
    results: dict[str, Any] = {
        "requests": n,
        "steps": res.total_steps,
        "fast_forwarded_steps": res.fast_forwarded_steps,
        "steps_per_replica": res.steps,
        "setup_s": setup_s,
        "wall_s": wall,
        "end_to_end_s": setup_s + wall,
        "simulated_requests_per_wall_s": n / wall if wall > 0 else None,
        "simulated_steps_per_wall_s": res.total_steps / wall if wall > 0 else None,
        "makespan_s": res.makespan,
        "simulated_s_per_wall_s": res.makespan / wall if wall > 0 else None,
        "cost_model_fast_path": cost.fast_path,
        "metrics": metrics,
    }
    if compare:
        ref, ref_wall = _simulate(args, workload, cost, blocks, not args.fast_forward)
        same = ref.fingerprint() == res.fingerprint()
        fast_wall, slow_wall = (wall, ref_wall) if args.fast_forward else (ref_wall, wall)
        results["step_by_step" if args.fast_forward else "fast_forward"] = {
            "wall_s": ref_wall,
            "identical": same,
            "fast_forward_speedup": slow_wall / fast_wall if fast_wall > 0 else None,
        }

    targets = [
        rep.target(
            "full-trace-under-60s",
            f"the full Azure conversation trace ({FULL_TRACE_REQUESTS:,} requests) on "
            f"{args.replicas} simulated {MODEL} / {GPU} replicas: trace loading, setup and "
            f"simulation take under {TARGET_S:.0f} s",
            setup_s + wall if limit is None and n == FULL_TRACE_REQUESTS else None,
            "<",
            TARGET_S,
            "s",
            reason=None if limit is None else f"only {n} requests simulated (--limit/--quick)",
        )
    ]
    if compare:
        same = results.get("step_by_step", results.get("fast_forward", {}))["identical"]
        targets.append(
            rep.target(
                "fast-forward-exact",
                "the same simulation step by step gives identical timelines, replicas, cache hits, "
                "step counts, busy times and makespan (1 = identical)",
                float(same),
                ">=",
                1.0,
            )
        )
    report = rep.make_report(
        BENCHMARK, config, results, targets, prov, time.perf_counter() - started
    )
    rep.write_json(Path(args.out) / f"{BENCHMARK}.json", report)
    return report


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def render(report: dict[str, Any]) -> str:
    r, c = report["results"], report["config"]
    m = r["metrics"]
    rows = [
        ["requests", r["requests"]],
        ["steps (fast-forwarded)", f"{r['steps']:,} ({r['fast_forwarded_steps']:,})"],
        ["setup s (trace, cost model)", r["setup_s"]],
        ["simulation wall s", r["wall_s"]],
        ["simulated requests / wall s", r["simulated_requests_per_wall_s"]],
        ["simulated steps / wall s", r["simulated_steps_per_wall_s"]],
        ["simulated makespan s", r["makespan_s"]],
        ["simulated s / wall s", r["simulated_s_per_wall_s"]],
        *(
            [f"{name} p50 / p99 s", f"{_num(m.get(f'{key}_p50'))} / {_num(m.get(f'{key}_p99'))}"]
            for name, key in (("TTFT", "ttft"), ("TPOT", "tpot"), ("E2E", "e2e"))
        ),
    ]
    other = r.get("step_by_step") or r.get("fast_forward")
    if other:
        label = "step by step" if "step_by_step" in r else "fast-forward"
        rows.append([f"{label}: wall s", other["wall_s"]])
        rows.append([f"{label}: identical results", str(other["identical"])])
        rows.append(["fast-forward speedup", other["fast_forward_speedup"]])
    title = (
        f"Simulator speed: Azure conv trace, {c['replicas']} x {c['model']} on {c['hardware']}, "
        f"{c['router']}, fast-forward {'on' if c['fast_forward'] else 'off'}"
    )
    table = rep.format_table(["quantity", "value"], rows, title=title)
    return table + "\n\n" + rep.targets_table(report["targets"])


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(**({"prog": prog} if prog else {})).parse_args(argv)
    report = run(args)
    print(render(report))
    print(f"\nwrote {Path(args.out) / f'{BENCHMARK}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
