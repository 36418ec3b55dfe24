"""The words of the claims' notes, derived from what a run did: its scale, the fleets, workloads
and rates it swept, the rounds of the real mode, and the profile E2's costs came from."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from core.artifact import Results
from core.artifact.words import pinned_profile
from core.metrics import order_words

from . import real
from .plots import real_summary

SIM = (
    "Simulated fleets: the engine's scheduler and radix caches with the roofline cost model "
    "of the GPU in place of the forward (the H100 fitted to Vidur's profiles, the A6000 from "
    "its datasheet); synthetic workloads with the paper's statistics "
    "(artifacts/preble/workloads.py)."
)


def loads_words(loads: Sequence[float]) -> str:
    """``0.25-4x nominal (5 rates)`` or ``0.5x, 2x nominal``."""
    loads = sorted(set(float(x) for x in loads))
    if len(loads) > 3:
        return f"{loads[0]:g}-{loads[-1]:g}x nominal ({len(loads)} rates)"
    return ", ".join(f"{x:g}x" for x in loads) + " nominal"


def fleet_scope(frame: pd.DataFrame) -> str:
    """The fleets and workloads a fleet frame sweeps, the requests per point and the loads."""
    parts = []
    for (setup, gpus), g in frame.groupby(["setup", "gpus"], sort=False):
        workloads = list(dict.fromkeys(g["workload"]))
        parts.append(f"{setup} on {gpus} GPUs: {', '.join(workloads)}")
    requests = sorted(set(int(x) for x in frame["requests"]))
    per_point = "/".join(f"{x:,}" for x in requests)
    return f"{'; '.join(parts)}; {per_point} requests per point at {loads_words(frame['load'])}"


def fleet_words(r: Results, experiment: str = "fleet") -> str:
    if experiment not in r:
        return SIM
    return f"{SIM} This run ({r.ctx.scale.value} scale): {fleet_scope(r[experiment])}."


def ablation_words(r: Results, experiment: str = "ablation") -> str:
    if experiment not in r:
        return SIM
    a = r[experiment]
    rates = sorted(set(a["rate"]))
    loads = sorted(set(a["load"]))
    at = ", ".join(f"{lo:g}x ({ra:.3g} req/s)" for lo, ra in zip(loads, rates, strict=True))
    return (
        f"{SIM} This run ({r.ctx.scale.value} scale): ToolBench (Zipf-1.1) on "
        f"{int(a['gpus'].iloc[0])} {a['setup'].iloc[0].split('/')[-1].upper()}s, "
        f"{int(a['requests'].iloc[0]):,} requests per point at {at} nominal; the claim reads "
        "the highest rate."
    )


def real_words(r: Results) -> str:
    """What the real run was, and its medians with their spread over rounds."""
    if "real" not in r:
        return "Two engine replicas as Ray actors on this machine, one core each."
    f = r["real"]
    s = real_summary(f)
    c = f.iloc[0]
    short = {"round-robin": "RR", real.E2_LABEL: "E2"}
    order = order_words(f, "router", short)
    head = (
        f"Two engine replicas as Ray actors on this machine, one core each, a ~20M-parameter "
        f"Llama with random weights; VideoQA with lengths x{real.LENGTH_SCALE:g} "
        f"({c['prompt_mean']:.0f}-token prompts on average), {int(c['requests'])} requests at "
        f"{c['rate']:g} req/s; {s.rounds} round{'s' if s.rounds > 1 else ''} in this order, each "
        f"run on fresh replicas: "
        f"{order}."
    )
    p = s.per_key
    lat = "; ".join(f"{k} {s.median_range(k, 'avg_latency_s', unit=' s')}" for k in p.index)
    ratios = s.ratios["avg_latency_s"]
    tail = f" RR/E2 per round: {', '.join(f'{x:.2f}x' for x in ratios)}." if ratios else ""
    work = "; ".join(
        f"{k} {p.at[k, 'prefill_tokens_median']:,.0f} (busiest replica "
        f"{p.at[k, 'prefill_tokens_max_replica_median']:,.0f})"
        for k in p.index
    )
    what = "median (min-max) over rounds" if s.rounds > 1 else "in its one round"
    return (
        f"{head} Average latency, {what}: {lat}.{tail} Prefill tokens "
        f"computed, median over rounds (the work the router saves, which timing noise does "
        f"not move much): {work}. Latencies are wall-clock on a shared 2-core machine."
    )


def profile_words(r: Results) -> str:
    """Which step profile E2's cost estimates came from, where it was measured, its sha256."""
    pinned = pinned_profile(r)
    if pinned is None:
        return ""
    return (
        f"E2's step-cost estimates come from the profile {pinned[1]}. The replicas' own speed "
        "is measured, not the profile's."
    )
