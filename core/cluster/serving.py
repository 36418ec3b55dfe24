"""Real multi-replica serving: one :class:`~core.cluster.router.Router` in front of engine
replicas, fed by a timed request stream; the real counterpart of :class:`core.sim.Simulator`.

``Fleet([spec] * 2, "round-robin", backend="ray").run(workload) -> FleetResult``: the result
has :class:`~core.sim.simulator.SimResult`'s shape (``requests``, ``replica_of``, ``steps``,
``busy_time``, ``makespan``, ``wall_s``), so ``core.metrics`` reads both the same way.
Backends: ``"inprocess"`` (deterministic, not parallel; for tests) and ``"ray"`` (one actor per
replica; a local Ray instance is started and shut down by :meth:`Fleet.close` unless one is
running or ``address`` is given). Every timeline is in seconds since the run started, on the
driver's clock. A dead replica's unreturned requests finish with
``RequestStatus.FINISHED_ERROR`` and ``error == "replica <i> died: <why>"``; ``timeout_s``
bounds a whole run.

Routing, cached Ray views, clock offsets and failure handling in detail: docs/core/cluster.md.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from core.engine.serve import greedy_for
from core.sched.request import EngineRequest
from core.shutdown import keep_handlers, start_local_ray
from core.workload.schema import Request

from .replica import (
    Exchange,
    Replica,
    ReplicaLoad,
    ReplicaServer,
    ReplicaSpec,
    Submission,
    clock,
    failed_request,
)
from .router import ReplicaView, Router, RouteRequest, make_router, notify_finish

__all__ = ["BACKENDS", "Fleet", "FleetResult", "ReplicaSpec", "ReplicaStats"]

BACKENDS = ("inprocess", "ray")


@dataclass
class ReplicaStats:
    """One replica's share of a run: engine steps and their seconds, requests routed to it,
    its clock offset (replica clock - driver clock) and its error bound, why it died."""

    index: int
    steps: int = 0
    busy_s: float = 0.0
    served: int = 0
    clock_offset_s: float = 0.0
    clock_error_s: float = 0.0
    failed: str | None = None


@dataclass
class FleetResult:
    """A run's requests, finished (completed or failed), in workload order, timelines in seconds
    since the run started; the replica that served each (requests failed before routing have
    none); per-replica stats; the replicas dead at the end (index -> why); the last finish
    time; the wall-clock seconds; whether ``timeout_s`` cut the run short."""

    requests: list[EngineRequest]
    replica_of: dict[str, int]
    replicas: list[ReplicaStats]
    makespan: float
    wall_s: float
    failed: dict[int, str] = field(default_factory=dict)
    timed_out: bool = False

    @property
    def steps(self) -> list[int]:
        return [r.steps for r in self.replicas]

    @property
    def busy_time(self) -> list[float]:
        return [r.busy_s for r in self.replicas]

    @property
    def total_steps(self) -> int:
        return sum(self.steps)


@dataclass
class _Update:
    finished: list[tuple[int, EngineRequest]] = field(default_factory=list)  # replica clock
    died: list[tuple[int, str]] = field(default_factory=list)


class _Backend(Protocol):
    offsets: list[float]
    errors: list[float]

    def views(self) -> Sequence[ReplicaView]: ...
    def loads(self) -> list[ReplicaLoad]: ...
    def submit(self, index: int, sub: Submission) -> None: ...
    def advance(self, until: float) -> _Update: ...
    def abort_all(self, message: str) -> None: ...
    def handle(self, index: int) -> Any: ...
    def close(self) -> None: ...


class _InProcess:
    """Replicas in this process, stepped in turn by the driver (see docs/core/cluster.md)."""

    def __init__(self, specs: Sequence[ReplicaSpec]) -> None:
        self.replicas = [Replica(i, s) for i, s in enumerate(specs)]
        self.offsets = [0.0] * len(specs)
        self.errors = [0.0] * len(specs)
        self._reported: set[int] = set()

    def views(self) -> Sequence[ReplicaView]:
        return self.replicas

    def loads(self) -> list[ReplicaLoad]:
        return [r.load() for r in self.replicas]

    def submit(self, index: int, sub: Submission) -> None:
        self.replicas[index].submit([sub])

    def advance(self, until: float) -> _Update:
        upd, worked = _Update(), False
        live = [r for r in self.replicas if r.index not in self._reported]
        for rep in live:
            worked |= rep.has_work()
            upd.finished += [(rep.index, req) for req in rep.pump()]
            if rep.error is not None:
                self._reported.add(rep.index)
                upd.died.append((rep.index, rep.error))
        if not worked:
            wakes = [w for r in live if (w := r.next_wake()) is not None]
            time.sleep(max(0.0, min([until, *wakes]) - clock()))
        return upd

    def abort_all(self, message: str) -> None:
        for rep in self.replicas:
            rep.abort_all(message)

    def handle(self, index: int) -> Replica:
        return self.replicas[index]

    def close(self) -> None:
        pass


class _RemoteReplica:
    """The driver's side of a Ray replica: its actor, clock offset, cached load and the
    submissions it has not acknowledged yet (a :class:`ReplicaView`)."""

    PREFIX_TIMEOUT_S = 10.0

    def __init__(self, index: int, actor: Any, ray: Any) -> None:
        self.index, self.actor, self._ray = index, actor, ray
        self.load = ReplicaLoad()
        self.outbox: list[Submission] = []
        self.in_flight: tuple[Any, list[Submission], float] | None = None  # ref, subs, sent at
        self.next_poll = 0.0
        self.offset = self.error = 0.0

    def sync_clock(self, timeout: float, samples: int = 5) -> None:
        ray = self._ray
        ray.get(self.actor.clock.remote(), timeout=timeout)  # waits for the model to build
        best: tuple[float, float] | None = None
        for _ in range(samples):
            a = clock()
            remote = ray.get(self.actor.clock.remote(), timeout=timeout)
            b = clock()
            if best is None or b - a < best[0]:
                best = (b - a, remote - (a + b) / 2)
        assert best is not None
        self.error, self.offset = best[0] / 2, best[1]

    def _pending(self) -> list[Submission]:
        return self.outbox + (self.in_flight[1] if self.in_flight else [])

    def outstanding_requests(self) -> int:
        return self.load.outstanding_requests + len(self._pending())

    def outstanding_tokens(self) -> int:
        return self.load.outstanding_tokens + sum(s.work_tokens for s in self._pending())

    def cached_prefix(self, token_ids: Sequence[int]) -> int:
        try:
            ref = self.actor.cached_prefix.remote(list(token_ids))
            return int(self._ray.get(ref, timeout=self.PREFIX_TIMEOUT_S))
        except Exception:  # noqa: BLE001 - a dead replica caches nothing; the poll reports it
            return 0

    def send(self, now: float, poll_interval: float) -> None:
        subs, self.outbox = self.outbox, []
        self.in_flight = (self.actor.exchange.remote(subs), subs, now)
        self.next_poll = now + poll_interval


def _describe(exc: BaseException) -> str:
    """A one-line reason from a Ray error (whose text runs over many lines, with ids)."""
    text = re.sub(r"\b(class_name|actor_id|namespace): \S+ ?", "", " ".join(str(exc).split()))
    return f"{type(exc).__name__}: {text[:400]}"


class _Ray:
    """Replicas as Ray actors (see docs/core/cluster.md)."""

    def __init__(
        self,
        specs: Sequence[ReplicaSpec],
        *,
        address: str | None,
        num_cpus_per_replica: float,
        actor_options: Mapping[str, Any],
        init_options: Mapping[str, Any],
        poll_interval_s: float,
        replica_timeout_s: float,
        start_timeout_s: float,
    ) -> None:
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError("backend='ray' needs Ray: pip install -e '.[ray]'") from exc
        self._ray = ray
        self._shutdown: Callable[[], None] | None = None
        self.poll_interval_s, self.replica_timeout_s = poll_interval_s, replica_timeout_s
        self.replicas: list[_RemoteReplica] = []
        self._dead: set[int] = set()
        if not ray.is_initialized():
            opts: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR)
            if address is None:
                # workers must import what this process imports (core, and test modules)
                path = os.pathsep.join(p for p in sys.path if p)
                opts.update(
                    num_cpus=max(1, round(len(specs) * num_cpus_per_replica)),
                    include_dashboard=False,
                    object_store_memory=100 * 2**20,
                    runtime_env={"env_vars": {"PYTHONPATH": path}},
                )
            try:
                if address is None:  # ours: shut down by close(), reaped if we are killed
                    self._shutdown = start_local_ray(ray, **{**opts, **init_options})
                else:
                    ray.init(address=address, **{**opts, **init_options})
                    keep_handlers()  # ray.init replaced SIGTERM's handler
            except Exception as exc:
                raise RuntimeError(f"Ray could not start: {_describe(exc)}") from exc
        starting = "the Ray replicas"
        try:
            cls = ray.remote(ReplicaServer).options(
                num_cpus=num_cpus_per_replica, max_restarts=0, **actor_options
            )
            self.replicas = [_RemoteReplica(i, cls.remote(i, s), ray) for i, s in enumerate(specs)]
            for rep in self.replicas:
                starting = f"replica {rep.index}"
                rep.sync_clock(start_timeout_s)
        except BaseException as exc:  # an interrupt too: stop what started
            self.close()
            if not isinstance(exc, Exception):
                raise
            raise RuntimeError(f"{starting} could not start: {_describe(exc)}") from exc
        self.offsets = [r.offset for r in self.replicas]
        self.errors = [r.error for r in self.replicas]

    def views(self) -> Sequence[ReplicaView]:
        return self.replicas

    def loads(self) -> list[ReplicaLoad]:
        return [r.load for r in self.replicas]

    def submit(self, index: int, sub: Submission) -> None:
        self.replicas[index].outbox.append(sub)

    def advance(self, until: float) -> _Update:
        ray, upd = self._ray, _Update()
        now = clock()
        live = [r for r in self.replicas if r.index not in self._dead]
        for rep in live:
            if rep.in_flight is None and (rep.outbox or now >= rep.next_poll):
                rep.send(now, self.poll_interval_s)
        pending = {rep.in_flight[0]: rep for rep in live if rep.in_flight is not None}
        wake = min([until] + [r.next_poll for r in live if r.in_flight is None])
        timeout = max(0.0, wake - now)
        ready: list[Any] = []
        if pending:
            refs = list(pending)
            ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
            if ready:  # collect every other answer that is also in
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        else:
            time.sleep(timeout)
        for ref in ready:
            rep = pending[ref]
            rep.in_flight = None
            try:
                ex: Exchange = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the actor died (killed, node lost, ...)
                self._died(upd, rep, _describe(exc))
                continue
            rep.load = ex.load
            upd.finished += [(rep.index, req) for req in ex.finished]
            if ex.load.error is not None:
                self._died(upd, rep, ex.load.error)
        now = clock()
        for rep in live:
            if (
                rep.in_flight is not None
                and rep.index not in self._dead
                and now - rep.in_flight[2] > self.replica_timeout_s
            ):
                self._died(upd, rep, f"no answer for {self.replica_timeout_s:g} s")
                ray.kill(rep.actor)
        return upd

    def _died(self, upd: _Update, rep: _RemoteReplica, reason: str) -> None:
        self._dead.add(rep.index)
        rep.in_flight, rep.outbox = None, []
        upd.died.append((rep.index, reason))

    def abort_all(self, message: str) -> None:
        refs = []
        for rep in self.replicas:
            rep.in_flight, rep.outbox = None, []
            if rep.index not in self._dead:
                refs.append(rep.actor.abort_all.remote(message))
        try:
            self._ray.get(refs, timeout=30.0)
        except Exception:  # noqa: BLE001 - best effort: the run is over anyway
            pass

    def handle(self, index: int) -> Any:
        return self.replicas[index].actor

    def close(self) -> None:
        for rep in self.replicas:
            try:
                self._ray.kill(rep.actor)
            except Exception:  # noqa: BLE001 - already dead
                pass
        self.replicas = []
        shutdown, self._shutdown = self._shutdown, None
        if shutdown is not None:
            shutdown()


def _shift(req: EngineRequest, dt: float) -> EngineRequest:
    """Move every time of ``req`` by ``dt`` seconds (one clock to another)."""
    tl = req.timeline
    req.arrival_time += dt
    tl.arrival_time += dt
    if tl.first_scheduled_time is not None:
        tl.first_scheduled_time += dt
    if tl.first_token_time is not None:
        tl.first_token_time += dt
    if tl.finish_time is not None:
        tl.finish_time += dt
    tl.token_times = [t + dt for t in tl.token_times]
    if req.resume_time is not None:
        req.resume_time += dt
    return req


class Fleet:
    """Engine replicas behind one router, serving timed request streams (see docs/core/cluster.md).

    Contract:
    - ``replicas``: one :class:`ReplicaSpec` per replica (``[spec] * n`` for identical ones);
      they are built (and for Ray, started and clock-synced) in the constructor, so
      :meth:`run` measures serving only. Caches stay warm between runs.
    - :meth:`run` returns when every request finished, completed or failed; it never hangs
      on a dead replica, and ``timeout_s`` bounds it.
    - :meth:`close` (or leaving a ``with`` block) stops the replicas and a Ray instance the
      fleet started.
    """

    def __init__(
        self,
        replicas: Sequence[ReplicaSpec],
        router: Router | str = "round-robin",
        *,
        backend: str = "inprocess",
        address: str | None = None,
        num_cpus_per_replica: float = 1.0,
        actor_options: Mapping[str, Any] | None = None,
        ray_init_options: Mapping[str, Any] | None = None,
        poll_interval_s: float = 0.02,
        replica_timeout_s: float = 60.0,
        start_timeout_s: float = 300.0,
    ) -> None:
        if not replicas:
            raise ValueError("a fleet needs at least one replica")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (choose {' or '.join(BACKENDS)})")
        if poll_interval_s <= 0 or replica_timeout_s <= 0:
            raise ValueError("poll_interval_s and replica_timeout_s must be > 0")
        self.router = make_router(router)
        self.backend = backend
        self.failed: dict[int, str] = {}
        self._b: _Backend
        if backend == "inprocess":
            self._b = _InProcess(replicas)
        else:
            self._b = _Ray(
                replicas,
                address=address,
                num_cpus_per_replica=num_cpus_per_replica,
                actor_options=actor_options or {},
                init_options=ray_init_options or {},
                poll_interval_s=poll_interval_s,
                replica_timeout_s=replica_timeout_s,
                start_timeout_s=start_timeout_s,
            )
        self.num_replicas = len(replicas)

    def replica(self, index: int) -> Any:
        """The in-process :class:`~core.cluster.replica.Replica`, or the Ray actor handle."""
        return self._b.handle(index)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._b.close()

    # -- serving --------------------------------------------------------------------------------

    def run(
        self,
        workload: Iterable[Request],
        *,
        time_scale: float = 1.0,
        sampling: Callable[[Request], Any] = greedy_for,
        timeout_s: float | None = 3600.0,
        progress: Callable[[int], Any] | None = None,
    ) -> FleetResult:
        """Serve ``workload`` (requests with ``prompt_token_ids``) open-loop; see docs/core/cluster.md.

        ``time_scale`` multiplies arrival times (0.5 = twice the rate). ``progress(n)`` is
        called as ``n`` requests finish. Raises ValueError naming a request without token ids
        or with a duplicate id, or for a negative ``time_scale``.
        """
        if not time_scale >= 0:
            raise ValueError(f"time_scale={time_scale} must be >= 0")
        reqs = list(workload)
        seen: set[str] = set()
        for r in reqs:
            if r.prompt_token_ids is None:
                raise ValueError(f"request {r.request_id!r} has no prompt_token_ids to serve")
            if r.request_id in seen:
                raise ValueError(f"duplicate request id {r.request_id!r}")
            seen.add(r.request_id)
        return _Run(self, sampling, progress).serve(reqs, time_scale, timeout_s)


@dataclass
class _Sent:
    replica: int
    sub: Submission  # arrival in seconds since the run started


class _Run:
    """One :meth:`Fleet.run`: the driver loop and its bookkeeping."""

    def __init__(
        self,
        fleet: Fleet,
        sampling: Callable[[Request], Any],
        progress: Callable[[int], Any] | None,
    ) -> None:
        self.fleet, self.b, self.router = fleet, fleet._b, fleet.router
        self.sampling, self.progress = sampling, progress
        self.out: dict[str, _Sent] = {}  # routed, not finished
        self.results: dict[str, EngineRequest] = {}
        self.replica_of: dict[str, int] = {}
        self.served = [0] * fleet.num_replicas
        self.t0 = clock()

    def now(self) -> float:
        return clock() - self.t0

    def serve(
        self, reqs: Sequence[Request], time_scale: float, timeout_s: float | None
    ) -> FleetResult:
        b, n = self.b, self.fleet.num_replicas
        given, reqs = reqs, sorted(reqs, key=lambda r: r.arrival_time)
        before = b.loads()
        wall0 = time.perf_counter()
        self.t0 = t0 = clock()
        deadline = None if timeout_s is None else t0 + timeout_s
        i, timed_out = 0, False
        while i < len(reqs) or self.out:
            now = clock()
            if deadline is not None and now >= deadline:
                timed_out = True
                self.give_up(f"fleet timed out after {timeout_s:g} s", reqs[i:], time_scale)
                break
            while i < len(reqs) and t0 + reqs[i].arrival_time * time_scale <= now:
                self.dispatch(reqs[i], reqs[i].arrival_time * time_scale)
                i += 1
            until = t0 + reqs[i].arrival_time * time_scale if i < len(reqs) else now + 0.05
            upd = b.advance(until if deadline is None else min(until, deadline))
            for idx, req in upd.finished:
                if self.out.pop(req.request_id, None) is not None:  # else: from a run given up on
                    self.record(_shift(req, -(b.offsets[idx] + t0)), idx)
            for idx, reason in upd.died:
                self.died(idx, reason)
        after = b.loads()
        failed = self.fleet.failed
        stats = [
            ReplicaStats(
                i,
                after[i].steps - before[i].steps,
                after[i].busy_s - before[i].busy_s,
                self.served[i],
                b.offsets[i],
                b.errors[i],
                failed.get(i),
            )
            for i in range(n)
        ]
        out = [self.results[r.request_id] for r in given]
        finishes = [r.timeline.finish_time for r in out if r.timeline.finish_time is not None]
        return FleetResult(
            out,
            self.replica_of,
            stats,
            max(finishes, default=0.0),
            time.perf_counter() - wall0,
            dict(failed),
            timed_out,
        )

    def submission(self, r: Request, arrival: float) -> Submission:
        return Submission(
            r.request_id,
            list(r.prompt_token_ids or []),
            self.sampling(r),
            arrival,
            tuple(r.interceptions),
        )

    def dispatch(self, r: Request, arrival: float) -> None:
        """Route and send ``r``, arriving ``arrival`` s after the start (see docs/core/cluster.md)."""
        sub = self.submission(r, arrival)
        failed = self.fleet.failed
        live = [v for v in self.b.views() if v.index not in failed]
        if not live:
            dead = "; ".join(f"replica {i} died: {why}" for i, why in sorted(failed.items()))
            self.record(failed_request(sub, f"no live replica ({dead})", self.now()))
            return
        k = self.router.route(
            RouteRequest(
                r.request_id, sub.prompt_token_ids, int(sub.sampling.max_tokens), r.session_id
            ),
            live,
            self.now(),
        )
        if not 0 <= k < len(live):
            raise ValueError(
                f"router {self.router.name!r} chose {k} among {len(live)} live replicas"
            )
        idx = live[k].index
        self.replica_of[r.request_id] = idx
        self.served[idx] += 1
        self.out[r.request_id] = _Sent(idx, sub)
        self.b.submit(idx, replace(sub, arrival_time=self.t0 + arrival + self.b.offsets[idx]))

    def record(self, req: EngineRequest, replica: int | None = None) -> None:
        """``req`` finished (times since the start): keep it, tell the router and progress."""
        self.results[req.request_id] = req
        if replica is not None:
            notify_finish(self.router, replica, req.request_id, self.now(), req.num_output_tokens)
        if self.progress is not None:
            self.progress(1)

    def died(self, idx: int, reason: str) -> None:
        self.fleet.failed[idx] = reason
        message, now = f"replica {idx} died: {reason}", self.now()
        for rid in [rid for rid, s in self.out.items() if s.replica == idx]:
            self.record(failed_request(self.out.pop(rid).sub, message, now), idx)

    def give_up(self, message: str, unsent: Sequence[Request], time_scale: float) -> None:
        self.b.abort_all(message)
        now = self.now()
        for rid in list(self.out):
            sent = self.out.pop(rid)
            self.record(failed_request(sent.sub, message, now), sent.replica)
        for r in unsent:  # never arrived: fail at their arrival time
            sub = self.submission(r, r.arrival_time * time_scale)
            self.record(failed_request(sub, f"{message} before it arrived", sub.arrival_time))
