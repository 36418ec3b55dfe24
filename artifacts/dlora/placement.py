"""dLoRA's proactive adapter placement and the router that honours it.

:func:`place_adapters` puts every adapter on at least one replica (most popular first, each on
the replica with the least popularity so far), then greedily adds replicas of the adapter whose
*burst tolerance* ``sum_{j hosts k} mem_j / p_k`` is lowest, while replicas have room
(``capacity`` adapters each): popular adapters end up on more replicas.

:class:`AdapterRouter` sends a request only to replicas hosting its adapter: the least loaded
one (outstanding requests; dLoRA's dispatch) or round-robin among them (the paper's baseline
dispatch). The placement is shared with the migration controller, which may change it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from core.cluster.router import ReplicaView, Router, RouteRequest

__all__ = ["AdapterRouter", "Placement", "burst_tolerance", "place_adapters"]

Placement = list[set[str]]
"""Per replica, the adapters it hosts."""


def burst_tolerance(
    placement: Placement, popularity: Mapping[str, float], memory: Sequence[float]
) -> float:
    """``min_k sum_{j hosts k} memory_j / p_k`` over adapters with positive popularity."""
    worst = float("inf")
    for k, p in popularity.items():
        if p > 0:
            worst = min(worst, sum(m for j, m in enumerate(memory) if k in placement[j]) / p)
    return worst


def place_adapters(
    popularity: Mapping[str, float],
    n_replicas: int,
    capacity: int,
    memory: Sequence[float] | None = None,
    *,
    replicate: bool = True,
) -> Placement:
    """Adapters on replicas (see the module docstring); ``memory``: each replica's KV memory
    (default equal); ``replicate=False`` stops after one copy of each. ValueError when the
    adapters do not fit ``n_replicas * capacity``."""
    if n_replicas < 1 or capacity < 1:
        raise ValueError(f"need n_replicas >= 1 and capacity >= 1, got {n_replicas}, {capacity}")
    if len(popularity) > n_replicas * capacity:
        raise ValueError(
            f"{len(popularity)} adapters do not fit {n_replicas} replicas x {capacity} slots"
        )
    mem = list(memory) if memory is not None else [1.0] * n_replicas
    placement: Placement = [set() for _ in range(n_replicas)]
    load = [0.0] * n_replicas
    for k in sorted(popularity, key=lambda k: (-popularity[k], k)):
        j = min(
            (j for j in range(n_replicas) if len(placement[j]) < capacity),
            key=lambda j: (load[j] / mem[j], j),
        )
        placement[j].add(k)
        load[j] += popularity[k]
    if not replicate:
        return placement
    while True:
        # the adapter with the lowest tolerance that still has a replica with room to go to
        best = None
        for k in sorted(popularity, key=lambda k: (-popularity[k], k)):
            hosts = sum(m for j, m in enumerate(mem) if k in placement[j])
            room = [
                j
                for j in range(n_replicas)
                if k not in placement[j] and len(placement[j]) < capacity
            ]
            if room and popularity[k] > 0:
                tol = hosts / popularity[k]
                if best is None or tol < best[0]:
                    best = (tol, k, max(room, key=lambda j: (mem[j], -load[j], -j)))
        if best is None:
            return placement
        _, k, j = best
        placement[j].add(k)
        load[j] += popularity[k] / max(1, sum(k in p for p in placement))


class AdapterRouter(Router):
    """Routes each request to a replica hosting its adapter (``adapter_of[request_id]``; a
    request without one may go anywhere): the fewest outstanding requests (``"least-work"``:
    a dispatcher cannot know how long each request will generate, so it counts requests, not
    tokens) or in turn (``"round-robin"``)."""

    name = "dlora"
    views_only = True

    def __init__(
        self, placement: Placement, adapter_of: Mapping[str, str | None], mode: str = "least-work"
    ) -> None:
        if mode not in ("least-work", "round-robin"):
            raise ValueError(f"mode must be 'least-work' or 'round-robin', got {mode!r}")
        self.placement = placement
        self.adapter_of = adapter_of
        self.mode = mode
        self._turn: dict[str | None, int] = {}

    def route(self, req: RouteRequest, replicas: Sequence[ReplicaView], now: float) -> int:
        k = self.adapter_of.get(req.request_id)
        hosts = [j for j in range(len(replicas)) if k is None or k in self.placement[j]]
        if not hosts:
            raise ValueError(f"request {req.request_id!r}: adapter {k!r} is on no replica")
        if self.mode == "round-robin":
            t = self._turn.get(k, 0)
            self._turn[k] = t + 1
            return hosts[t % len(hosts)]
        return min(hosts, key=lambda j: (replicas[j].outstanding_requests(), j))
