"""Aurora (arXiv 2410.17043): MoE inference time from all-to-all ordering and expert
deployment, simulated per MoE layer on homogeneous and heterogeneous GPU clusters.

Experiments:
- ``alltoall``: the all-to-all of one layer under four orderings (pairwise rotation, random
  order, all-at-once fair sharing, Aurora's matchings) on Zipf routing, against the bound;
- ``speedup``: two models served on one cluster, baseline expert parallelism against Aurora's
  ordering, placement by load and GPU speed, and co-location, over NIC speeds and skews;
- ``optimality``: Aurora's polynomial placement against the exact ILP (HiGHS) on small
  heterogeneous clusters, one model alone and two co-located;
- ``recorded``: the same on the routing recorded while our tiny Mixtral serves requests.

The mechanisms live in :mod:`core.alltoall`; see ``docs/core/alltoall.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.alltoall import (
    dispatch_bytes,
    fair_share_time,
    lower_bound,
    matching_schedule,
    random_order_time,
    rotation_schedule,
    zipf_routing,
)
from core.artifact import (
    Artifact,
    Claim,
    Experiment,
    NotApplicable,
    Paper,
    Results,
    RunContext,
    Scale,
    at_least,
    at_most,
)

from .ilp import solve_placement
from .placement import Cluster, colocated_placement, colocated_time, load_speed_placement, phases
from .plots import plot_alltoall, plot_optimality, plot_recorded, plot_speedup
from .systems import GPUS, NETWORKS, SPEED_KEYS, evaluate, layer, make_cluster, speedups

SCALES: dict[Scale, dict[str, Any]] = {
    Scale.SMOKE: {
        "a2a_gpus": [8],
        "skews": [0.0, 1.0],
        "reps": 1,
        "networks": ["25G"],
        "speed_skews": [1.0],
        "tokens": 256,
        "ilp_gpus": [4],
        "ilp_reps": 2,
        "time_limit": 5.0,
        "record": {"prompts_per_source": 2, "prompt_len": 8, "new_tokens": 4},
    },
    Scale.DEFAULT: {
        "a2a_gpus": [8, 16],
        "skews": [0.0, 0.5, 1.0, 1.5, 2.0],
        "reps": 2,
        "networks": list(NETWORKS),
        "speed_skews": [0.5, 1.0, 1.5],
        "tokens": 512,
        "ilp_gpus": [4, 5, 6],
        "ilp_reps": 4,
        "time_limit": 20.0,
        "record": {"prompts_per_source": 8, "prompt_len": 32, "new_tokens": 16},
    },
    Scale.FULL: {
        "a2a_gpus": [8, 16, 32],
        "skews": [0.0, 0.5, 1.0, 1.5, 2.0],
        "reps": 5,
        "networks": list(NETWORKS),
        "speed_skews": [0.5, 1.0, 1.5, 2.0],
        "tokens": 2048,
        "ilp_gpus": [4, 6, 8],
        "ilp_reps": 8,
        "time_limit": 120.0,
        "record": {"prompts_per_source": 32, "prompt_len": 64, "new_tokens": 32},
    },
}
"""Per scale: the all-to-all sweep (GPUs, Zipf skews, repetitions), the speedup sweep (NIC
speeds, skews), tokens per source GPU, the ILP instances (GPUs, repetitions, time limit), and
the tiny Mixtral's serving load per source when recording."""

# ---------------------------------------------------------------------------------- points


def alltoall_points(ctx: RunContext) -> list[dict[str, Any]]:
    cfg = SCALES[ctx.scale]
    return [
        {
            "gpus": n,
            "skew": s,
            "popularity": pop,
            "bandwidth": bw,
            "reps": cfg["reps"],
            "tokens": cfg["tokens"],
        }
        for n in cfg["a2a_gpus"]
        for s in cfg["skews"]
        for pop in ("shared", "per-source")
        for bw in ("homogeneous", "heterogeneous")
    ]


