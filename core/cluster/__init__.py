"""Clusters: the global :class:`Router` interface and its baseline policies (round-robin, least
outstanding work, prefix affinity), shared by simulated and real replicas. A paper's own router
(Preble's E2) lives in its artifact and plugs in as a :class:`Router`.

Real multi-replica serving (engine replicas in this process or as Ray actors behind a router)
is :class:`core.cluster.serving.Fleet`; it is not imported here because it imports the engine
(and torch), which the simulator does not need."""

from core.cluster.router import (
    ROUTERS,
    LeastOutstandingWork,
    PrefixAffinity,
    ReplicaView,
    RoundRobin,
    Router,
    RouteRequest,
    make_router,
)

__all__ = [
    "ROUTERS",
    "LeastOutstandingWork",
    "PrefixAffinity",
    "ReplicaView",
    "RoundRobin",
    "RouteRequest",
    "Router",
    "make_router",
]
