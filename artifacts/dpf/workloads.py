"""The DPF microbenchmark workloads (the authors' evaluation/microbenchmark scripts), seeded.

- single block: one block of budget epsilon_G = 1 at t = 0; pipelines arrive as a Poisson
  process (1/s); 75% "mice" demand 0.01, 25% "elephants" 0.1; timeout 300 s; the run lasts
  100 * 2.25 * 1.05 s (the authors' duration).
- multiple blocks: a new block every 10 s; pipelines at 12.8/s (mean gap 0.078125 s); epsilon
  mice/elephant drawn as above and, independently, the blocks: the latest one (p = 0.75) or
  the last 10 (p = 0.25); timeout 3 * 5 * 100 * gap; the run lasts 30 blocks (300 s).
- the Renyi comparison runs the multi-block shape at the authors' heavy rate (mean gap
  0.004264781 s, 234/s) with a timeout of 3 * 5 * 100 * gap.

Renyi DP: a block is (1, 1e-6)-DP, converted to RDP budgets per order; a pipeline's epsilon is
a Gaussian mechanism calibrated to (epsilon, 1e-9)-DP (the authors' constants).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.jobsim import RDP_ORDERS, BlockArrival, Pipeline, gaussian_rdp_demand, rdp_capacity

MICE_EPS, ELEPHANT_EPS = 0.01, 0.1
BLOCK_DELTA, PIPELINE_DELTA = 1e-6, 1e-9
SINGLE_GAP_S = 1.0
SINGLE_DURATION_S = 100 * 2.25 * 1.05
SINGLE_TIMEOUT_S = 300.0
MULTI_GAP_S = 0.078125
HEAVY_GAP_S = 0.004264781
BLOCK_EVERY_S = 10.0
ELEPHANT_BLOCKS = 10


@dataclass(frozen=True)
class DpfWorkload:
    """Blocks, pipelines, and how long the run lasts."""

    blocks: list[BlockArrival]
    pipelines: list[Pipeline]
    until: float


def _accounting(renyi: bool) -> tuple[tuple[float, ...], dict[float, tuple[float, ...]]]:
    if renyi:
        cap = rdp_capacity(1.0, BLOCK_DELTA, RDP_ORDERS)
        dem = {
            e: gaussian_rdp_demand(e, PIPELINE_DELTA, RDP_ORDERS) for e in (MICE_EPS, ELEPHANT_EPS)
        }
        return cap, dem
    return (1.0,), {MICE_EPS: (MICE_EPS,), ELEPHANT_EPS: (ELEPHANT_EPS,)}


def _arrivals(rng: np.random.Generator, gap: float, until: float) -> np.ndarray:
    n = int(until / gap * 1.5) + 50
    t = np.cumsum(rng.exponential(gap, size=n))
    while t[-1] <= until:  # astronomically rare; keep the process exact
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(gap, size=n))])
    return t[t <= until]


def single_block(seed: int, *, mice: float = 0.75, renyi: bool = False) -> DpfWorkload:
    rng = np.random.default_rng(seed)
    cap, dem = _accounting(renyi)
    times = _arrivals(rng, SINGLE_GAP_S, SINGLE_DURATION_S)
    is_mouse = rng.random(len(times)) < mice
    pipes = [
        Pipeline(
            i,
            float(t),
            (0,),
            dem[MICE_EPS if m else ELEPHANT_EPS],
            SINGLE_TIMEOUT_S,
            "mice" if m else "elephant",
        )
        for i, (t, m) in enumerate(zip(times, is_mouse, strict=True))
    ]
    return DpfWorkload([BlockArrival(0, 0.0, cap)], pipes, SINGLE_DURATION_S)


def multi_block(
    seed: int,
    *,
    blocks: int = 30,
    gap: float = MULTI_GAP_S,
    mice: float = 0.75,
    renyi: bool = False,
) -> DpfWorkload:
    rng = np.random.default_rng(seed)
    cap, dem = _accounting(renyi)
    until = blocks * BLOCK_EVERY_S
    arrivals = [BlockArrival(j, j * BLOCK_EVERY_S, cap) for j in range(blocks)]
    times = _arrivals(rng, gap, until)
    small_eps = rng.random(len(times)) < mice
    one_block = rng.random(len(times)) < mice
    timeout = 3 * 5 * 100 * gap
    pipes = []
    for i, (t, se, ob) in enumerate(zip(times, small_eps, one_block, strict=True)):
        latest = min(int(math.floor(t / BLOCK_EVERY_S)), blocks - 1)
        first = latest if ob else max(0, latest - ELEPHANT_BLOCKS + 1)
        eps = MICE_EPS if se else ELEPHANT_EPS
        label = "mice" if se and ob else ("elephant" if not se and not ob else "mixed")
        pipes.append(
            Pipeline(i, float(t), tuple(range(first, latest + 1)), dem[eps], timeout, label)
        )
    return DpfWorkload(arrivals, pipes, until)
