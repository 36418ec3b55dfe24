"""Global routers: which replica serves a request.

The same :class:`Router` objects route to simulated replicas (``core.sim``) and to real engine
replicas; a router sees replicas only through :class:`ReplicaView`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from core.sched.registry import resolve


@dataclass(frozen=True)
class RouteRequest:
    """What a router knows of a request when it arrives."""

    request_id: str
    token_ids: Sequence[int]
    max_tokens: int
    session_id: str | None = None


class ReplicaView(Protocol):
    """A replica as routers see it (a simulated replica or a real engine replica).

    - ``outstanding_requests``: admitted and not finished (waiting, running, paused, swapped);
    - ``outstanding_tokens``: tokens it still has to compute for them (uncomputed prompt and
      context tokens plus remaining output tokens): its queue of work;
    - ``cached_prefix(token_ids)``: tokens of that prompt its prefix cache holds now (read-only).
    """

    index: int

    def outstanding_requests(self) -> int: ...

    def outstanding_tokens(self) -> int: ...

    def cached_prefix(self, token_ids: Sequence[int]) -> int: ...


class Router(ABC):
    """Chooses a replica index for each arriving request.

    Contract: ``route`` is deterministic given the request, the replicas' observable state and
    the router's own state; it returns an index into ``replicas``. ``on_finish`` lets stateful
    routers track completions (default: nothing); callers may pass the request's number of
    generated tokens as ``output_tokens`` (None when unknown).
    """

    name = "router"
    views_only = False
    """True when ``route`` reads replicas only through the :class:`ReplicaView` methods (the
    simulator may then bring a replica up to date only when a method is called)."""

    @abstractmethod
    def route(self, req: RouteRequest, replicas: Sequence[ReplicaView], now: float) -> int: ...

    def on_finish(  # noqa: B027
        self,
        replica: int,
        request_id: str,
        now: float,
        *,
        output_tokens: int | None = None,
    ) -> None:
        pass


class RoundRobin(Router):
    """Replicas in turn, ignoring load and caches."""

    name = "round-robin"
    views_only = True

    def __init__(self) -> None:
        self._next = 0

    def route(self, req: RouteRequest, replicas: Sequence[ReplicaView], now: float) -> int:
        i = self._next % len(replicas)
        self._next += 1
        return i


class LeastOutstandingWork(Router):
    """The replica with the fewest outstanding tokens (ties: fewer requests, lower index)."""

    name = "least-work"
    views_only = True

    def route(self, req: RouteRequest, replicas: Sequence[ReplicaView], now: float) -> int:
        return min(
            range(len(replicas)),
            key=lambda i: (replicas[i].outstanding_tokens(), replicas[i].outstanding_requests(), i),
        )


class PrefixAffinity(Router):
    """The replica caching the longest prefix of the prompt; least work when no replica caches
    at least ``min_fraction`` of it (then the cache cannot pay for an imbalance).

    Ties between equal matches go to the least-loaded replica. Pure prefix affinity is one of
    Preble's baselines; it piles a popular prefix onto one replica.
    """

    name = "prefix-affinity"
    views_only = True

    def __init__(self, min_fraction: float = 0.0) -> None:
        if not 0.0 <= min_fraction <= 1.0:
            raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
        self.min_fraction = min_fraction
        self._fallback = LeastOutstandingWork()

    def route(self, req: RouteRequest, replicas: Sequence[ReplicaView], now: float) -> int:
        matches = [r.cached_prefix(req.token_ids) for r in replicas]
        best = max(matches)
        if best == 0 or best < self.min_fraction * len(req.token_ids):
            return self._fallback.route(req, replicas, now)
        return min(
            (i for i, m in enumerate(matches) if m == best),
            key=lambda i: (replicas[i].outstanding_tokens(), i),
        )


# Routers by name for make_router; a router defined elsewhere (an artifact's) may add itself.
ROUTERS: dict[str, type[Router]] = {
    "round-robin": RoundRobin,
    "least-work": LeastOutstandingWork,
    "prefix-affinity": PrefixAffinity,
}


def make_router(name: str | Router) -> Router:
    """A router given as itself, by registered name, or by import path ``module:Class`` (a
    router that no import registered, e.g. one of a paper's); ValueError naming what failed."""
    if isinstance(name, Router):
        return name
    router = resolve(ROUTERS, "router", name)()
    if not isinstance(router, Router):
        raise ValueError(f"router {name!r} made a {type(router).__name__}, not a Router")
    return router


def notify_finish(
    router: Router, replica: int, request_id: str, now: float, output_tokens: int
) -> None:
    """``router.on_finish`` with ``output_tokens`` when its signature takes it; routers written
    before that argument existed keep the old three-argument call."""
    try:
        params = dict(inspect.signature(router.on_finish).parameters)
    except (TypeError, ValueError):
        params = {}
    if "output_tokens" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    ):
        router.on_finish(replica, request_id, now, output_tokens=output_tokens)
    else:
        router.on_finish(replica, request_id, now)
