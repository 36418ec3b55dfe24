"""The hardware, the MoE layer, and the systems compared: baseline expert parallelism with
three all-to-all orderings, and Aurora's ordering, placement and co-location step by step.

Every number here is our assumption (the paper's testbed is not restated in its abstract):
an A100-class and a V100-class GPU at 40% of their dense fp16 peak, NICs of the sweep's
speed (the V100 nodes at half of it), and a Mixtral-8x7B expert (hidden 4096, FFN 14336,
fp16 activations)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.alltoall import (
    fair_share_time,
    matching_schedule,
    random_order_time,
    rotation_schedule,
)

from .placement import (
    Cluster,
    MoELayer,
    colocated_placement,
    colocated_time,
    identity_placement,
    load_speed_placement,
    phases,
)

HIDDEN, FFN = 4096, 14336
BYTES_PER_TOKEN = 2 * HIDDEN  # fp16 hidden state
FLOPS_PER_TOKEN = 2 * 3 * HIDDEN * FFN  # SwiGLU expert: three matmuls
GPUS = {"A100": 0.4 * 312e12, "V100": 0.4 * 125e12}
"""Effective FLOP/s: 40% of the dense fp16 tensor peak."""
NETWORKS = {"10G": 1.25e9, "25G": 3.125e9, "100G": 12.5e9, "200G": 25e9}
"""Per-GPU NIC bytes/s of the sweep."""


def make_cluster(kind: str, gpus: int, network: str) -> Cluster:
    """``homogeneous``: A100s; ``heterogeneous``: half A100s, half V100s whose NICs run at half
    the speed."""
    bw = NETWORKS[network]
    if kind == "homogeneous":
        return Cluster((GPUS["A100"],) * gpus, (bw,) * gpus)
    if kind != "heterogeneous":
        raise ValueError(f"unknown cluster kind {kind!r}")
    fast = gpus // 2
    return Cluster(
        (GPUS["A100"],) * fast + (GPUS["V100"],) * (gpus - fast),
        (bw,) * fast + (bw / 2,) * (gpus - fast),
    )


def layer(routing: np.ndarray) -> MoELayer:
    return MoELayer(routing, BYTES_PER_TOKEN, FLOPS_PER_TOKEN)


Ordering = Callable[[np.ndarray, np.ndarray], float]


ORDERINGS = ("rotation", "random order", "fair share", "Aurora")


def orderings(seed: int) -> dict[str, Ordering]:
    rng = np.random.default_rng(seed)
    return {
        "rotation": lambda d, bw: rotation_schedule(d, bw).time,
        "random order": lambda d, bw: random_order_time(d, bw, rng=rng),
        "fair share": fair_share_time,
        "Aurora": lambda d, bw: matching_schedule(d, bw).time,
    }


@dataclass(frozen=True)
class System:
    """How two models are served on one cluster: each model's placement, the all-to-all
    ordering, and whether they are co-located (overlapped) or take turns."""

    name: str
    placement: str  # identity | load-speed | colocated
    ordering: str
    colocated: bool


SYSTEMS = (
    System("EP (rotation)", "identity", "rotation", False),
    System("EP (random order)", "identity", "random order", False),
    System("EP (fair share)", "identity", "fair share", False),
    System("+ Aurora order", "identity", "Aurora", False),
    System("+ placement", "load-speed", "Aurora", False),
    System("Aurora", "colocated", "Aurora", True),
)
BASELINES = tuple(s.name for s in SYSTEMS[:3])


def evaluate(a: MoELayer, b: MoELayer, cluster: Cluster, seed: int) -> list[dict[str, Any]]:
    """One row per system: the two models' layer time, its phases, and GPU utilization (the
    mean GPU's expert-compute busy time over the layer time)."""
    orders = orderings(seed)
    speed = np.asarray(cluster.speed)
    coloc = colocated_placement(a, b, cluster)
    rows = []
    for s in SYSTEMS:
        if s.placement == "identity":
            places = (
                identity_placement(a.experts, cluster),
                identity_placement(b.experts, cluster),
            )
        elif s.placement == "load-speed":
            places = (
                load_speed_placement(a.routing, cluster),
                load_speed_placement(b.routing, cluster),
            )
        else:
            places = coloc
        pa, pb = (
            phases(m, p, cluster, orders[s.ordering]) for m, p in zip((a, b), places, strict=True)
        )
        total = colocated_time(pa, pb) if s.colocated else pa.alone + pb.alone
        busy = sum(
            float(
                (
                    np.bincount(p, weights=m.routing.sum(axis=0), minlength=cluster.gpus)
                    * m.flops_per_token
                    / speed
                ).sum()
            )
            for m, p in zip((a, b), places, strict=True)
        )
        rows.append(
            {
                "system": s.name,
                "time_ms": total * 1e3,
                "comm_ms": (pa.dispatch + pa.combine + pb.dispatch + pb.combine) * 1e3,
                "compute_ms": (pa.compute + pb.compute) * 1e3,
                "utilization": busy / (cluster.gpus * total),
            }
        )
    return rows


SPEED_KEYS = ("cluster", "network", "skew", "popularity", "rep")
"""What identifies one setting of the speedup sweep (those present in a frame)."""


def speedups(frame: pd.DataFrame, baseline: str) -> pd.Series:
    """Aurora's speedup over ``baseline`` (its layer time over Aurora's) per setting."""
    keys = [k for k in SPEED_KEYS if k in frame]
    t = frame.pivot_table(index=keys, columns="system", values="time_ms")
    return t[baseline] / t["Aurora"]