def _bandwidths(kind: str, n: int) -> np.ndarray:
    bw = np.full(n, NETWORKS["100G"])
    if kind == "heterogeneous":
        bw[n // 2 :] /= 2
    return bw


def _ordering_rows(d: np.ndarray, bw: np.ndarray, rng: np.random.Generator) -> list[dict[str, Any]]:
    lb = lower_bound(d, bw)
    sched = matching_schedule(d, bw)
    rot = rotation_schedule(d, bw)
    times = {
        "rotation": rot.time,
        "random order": random_order_time(d, bw, rng=rng),
        "fair share": fair_share_time(d, bw),
        "Aurora": sched.time,
    }
    rounds = {"rotation": len(rot.rounds), "Aurora": len(sched.rounds)}
    return [
        {"ordering": k, "time_over_bound": v / lb if lb > 0 else 1.0, "rounds": rounds.get(k, 0)}
        for k, v in times.items()
    ]


def _zipf(config: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """The point's Zipf routing: every GPU a source and one expert per GPU."""
    n = int(config["gpus"])
    return zipf_routing(
        n,
        n,
        int(config["tokens"]),
        skew=float(config["skew"]),
        rng=rng,
        shared_popularity=config["popularity"] == "shared",
    )


def run_alltoall(config: dict[str, Any]) -> list[dict[str, Any]]:
    n = int(config["gpus"])
    rng = np.random.default_rng(int(config["seed"]))
    bw = _bandwidths(config["bandwidth"], n)
    rows = []
    for rep in range(int(config["reps"])):
        r = _zipf(config, rng)
        d = dispatch_bytes(r, np.arange(n), n, 8192)  # expert e on GPU e
        rows += [{"rep": rep, **row} for row in _ordering_rows(d, bw, rng)]
    return rows


def speedup_points(ctx: RunContext) -> list[dict[str, Any]]:
    cfg = SCALES[ctx.scale]
    return [
        {
            "cluster": c,
            "network": net,
            "skew": s,
            "popularity": pop,
            "gpus": 8,
            "reps": cfg["reps"],
            "tokens": cfg["tokens"],
        }
        for c in ("homogeneous", "heterogeneous")
        for net in cfg["networks"]
        for s in cfg["speed_skews"]
        for pop in ("shared", "per-source")
    ]


def run_speedup(config: dict[str, Any]) -> list[dict[str, Any]]:
    n = int(config["gpus"])
    rng = np.random.default_rng(int(config["seed"]))
    cluster = make_cluster(config["cluster"], n, config["network"])
    rows = []
    for rep in range(int(config["reps"])):
        a, b = layer(_zipf(config, rng)), layer(_zipf(config, rng))
        rows += [{"rep": rep, **row} for row in evaluate(a, b, cluster, seed=rep)]
    return rows


def optimality_points(ctx: RunContext) -> list[dict[str, Any]]:
    cfg = SCALES[ctx.scale]
    return [
        {
            "gpus": n,
            "rep": rep,
            "models": m,
            "time_limit": cfg["time_limit"],
            "tokens": cfg["tokens"],
        }
        for n in cfg["ilp_gpus"]
        for rep in range(cfg["ilp_reps"])
        for m in (1, 2)
    ]


def run_optimality(config: dict[str, Any]) -> dict[str, Any]:
    """A random heterogeneous cluster (A100s and V100s, 25G NICs, V100 NICs at half speed) and
    one or two models with Zipf(1.0) routing (one model's popularity shared by all sources,
    the other's per source)."""
    n, m = int(config["gpus"]), int(config["models"])
    rng = np.random.default_rng([int(config["seed"]), int(config["rep"]), n, m])
    fast = rng.random(n) < 0.5
    bw = NETWORKS["25G"]
    cluster = Cluster(
        tuple(GPUS["A100"] if f else GPUS["V100"] for f in fast),
        tuple(bw if f else bw / 2 for f in fast),
    )
    layers = [
        layer(
            zipf_routing(n, n, int(config["tokens"]), skew=1.0, rng=rng, shared_popularity=k == 0)
        )
        for k in range(m)
    ]
    if m == 1:
        heur = phases(layers[0], load_speed_placement(layers[0].routing, cluster), cluster).alone
    else:
        pa, pb = colocated_placement(layers[0], layers[1], cluster)
        heur = colocated_time(phases(layers[0], pa, cluster), phases(layers[1], pb, cluster))
    res = solve_placement(layers, cluster, time_limit=float(config["time_limit"]), scale=heur)
    return {
        "heuristic_ms": heur * 1e3,
        "optimum_ms": res.objective * 1e3,
        "bound_ms": res.bound * 1e3,
        "optimal": res.optimal,
        "ratio": heur / res.objective,
        "ratio_vs_bound": heur / res.bound if res.bound > 0 else float("nan"),
        "fast_gpus": int(fast.sum()),
    }


def recorded_points(ctx: RunContext) -> list[dict[str, Any]]:
    return [{"gpus": 8, "experts": 8, **SCALES[ctx.scale]["record"]}]


def run_recorded(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Serve random prompts on a random-initialized tiny Mixtral (8 experts, top-2, 2 layers),
    one batch of requests per source GPU, record the router's choices, and use layer 0 and
    layer 1 as the routing of two models."""
    from core.alltoall.record import record_tiny_moe_routing

    n = int(config["gpus"])
    counts = record_tiny_moe_routing(
        sources=n,
        experts=int(config["experts"]),
        prompts_per_source=int(config["prompts_per_source"]),
        prompt_len=int(config["prompt_len"]),
        new_tokens=int(config["new_tokens"]),
        seed=int(config["seed"]),
    )
    rng = np.random.default_rng(int(config["seed"]))
    rows: list[dict[str, Any]] = []
    for li, r in enumerate(counts):
        for kind in ("homogeneous", "heterogeneous"):
            bw = _bandwidths(kind, n)
            d = dispatch_bytes(r, np.arange(n), n, 8192)
            rows += [
                {"kind": "alltoall", "layer": li, "cluster": kind, **row}
                for row in _ordering_rows(d, bw, rng)
            ]
    for kind in ("homogeneous", "heterogeneous"):
        for net in NETWORKS:
            cluster = make_cluster(kind, n, net)
            rows += [
                {"kind": "speedup", "cluster": kind, "network": net, **row}
                for row in evaluate(layer(counts[0]), layer(counts[1]), cluster, seed=0)
            ]
    rows.append(
        {
            "kind": "routing",
            "tokens": float(counts[0].sum() / 2),
            "max_expert_share": float(
                (counts.sum(axis=1) / counts.sum(axis=(1, 2))[:, None]).max()
            ),
        }
    )
    return rows


# ---------------------------------------------------------------------------------- measures


def speedup_measure(kind: str, baseline: str = "EP (rotation)"):
    def measure(r: Results) -> float:
        f = r["speedup"]
        f = f[f.cluster == kind]
        if f.empty:
            raise NotApplicable(f"no {kind} cluster in this run")
        return float(speedups(f, baseline).max())

    return measure


def utilization_gain(r: Results) -> float:
    f = r["speedup"]
    u = f.pivot_table(index=list(SPEED_KEYS), columns="system", values="utilization")
    return float((u["Aurora"] / u["EP (rotation)"]).max())


def colocated_gap(r: Results) -> float:
    f = r["optimality"]
    f = f[f.models == 2]
    if f.empty:
        raise NotApplicable("no co-located instance in this run")
    # against the optimum where proven, else against the solver's bound (an upper bound on the gap)
    return float(np.where(f.optimal, f.ratio, f.ratio_vs_bound).max())


def ordering_at_bound(r: Results) -> float:
    f = r["alltoall"]
    return float(f[f.ordering == "Aurora"].time_over_bound.max())


def recorded_speedup(r: Results) -> float:
    f = r["recorded"]
    f = f[f.kind == "speedup"]
    return float(speedups(f, "EP (rotation)").min())


def _speedup_note(kind: str):
    def note(r: Results) -> str:
        f = r["speedup"]
        f = f[f.cluster == kind]
        if f.empty:
            return ""
        parts = []
        for base in ("EP (rotation)", "EP (random order)", "EP (fair share)"):
            s = speedups(f, base)
            parts.append(f"over {base}: max {s.max():.2f}x, median {s.median():.2f}x")
        by_net = speedups(f, "EP (rotation)").groupby(level="network").max()
        nets = ", ".join(f"{k} {by_net[k]:.2f}x" for k in NETWORKS if k in by_net)
        return (
            "; ".join(parts)
            + f". Max over EP (rotation) per NIC speed: {nets}. Two Mixtral-8x7B-sized MoE layers "
            "on 8 GPUs, Zipf routing; the paper's baselines and testbed are not verified here "
            "(see README): this compares against pairwise-rotation expert parallelism with the "
            "models taking turns."
        )

    return note


SPEEDUP_CLAIMS = (
    ("homogeneous", "in homogeneous clusters", 2.38),
    ("heterogeneous", "in heterogeneous environments", 3.54),
)
"""The abstract's two speedups: cluster kind, its words, the factor."""


def _speedup_claim(kind: str, where: str, paper: float) -> Claim:
    """The paper's speedup ``paper`` reproduces when ours reaches half its gain."""
    bar = 1 + (paper - 1) / 2
    return Claim(
        f"{kind}-{paper:g}x",
        f"Aurora achieves speedups of up to {paper:g}x {where}.",
        f"{paper:g}x",
        measure=speedup_measure(kind),
        expect=at_least(bar),
        expected=f">= {bar:.2f}x (half the paper's gain) over EP (rotation)",
        unit="x",
        experiments=("speedup",),
        note=_speedup_note(kind),
    )


ARTIFACT = Artifact(
    name="aurora",
    paper=Paper(
        title="Optimizing Mixture-of-Experts Inference Time Combining Model Deployment and "
        "Communication Scheduling",
        venue="arXiv 2410.17043 (2024)",
        authors="Jialong Li, Shreyansh Tripathi, Lakshay Rastogi, Yiming Lei, Rui Pan, Yiting Xia",
        url="https://arxiv.org/abs/2410.17043",
    ),
    summary="Per-layer simulation of expert-parallel MoE inference: all-to-all orderings in "
    "incast-free rounds, placement by load and GPU speed, co-location of two models, and the "
    "placement heuristic against an exact ILP (HiGHS), on Zipf and recorded routing.",
    experiments=[
        Experiment(
            "alltoall",
            "one layer's all-to-all under four orderings vs the bound",
            alltoall_points,
            run_alltoall,
            plot_alltoall,
        ),
        Experiment(
            "speedup",
            "two models on 8 GPUs: baselines vs Aurora step by step",
            speedup_points,
            run_speedup,
            plot_speedup,
        ),
        Experiment(
            "optimality",
            "Aurora's placement vs the exact ILP on 4-6 GPUs",
            optimality_points,
            run_optimality,
            plot_optimality,
        ),
        Experiment(
            "recorded",
            "the tiny Mixtral's recorded routing",
            recorded_points,
            run_recorded,
            plot_recorded,
        ),
    ],
    claims=[
        *(_speedup_claim(kind, where, paper) for kind, where, paper in SPEEDUP_CLAIMS),
        Claim(
            "optimal-1.07x",
            "For the NP-hard scenario (heterogeneous GPUs, co-located models) Aurora's "
            "polynomial-time solution is within 1.07x of the optimal.",
            "1.07x",
            measure=colocated_gap,
            expect=at_most(1.07),
            unit="x (worst heuristic / ILP optimum, co-located)",
            experiments=("optimality",),
            note="Our heuristic (load/speed placement then improving swaps) against the exact "
            "ILP of the same layer-time model on 4-6 heterogeneous GPUs; an instance the "
            "solver did not prove within its time limit counts against its dual bound.",
        ),
        Claim(
            "utilization-1.5x",
            "Aurora enhances GPU utilization by up to 1.5x compared to existing methods.",
            "1.5x",
            measure=utilization_gain,
            expect=at_least(1.25),
            expected=">= 1.25x (half the paper's gain) over EP (rotation)",
            unit="x",
            experiments=("speedup",),
            note="Utilization: the mean GPU's expert-compute busy time over the layer time.",
        ),
        Claim(
            "ordering-at-bound",
            "Aurora achieves minimal communication times by ordering token transmissions.",
            "optimal",
            measure=ordering_at_bound,
            expect=at_most(1.0, tolerance=1e-6),
            unit="x the lower bound (worst instance)",
            experiments=("alltoall",),
            note="Our matching schedule; every instance's rounds are also checked by the tests "
            "(matchings, link capacity, every byte delivered).",
        ),
        Claim(
            "recorded-routing",
            "The gains hold on the routing recorded from our tiny Mixtral (not a paper claim).",
            "-",
            measure=recorded_speedup,
            expect=at_least(1.0),
            unit="x (smallest speedup over EP (rotation))",
            experiments=("recorded",),
        ),
    ],
)
