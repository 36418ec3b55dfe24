"""Clusters: the global :class:`Router` interface and its policies (round-robin, least
outstanding work, prefix affinity, Preble's E2 with its global prefix tree), shared by
simulated and real replicas.

Real multi-replica serving (engine replicas in this process or as Ray actors behind a router)
is :class:`core.cluster.serving.Fleet`; it is not imported here because it imports the engine
(and torch), which the simulator does not need."""

from core.cluster.preble import (
    PREBLE_A6000_CAPACITY_TOKENS,
    E2Costs,
    E2Decision,
    E2Router,
    Move,
    PrefillCost,
    preble_mistral7b_a6000_ms,
)
from core.cluster.prefix_tree import GlobalPrefixTree, PrefixMatch, PrefixNode, WindowStats
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
    "PREBLE_A6000_CAPACITY_TOKENS", "ROUTERS", "E2Costs", "E2Decision", "E2Router",
    "GlobalPrefixTree", "LeastOutstandingWork", "Move", "PrefillCost", "PrefixAffinity",
    "PrefixMatch", "PrefixNode", "ReplicaView", "RoundRobin", "RouteRequest", "Router",
    "WindowStats", "make_router", "preble_mistral7b_a6000_ms",
]
