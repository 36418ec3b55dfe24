"""The simulator: the engine's scheduler and caches on a virtual clock, a cost model in place of
the forward pass, and clusters of replicas behind a router. Cost models: ``core.sim.cost``
(roofline) and ``core.sim.profiled`` (measured step times of the real engine)."""

from core.sim.profiled import ProfiledCostModel, ProfileError
from core.sim.simulator import (
    ReplicaConfig,
    SimReplica,
    SimResult,
    SimSampling,
    SimulatedRunner,
    Simulator,
    StepCost,
    to_engine_request,
)

__all__ = [
    "ProfileError",
    "ProfiledCostModel",
    "ReplicaConfig",
    "SimReplica",
    "SimResult",
    "SimSampling",
    "SimulatedRunner",
    "Simulator",
    "StepCost",
    "to_engine_request",
]
