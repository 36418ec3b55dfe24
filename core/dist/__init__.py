"""Parallel execution on torch.distributed: process groups (:mod:`.group`), tensor parallelism
(:mod:`.tp`) and expert parallelism (:mod:`.ep`) of the core's models. Needs torch; the
communication cost model the simulator uses is :mod:`core.sim.network`. See docs/core/dist.md.
"""

from .group import (
    DEFAULT_TIMEOUT_S,
    CollectiveError,
    Comm,
    LocalGroup,
    RankFailedError,
    init_distributed,
    spawn,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "CollectiveError",
    "Comm",
    "LocalGroup",
    "RankFailedError",
    "init_distributed",
    "spawn",
]
