"""Clusters: the global :class:`Router` interface and its policies (round-robin, least
outstanding work, prefix affinity), shared by simulated and real replicas."""

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
    "ROUTERS", "LeastOutstandingWork", "PrefixAffinity", "ReplicaView", "RoundRobin",
    "RouteRequest", "Router", "make_router",
]
