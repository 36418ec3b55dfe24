"""Collective communication cost model: latency + bytes / bandwidth per collective.

A :class:`Link` is what one rank sees of a link: nominal one-way ``bandwidth`` (bytes/s), the
fraction of it a collective achieves (``efficiency``), a ``hop_latency_s`` paid per algorithm
step and a ``launch_s`` paid once per collective. A phase of ``steps`` steps that moves
``volume`` bytes through each rank's link takes ``steps * hop + volume / (bandwidth * eff)``.

Per collective over ``p`` ranks, with ``nbytes`` as each call names it (the alpha-beta model of
Thakur, Rabenseifner and Gropp, and NCCL's bus-bandwidth factors):

==================  ==================================  ==========  ==================
collective          ``nbytes``                          steps       bytes per rank
==================  ==================================  ==========  ==================
``all_reduce``      the tensor (each rank's)            2 (p - 1)   2 (p - 1) / p * n
``all_gather``      the gathered output                 p - 1       (p - 1) / p * n
``reduce_scatter``  the input (before scattering)       p - 1       (p - 1) / p * n
``all_to_all``      what one rank sends, to all ranks   p - 1       (p - 1) / p * n
``broadcast``       the tensor                          p - 1       n (pipelined ring)
``send_recv``       the message (p = 2)                 1           n
==================  ==================================  ==========  ==================

Ranks beyond one node (``p > devices_per_node``, ``g`` ranks per node on ``N`` nodes) use the
hierarchical algorithms NCCL uses: an intra-node phase on ``g`` ranks, the inter-node phase on
``N`` ranks moving ``1/g`` of the data per rank (every rank has its own NIC, as on DGX/HGX
nodes), and for all-reduce a second intra-node phase; all-to-all sends the off-node share over
the inter-node link while the on-node share crosses the intra-node link at the same time.

:func:`vidur_network` fits the intra- and inter-node links of an A100 or H100 DGX node to the
NCCL times Vidur measured (``data/reference/vidur-profiles/network``); :func:`gloo_network` is
the model of torch.distributed's gloo backend on this machine's loopback TCP, fitted by
``python -m scripts.bench collectives``. Imports without torch.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from core.data import data_path, open_data_file

__all__ = [
    "COLLECTIVES",
    "Link",
    "Measurement",
    "NetworkModel",
    "algorithm_factors",
    "fit_link",
    "gloo_network",
    "load_vidur_measurements",
    "network_for",
    "relative_errors",
    "vidur_network",
]

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "reduce_scatter",
    "all_to_all",
    "broadcast",
    "send_recv",
)


def algorithm_factors(collective: str, world: int) -> tuple[int, float]:
    """``(steps, bytes through each rank's link per byte of nbytes)`` of ``collective`` on
    ``world`` ranks of one link (the table in the module doc); ``(0, 0.0)`` for one rank."""
    p = world
    if collective not in COLLECTIVES:
        raise ValueError(f"unknown collective {collective!r}; choose from {', '.join(COLLECTIVES)}")
    if p < 1:
        raise ValueError(f"{collective}: world size must be >= 1, got {p}")
    if p == 1:
        return 0, 0.0
    if collective == "all_reduce":
        return 2 * (p - 1), 2 * (p - 1) / p
    if collective == "broadcast":
        return p - 1, 1.0
    if collective == "send_recv":
        if p != 2:
            raise ValueError(f"send_recv is between 2 ranks, got world={p}")
        return 1, 1.0
    return p - 1, (p - 1) / p


@dataclass(frozen=True)
class Link:
    """One rank's view of a link: nominal one-way ``bandwidth`` (bytes/s), the achieved
    fraction ``efficiency`` of it, ``hop_latency_s`` per algorithm step, ``launch_s`` once per
    collective (seconds). ``collective_efficiency`` and ``collective_launch_s`` override the
    last two for the collectives they name (implementations differ per collective: NCCL's
    all-reduce has a larger fixed cost than its send/recv). ``source`` says where the numbers
    come from."""

    name: str
    bandwidth: float
    hop_latency_s: float
    launch_s: float = 0.0
    efficiency: float = 1.0
    source: str = ""
    collective_efficiency: Mapping[str, float] = field(default_factory=dict)
    collective_launch_s: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        effs = [("efficiency", self.efficiency), *self.collective_efficiency.items()]
        for what, value in [("bandwidth", self.bandwidth), *effs]:
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"link {self.name}: {what} must be positive, got {value!r}")
        launches = [("launch_s", self.launch_s), *self.collective_launch_s.items()]
        for what, value in [("hop_latency_s", self.hop_latency_s), *launches]:
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"link {self.name}: {what} must be >= 0, got {value!r}")
        for c in (*self.collective_efficiency, *self.collective_launch_s):
            if c not in COLLECTIVES:
                raise ValueError(f"link {self.name}: unknown collective {c!r}")

    @property
    def effective_bandwidth(self) -> float:
        """Bytes/s a collective achieves through one rank's link (without overrides)."""
        return self.bandwidth * self.efficiency

    def launch(self, collective: str) -> float:
        """The fixed cost of one ``collective``."""
        return self.collective_launch_s.get(collective, self.launch_s)

    def phase_seconds(self, steps: float, volume: float, collective: str = "") -> float:
        """Seconds of ``steps`` algorithm steps moving ``volume`` bytes through this link
        (without the launch cost), at ``collective``'s efficiency."""
        eff = self.collective_efficiency.get(collective, self.efficiency)
        return steps * self.hop_latency_s + volume / (self.bandwidth * eff)


@dataclass(frozen=True)
class NetworkModel:
    """Seconds of each collective on ``world`` ranks placed ``devices_per_node`` to a node.

    ``intra`` links ranks of a node; ``inter`` (None: single-node only) links nodes. Every
    method returns seconds for one call; one rank returns 0. A world that spans nodes without
    an ``inter`` link raises ValueError.
    """

    intra: Link
    inter: Link | None = None
    devices_per_node: int = 8

    def __post_init__(self) -> None:
        if self.devices_per_node < 1:
            raise ValueError(f"devices_per_node must be >= 1, got {self.devices_per_node}")

    def seconds(self, collective: str, nbytes: float, world: int) -> float:
        """Seconds of one ``collective`` on ``world`` ranks, ``nbytes`` as the module doc
        defines it per collective."""
        if nbytes < 0:
            raise ValueError(f"{collective}: nbytes must be >= 0, got {nbytes}")
        steps, factor = algorithm_factors(collective, world)
        if steps == 0:
            return 0.0
        if collective == "send_recv":
            link = self.intra if self.devices_per_node >= 2 else self._inter(world)
            return link.launch(collective) + link.phase_seconds(1, nbytes, collective)
        if world <= self.devices_per_node:
            intra = self.intra
            return intra.launch(collective) + intra.phase_seconds(
                steps, factor * nbytes, collective
            )
        return self._hierarchical(collective, nbytes, world)

    def send_recv_across_nodes(self, nbytes: float) -> float:
        """Seconds of one message between ranks on two nodes."""
        inter = self._inter(2 * self.devices_per_node)
        return inter.launch("send_recv") + inter.phase_seconds(1, nbytes, "send_recv")

    def _inter(self, world: int) -> Link:
        if self.inter is None:
            raise ValueError(
                f"{world} ranks span nodes of {self.devices_per_node} devices, "
                f"and link {self.intra.name} has no inter-node link"
            )
        return self.inter

    def _hierarchical(self, collective: str, nbytes: float, world: int) -> float:
        g = self.devices_per_node
        if world % g:
            raise ValueError(f"{world} ranks do not fill whole nodes of {g} devices")
        nodes = world // g
        inter, intra, c = self._inter(world), self.intra, collective
        launch = max(intra.launch(c), inter.launch(c))
        if c == "all_to_all":
            # the off-node share on the NIC while the on-node share crosses the intra link
            off = inter.phase_seconds(world - g, nbytes * (world - g) / world, c)
            on = intra.phase_seconds(g - 1, nbytes * (g - 1) / world, c)
            return launch + max(off, on)
        if c == "broadcast":
            steps, factor = algorithm_factors("broadcast", g)
            return (
                launch
                + inter.phase_seconds(nodes - 1, nbytes, c)
                + intra.phase_seconds(steps, factor * nbytes, c)
            )
        # all-reduce = reduce-scatter in the node, all-reduce of 1/g across nodes, all-gather
        # in the node; all-gather / reduce-scatter have one intra phase and the inter phase
        steps, factor = algorithm_factors(c, nodes)
        t_inter = inter.phase_seconds(steps, factor * nbytes / g, c)
        steps, factor = algorithm_factors("all_gather", g)
        t_intra = intra.phase_seconds(steps, factor * nbytes, c)
        intra_phases = 2 if c == "all_reduce" else 1
        return launch + t_inter + intra_phases * t_intra

    # convenience names ------------------------------------------------------------------
    def all_reduce(self, nbytes: float, world: int) -> float:
        return self.seconds("all_reduce", nbytes, world)

    def all_gather(self, nbytes: float, world: int) -> float:
        return self.seconds("all_gather", nbytes, world)

    def reduce_scatter(self, nbytes: float, world: int) -> float:
        return self.seconds("reduce_scatter", nbytes, world)

    def all_to_all(self, nbytes: float, world: int) -> float:
        return self.seconds("all_to_all", nbytes, world)

    def broadcast(self, nbytes: float, world: int) -> float:
        return self.seconds("broadcast", nbytes, world)

    def send_recv(self, nbytes: float) -> float:
        return self.seconds("send_recv", nbytes, 2)


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


class Measurement(NamedTuple):
    """One measured collective: ``seconds`` for ``collective`` of ``nbytes`` on ``world``
    ranks."""

    collective: str
    world: int
    nbytes: float
    seconds: float


def fit_link(base: Link, points: Sequence[Measurement], *, per_collective: bool = False) -> Link:
    """``base`` with ``launch_s``, ``hop_latency_s`` and ``efficiency`` fitted to ``points``
    (all on this one link) by non-negative least squares on the relative error: each point
    says ``t = launch + steps * hop + volume / (bandwidth * eff)``. ``per_collective``: also
    a launch cost and an efficiency of their own for each collective measured (one shared hop
    latency), kept in ``collective_launch_s`` / ``collective_efficiency``."""
    if len(points) < 3:
        raise ValueError(f"fitting link {base.name} needs >= 3 measurements, got {len(points)}")
    t = np.asarray([m.seconds for m in points])
    if np.any(t <= 0):
        raise ValueError(f"fitting link {base.name}: measured times must be positive")
    shared = [[1.0, *_steps_volume(base, m)] for m in points]
    launch, hop, inv_eff = _nnls(np.asarray(shared) / t[:, None], np.ones_like(t))
    if inv_eff <= 0:
        raise ValueError(f"fitting link {base.name}: the times do not grow with the bytes")
    fitted = replace(
        base, launch_s=float(launch), hop_latency_s=float(hop), efficiency=float(1.0 / inv_eff)
    )
    names = sorted({m.collective for m in points})
    if not per_collective or len(names) < 2:
        return fitted
    # columns: [launch_c for each c] + [hop] + [volume_c for each c]
    rows = []
    for m in points:
        steps, volume = _steps_volume(base, m)
        onehot = [float(m.collective == c) for c in names]
        rows.append([*onehot, steps, *(x * volume for x in onehot)])
    x = _nnls(np.asarray(rows) / t[:, None], np.ones_like(t))
    k = len(names)
    inv = dict(zip(names, x[k + 1 :], strict=True))
    if any(v <= 0 for v in inv.values()):
        return fitted  # a collective whose times do not grow with bytes: keep the shared fit
    return replace(
        fitted,
        hop_latency_s=float(x[k]),
        collective_launch_s={c: float(v) for c, v in zip(names, x[:k], strict=True)},
        collective_efficiency={c: float(1.0 / v) for c, v in inv.items()},
    )


def _steps_volume(base: Link, m: Measurement) -> tuple[float, float]:
    """A measurement's algorithm steps and volume in units of ``1 / base.bandwidth`` s."""
    steps, factor = algorithm_factors(m.collective, m.world)
    return float(steps), factor * m.nbytes / base.bandwidth


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min ||a x - b|| with x >= 0: the active-set method over the few columns here (drop the
    most negative coefficient and solve again)."""
    active = list(range(a.shape[1]))
    while True:
        x = np.zeros(a.shape[1])
        x[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
        negative = [i for i in active if x[i] < 0]
        if not negative:
            return x
        active.remove(min(negative, key=lambda i: x[i]))


VIDUR_NODES = {"a100-80g": "a100_dgx", "h100-sxm": "h100_dgx"}
"""Our hardware name -> Vidur's network-profile folder."""


def load_vidur_measurements(node: str) -> list[tuple[Measurement, int]]:
    """Vidur's NCCL measurements of ``node`` (a key of :data:`VIDUR_NODES`): (the median of
    its repeats in seconds, devices per node of the run) for every all-reduce and send/recv
    row; ``size`` is bytes, times are ms in the files."""
    if node not in VIDUR_NODES:
        raise ValueError(f"no Vidur network profile for {node!r}; known: {', '.join(VIDUR_NODES)}")
    out = []
    for collective in ("all_reduce", "send_recv"):
        path = data_path("reference", "vidur-profiles", "network", VIDUR_NODES[node])
        path = path / f"{collective}.csv"
        with open_data_file(path) as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    ms = float(row[f"time_stats.{collective}.median"])
                    m = Measurement(
                        collective, int(row["num_workers"]), float(row["size"]), ms / 1e3
                    )
                    per_node = int(row["devices_per_node"])
                except (KeyError, ValueError) as e:
                    raise ValueError(f"{path}:{line}: malformed row ({e})") from e
                out.append((m, per_node))
    return out


@functools.cache
def vidur_network(node: str) -> NetworkModel:
    """The :class:`NetworkModel` of an 8-GPU ``node`` (``"a100-80g"`` or ``"h100-sxm"``):
    the datasheet links of :mod:`core.sim.hardware`, their launch, hop and efficiency fitted to
    Vidur's NCCL times; the intra-node link on single-node runs, the inter-node link on
    two-node send/recv and all-reduce over one GPU per node."""
    from core.sim.hardware import get_hardware

    hw = get_hardware(node)
    rows = load_vidur_measurements(node)
    intra_pts = [m for m, g in rows if g == m.world]
    inter_pts = [m for m, g in rows if g == 1]
    src = "fitted to Vidur's NCCL measurements (data/reference/vidur-profiles/network)"
    intra_base = Link(hw.link, hw.link_bandwidth, hw.link_latency_s, source=src)
    intra = fit_link(intra_base, intra_pts, per_collective=True)
    assert hw.internode_bandwidth is not None and hw.internode_latency_s is not None
    inter_base = Link("infiniband", hw.internode_bandwidth, hw.internode_latency_s, source=src)
    inter = fit_link(inter_base, inter_pts, per_collective=True)
    return NetworkModel(intra, inter, hw.devices_per_node)


# gloo over loopback TCP between 2 processes of this 2-core machine (one torch thread each),
# fitted per collective by `python -m scripts.bench collectives --fit`: all-reduce, all-gather,
# all-to-all and broadcast of 4 KiB-16 MiB fp32, the fastest of 5 rounds of 10 calls, on the
# machine otherwise idle (load average 0.3; docs/core/dist.md has the table). The bandwidth is
# a nominal loopback rate held fixed by the fit; each collective's efficiency scales it (the
# one-way broadcast stream beats it, the others achieve a fraction).
GLOO_LOOPBACK = Link(
    "gloo-loopback",
    bandwidth=3.65e9,
    hop_latency_s=77e-6,
    launch_s=116e-6,
    efficiency=0.96,
    source="gloo on loopback TCP, 2 local processes, measured here",
    collective_efficiency={
        "all_reduce": 0.361,
        "all_gather": 0.252,
        "all_to_all": 0.463,
        "broadcast": 1.45,
    },
    collective_launch_s={
        "all_reduce": 0.0,
        "all_gather": 127e-6,
        "all_to_all": 63e-6,
        "broadcast": 42e-6,
    },
)


def gloo_network(link: Link = GLOO_LOOPBACK) -> NetworkModel:
    """gloo's collectives between processes of one machine (all on one link)."""
    return NetworkModel(link, None, devices_per_node=1 << 16)


def network_for(name: str) -> NetworkModel:
    """The network of ``name``: ``"gloo"``, or a GPU with Vidur data (``"a100-80g"``,
    ``"h100-sxm"``; A100-40GB uses the A100-80GB fit, H200 the H100's: same links)."""
    aliases = {"a100-40g": "a100-80g", "h200": "h100-sxm"}
    if name == "gloo":
        return gloo_network()
    node = aliases.get(name, name)
    if node not in VIDUR_NODES:
        known = ", ".join(["gloo", *VIDUR_NODES, *aliases])
        raise ValueError(f"no network model for {name!r}; known: {known}")
    return vidur_network(node)


def relative_errors(model: NetworkModel, points: Iterable[Measurement]) -> list[float]:
    """``model / measured - 1`` for each point."""
    return [model.seconds(m.collective, m.nbytes, m.world) / m.seconds - 1 for m in points]
