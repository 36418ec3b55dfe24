"""The simulator: the engine's scheduler and caches on a virtual clock, a cost model in place of
the forward pass, and clusters of replicas behind a router."""

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
    "ReplicaConfig", "SimReplica", "SimResult", "SimSampling", "SimulatedRunner", "Simulator",
    "StepCost", "to_engine_request",
]
