"""Parallel execution on torch.distributed: process groups (:mod:`.group`), tensor parallelism
(:mod:`.tp`) and expert parallelism (:mod:`.ep`) of the core's models. Needs torch; the
communication cost model the simulator uses is :mod:`core.sim.network`. See docs/core/dist.md.
"""

from .ep import ExpertParallelMoE, expert_parallel, idle_moe_step
from .group import (
    DEFAULT_TIMEOUT_S,
    CollectiveError,
    Comm,
    LocalGroup,
    RankFailedError,
    init_distributed,
    spawn,
)
from .runner import generate_parallel
from .tp import tensor_parallel

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "CollectiveError",
    "Comm",
    "LocalGroup",
    "RankFailedError",
    "init_distributed",
    "ExpertParallelMoE",
    "expert_parallel",
    "generate_parallel",
    "idle_moe_step",
    "spawn",
    "tensor_parallel",
]
