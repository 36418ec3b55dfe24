"""Expert placement and the time of an MoE layer on a (possibly heterogeneous) cluster.

The layer model (synchronous expert parallelism): the dispatch all-to-all, then every GPU
computes the tokens of its experts, then the combine all-to-all (the dispatch's transpose).
Nothing of a phase starts before the previous phase finished on every GPU.

- one model alone: ``dispatch + compute + combine``;
- two models *co-located* (each GPU holds experts of both) alternate so that one model's
  all-to-all overlaps the other's compute: ``dA, (cA | dB), (rA | cB), rB``, i.e.
  ``dA + max(cA, dB) + max(rA, cB) + rB`` (the network and the GPUs each do one thing at a
  time; the order B-first gives the same sum when combine equals dispatch time);
- two models *time-shared* on the same GPUs without overlap: the sum of their times alone.

An all-to-all takes the time of the chosen ordering (:mod:`.rounds`); Aurora's takes
exactly the lower bound. Placements: :func:`identity_placement` (expert ``e`` on GPU
``e mod n``, the usual expert parallelism) and :func:`load_speed_placement` (heaviest expert
first, each to the GPU where it would finish earliest: heavy experts on fast GPUs).
:func:`colocated_placement` improves both models' load/speed placements by pairwise swaps on
the co-located time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.alltoall.rounds import lower_bound
from core.alltoall.traffic import (
    Placement,
    check_placement,
    check_routing,
    dispatch_bytes,
    expert_loads,
)

Ordering = Callable[[np.ndarray, np.ndarray], float]
"""An all-to-all ordering's completion time given (traffic bytes, bandwidths)."""


@dataclass(frozen=True)
class Cluster:
    """``speed[g]`` FLOP/s and ``bandwidth[g]`` bytes/s of GPU ``g``; ``slots`` experts of one
    model per GPU (experts = GPUs x slots)."""

    speed: tuple[float, ...]
    bandwidth: tuple[float, ...]
    slots: int = 1

    def __post_init__(self) -> None:
        if len(self.speed) != len(self.bandwidth) or not self.speed:
            raise ValueError("a cluster needs one speed and one bandwidth per GPU")
        if min(self.speed) <= 0 or min(self.bandwidth) <= 0 or self.slots < 1:
            raise ValueError("speeds, bandwidths and slots must be > 0")

    @property
    def gpus(self) -> int:
        return len(self.speed)


@dataclass(frozen=True)
class MoELayer:
    """One MoE layer's routing ``[sources, experts]`` (sources are GPUs ``0..``), the bytes a
    token's hidden state takes on the wire, and the FLOPs of one token in one expert."""

    routing: np.ndarray
    bytes_per_token: float
    flops_per_token: float

    @property
    def experts(self) -> int:
        return int(self.routing.shape[1])


@dataclass(frozen=True)
class Phases:
    """A model's three phase times (s) under one placement and ordering."""

    dispatch: float
    compute: float
    combine: float

    @property
    def alone(self) -> float:
        return self.dispatch + self.compute + self.combine


def compute_time(layer: MoELayer, placement: Placement, cluster: Cluster) -> float:
    """The slowest GPU's expert compute: ``max_g sum_{e on g} load_e * flops / speed_g``."""
    p = check_placement(placement, layer.experts, cluster.gpus)
    work = np.bincount(p, weights=expert_loads(layer.routing), minlength=cluster.gpus)
    return float((work * layer.flops_per_token / np.asarray(cluster.speed)).max())


def phases(
    layer: MoELayer, placement: Placement, cluster: Cluster, ordering: Ordering = lower_bound
) -> Phases:
    d = dispatch_bytes(layer.routing, placement, cluster.gpus, layer.bytes_per_token)
    bw = np.asarray(cluster.bandwidth)
    return Phases(ordering(d, bw), compute_time(layer, placement, cluster), ordering(d.T, bw))


def colocated_time(a: Phases, b: Phases) -> float:
    """Two co-located models, one's all-to-all overlapping the other's compute."""
    return a.dispatch + max(a.compute, b.dispatch) + max(a.combine, b.compute) + b.combine


def identity_placement(experts: int, cluster: Cluster) -> np.ndarray:
    """Expert ``e`` on GPU ``e mod n``."""
    _check_fits(experts, cluster)
    return np.arange(experts) % cluster.gpus


def load_speed_placement(routing: np.ndarray, cluster: Cluster) -> np.ndarray:
    """Heaviest expert first, each to the GPU with a free slot where its compute would end
    earliest (``(work_g + load_e) / speed_g``; ties to the faster port, then lower index).
    With one slot per GPU: the heaviest expert on the fastest GPU, and so on down."""
    loads = expert_loads(routing)
    _check_fits(len(loads), cluster)
    speed, bw = np.asarray(cluster.speed), np.asarray(cluster.bandwidth)
    work = np.zeros(cluster.gpus)
    free = np.full(cluster.gpus, cluster.slots)
    out = np.empty(len(loads), dtype=int)
    for e in sorted(range(len(loads)), key=lambda e: (-loads[e], e)):
        cands = [g for g in range(cluster.gpus) if free[g] > 0]
        g = min(cands, key=lambda g: ((work[g] + loads[e]) / speed[g], -bw[g], g))
        out[e], work[g], free[g] = g, work[g] + loads[e], free[g] - 1
    return out


def colocated_placement(
    a: MoELayer, b: MoELayer, cluster: Cluster, *, max_passes: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Placements of two co-located models: each model's :func:`load_speed_placement`, then
    swaps of two experts of one model between GPUs while a swap lowers the co-located time
    (all-to-alls at their lower bound); polynomial: at most ``max_passes`` passes of
    ``O(experts^2)`` swaps."""
    pa, pb = load_speed_placement(a.routing, cluster), load_speed_placement(b.routing, cluster)
    best = colocated_time(phases(a, pa, cluster), phases(b, pb, cluster))
    for _ in range(max_passes):
        improved = False
        for p in (pa, pb):
            for i in range(len(p)):
                for j in range(i + 1, len(p)):
                    if p[i] == p[j]:
                        continue
                    p[i], p[j] = p[j], p[i]
                    t = colocated_time(phases(a, pa, cluster), phases(b, pb, cluster))
                    if t < best * (1 - 1e-9):
                        best, improved = t, True
                    else:
                        p[i], p[j] = p[j], p[i]
        if not improved:
            break
    return pa, pb


def _check_fits(experts: int, cluster: Cluster) -> None:
    if experts != cluster.gpus * cluster.slots:
        raise ValueError(
            f"{experts} experts do not fill {cluster.gpus} GPUs x {cluster.slots} slots"
        )


def check_layer(layer: MoELayer, cluster: Cluster) -> None:
    """ValueError when the layer's routing does not fit the cluster."""
    r = check_routing(layer.routing)
    if r.shape[0] > cluster.gpus:
        raise ValueError(f"routing has {r.shape[0]} sources for {cluster.gpus} GPUs")
    _check_fits(r.shape[1], cluster)
