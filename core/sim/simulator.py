"""The simulator: the engine's scheduler and caches on a virtual clock, with a cost model in
place of the forward pass.

Each :class:`SimReplica` is exactly what a real replica runs (``Scheduler`` + ``KVBackend``
from ``core.sched``/``core.kv``), driven by :class:`SimulatedRunner`. :class:`Simulator` is a
discrete-event loop over request arrivals, replica step completions and tool-call returns,
with a global :class:`~core.cluster.Router` choosing replicas. No policy is re-implemented
here: only time is.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.cluster.router import Router, RouteRequest, make_router
from core.kv.backend import KVBackend, PagedKVBackend, RadixKVBackend
from core.kv.policies import AdmissionPolicy, EvictionPolicy
from core.sched.request import EngineRequest
from core.sched.runner import StepResult
from core.sched.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from core.workload.schema import Request, Workload


class StepCost(Protocol):
    """A cost model: seconds one scheduler step takes (see ``core.sim.cost``)."""

    def step_time_for(self, out: SchedulerOutput) -> float: ...


@dataclass(frozen=True)
class SimSampling:
    """Sampling for simulated requests: a fixed number of tokens, optionally the reference
    response (so a session's next turn finds this turn's output in the prefix cache)."""

    max_tokens: int
    reference: tuple[int, ...] | None = None
    ignore_eos: bool = True
    stop_token_ids: tuple[int, ...] = ()
    min_tokens: int = 0


FILLER_TOKEN = 0


class SimulatedRunner:
    """A runner whose "forward" is a cost model: returns the step's time and the reference
    tokens of the requests that sample."""

    def __init__(self, cost: StepCost) -> None:
        self.cost = cost

    def execute(self, out: SchedulerOutput) -> StepResult:
        sampled: dict[str, int] = {}
        for c in out.chunks:
            if c.sample:
                req = c.request
                ref = getattr(req.sampling, "reference", None)
                k = req.num_output_tokens
                sampled[req.request_id] = ref[k] if ref is not None and k < len(ref) else FILLER_TOKEN
        return StepResult(sampled=sampled, forward_s=self.cost.step_time_for(out))


@dataclass
class ReplicaConfig:
    """One replica: its cost model, KV memory and batching limits.

    ``prefix_cache``: ``"block"`` (vLLM hashing), ``"radix"`` (needed for hybrids and for
    Marconi/Preble policies) or ``"none"``.
    """

    cost: StepCost
    num_kv_blocks: int
    block_size: int = 16
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    prefix_cache: str = "block"
    queue_policy: Any = "fcfs"
    hybrid: bool = False
    num_state_slots: int = 0
    kv_bytes_per_token: int = 0
    ssm_state_bytes: int = 0
    num_host_blocks: int = 0
    eviction: EvictionPolicy | None = None
    admission: AdmissionPolicy | None = None

    def make_backend(self) -> KVBackend:
        if self.prefix_cache == "radix" or self.hybrid:
            return RadixKVBackend(
                self.num_kv_blocks, self.block_size, hybrid=self.hybrid,
                num_state_slots=self.num_state_slots, kv_bytes_per_token=self.kv_bytes_per_token,
                ssm_state_bytes=self.ssm_state_bytes, eviction=self.eviction,
                admission=self.admission, enable_prefix_caching=self.prefix_cache != "none")
        if self.prefix_cache not in ("block", "none"):
            raise ValueError(f"prefix_cache must be 'block', 'radix' or 'none', got {self.prefix_cache!r}")
        return PagedKVBackend(self.num_kv_blocks, self.block_size,
                              enable_prefix_caching=self.prefix_cache == "block",
                              kv_bytes_per_token=self.kv_bytes_per_token,
                              num_host_blocks=self.num_host_blocks)


class SimReplica:
    """A replica in virtual time: a real :class:`Scheduler` and KV backend, a simulated runner."""

    def __init__(self, index: int, config: ReplicaConfig) -> None:
        self.index = index
        self.config = config
        self.scheduler = Scheduler(config.scheduler, config.make_backend(), config.queue_policy)
        self.runner = SimulatedRunner(config.cost)
        self.busy_until: float | None = None  # end of the step in flight
        self.in_flight: tuple[SchedulerOutput, dict[str, int]] | None = None
        self.steps = 0
        self.busy_time = 0.0
        self._outstanding_tokens = 0

    # -- ReplicaView ----------------------------------------------------------------------------

    def outstanding_requests(self) -> int:
        s = self.scheduler
        return len(s.waiting) + len(s.running) + len(s.swapped) + len(s.paused)

    def outstanding_tokens(self) -> int:
        s = self.scheduler
        total = 0
        for q in (s.waiting, s.running, s.swapped, s.paused):
            for r in q:
                total += r.num_uncomputed_tokens + r.max_tokens - r.num_output_tokens
        return total

    def cached_prefix(self, token_ids: Sequence[int]) -> int:
        return self.scheduler.kv.peek_prefix(token_ids)

    # -- stepping -------------------------------------------------------------------------------

    def start_step(self, now: float) -> float | None:
        """Schedule a step at ``now``; its end time, or None when there is nothing to run."""
        out = self.scheduler.schedule(now)
        if out.is_empty:
            self.in_flight = None
            return None
        result = self.runner.execute(out)
        dt = result.forward_s
        self.in_flight = (out, result.sampled)
        self.busy_until = now + dt
        self.steps += 1
        self.busy_time += dt
        return self.busy_until

    def finish_step(self) -> list[EngineRequest]:
        assert self.in_flight is not None and self.busy_until is not None
        out, sampled = self.in_flight
        now = self.busy_until
        self.in_flight, self.busy_until = None, None
        return self.scheduler.update(out, sampled, now)


@dataclass
class SimResult:
    """A simulation's requests (with timelines and the replica that served each), per-replica
    step counts and busy time, the simulated makespan and the wall-clock time it took."""

    requests: list[EngineRequest]
    replica_of: dict[str, int]
    steps: list[int]
    busy_time: list[float]
    makespan: float
    wall_s: float

    @property
    def total_steps(self) -> int:
        return sum(self.steps)


# event kinds, in the order they are handled at equal times: an arrival at t joins before the
# step scheduled at t, as in the real engine (which admits every request with arrival <= now)
_ARRIVAL, _STEP_DONE, _WAKE = 0, 1, 2


def to_engine_request(req: Request, index: int) -> EngineRequest:
    """The engine-side request for a workload request. Prompts without token ids get
    content no other request shares (so they never hit a prefix cache by accident)."""
    if req.prompt_token_ids is not None:
        ids = list(req.prompt_token_ids)
    elif req.block_hashes is not None and req.block_size:
        from core.workload.mooncake import expand_block_tokens

        ids = expand_block_tokens(req.block_hashes, req.prompt_len, req.block_size)
    else:
        ids = [1_000_000 + index] * req.prompt_len
    ref = tuple(req.output_token_ids) if req.output_token_ids is not None else None
    return EngineRequest(
        request_id=req.request_id, prompt_token_ids=ids,
        sampling=SimSampling(max_tokens=max(1, req.output_len), reference=ref),
        arrival_time=req.arrival_time, interceptions=list(req.interceptions),
    )


class Simulator:
    """Replays requests through simulated replicas behind a router, in virtual time.

    ``sessions="open"`` uses every request's ``arrival_time``; ``"closed"`` sends a session's
    first turn at its arrival time and each later turn ``think_time_s`` after the previous
    turn finished (a user waits for the answer). Deterministic: ties are broken by event kind,
    then by insertion order.
    """

    def __init__(self, replicas: Sequence[ReplicaConfig], router: Router | str = "round-robin",
                 ) -> None:
        if not replicas:
            raise ValueError("a simulation needs at least one replica")
        self.replicas = [SimReplica(i, c) for i, c in enumerate(replicas)]
        self.router = make_router(router)

    def run(self, workload: Workload | Iterable[Request], *, sessions: str = "open",
            progress: Callable[[int], Any] | None = None) -> SimResult:
        if sessions not in ("open", "closed"):
            raise ValueError(f"sessions must be 'open' or 'closed', got {sessions!r}")
        wall0 = time.perf_counter()
        reqs = list(workload)
        engine_reqs = {r.request_id: to_engine_request(r, i) for i, r in enumerate(reqs)}
        order = itertools.count()
        events: list[tuple[float, int, int, Any]] = []
        next_turn: dict[str, Request] = {}
        if sessions == "closed":
            by_session: dict[str, list[Request]] = {}
            for r in reqs:
                by_session.setdefault(r.session_id or r.request_id, []).append(r)
            for turns in by_session.values():
                turns.sort(key=lambda r: r.turn)
                heapq.heappush(events, (turns[0].arrival_time, _ARRIVAL, next(order), turns[0]))
                for a, b in itertools.pairwise(turns):
                    next_turn[a.request_id] = b
        else:
            for r in reqs:
                heapq.heappush(events, (r.arrival_time, _ARRIVAL, next(order), r))

        replica_of: dict[str, int] = {}
        now = 0.0
        idle = set(range(len(self.replicas)))

        def kick(rep: SimReplica, t: float) -> None:
            end = rep.start_step(t)
            if end is None:
                idle.add(rep.index)
                wake = rep.scheduler.next_event_time()
                if wake is not None:
                    heapq.heappush(events, (max(wake, t), _WAKE, next(order), rep.index))
            else:
                idle.discard(rep.index)
                heapq.heappush(events, (end, _STEP_DONE, next(order), rep.index))

        while events:
            now, kind, _, payload = heapq.heappop(events)
            if kind == _ARRIVAL:
                wreq: Request = payload
                ereq = engine_reqs[wreq.request_id]
                ereq.arrival_time = now
                ereq.timeline.arrival_time = now
                i = self.router.route(
                    RouteRequest(ereq.request_id, ereq.token_ids, ereq.max_tokens, wreq.session_id),
                    self.replicas, now)
                replica_of[ereq.request_id] = i
                rep = self.replicas[i]
                rep.scheduler.add_request(ereq)
                if ereq.is_finished:  # rejected at admission
                    self._after_finish(ereq, i, now, next_turn, events, order, progress)
                if i in idle:
                    kick(rep, now)
            elif kind == _STEP_DONE:
                rep = self.replicas[payload]
                for done in rep.finish_step():
                    self._after_finish(done, rep.index, now, next_turn, events, order, progress)
                kick(rep, now)
            else:  # a paused request's tool call returns on an idle replica
                rep = self.replicas[payload]
                if rep.index in idle:
                    kick(rep, now)
        return SimResult(
            requests=[engine_reqs[r.request_id] for r in reqs if r.request_id in replica_of],
            replica_of=replica_of, steps=[r.steps for r in self.replicas],
            busy_time=[r.busy_time for r in self.replicas], makespan=now,
            wall_s=time.perf_counter() - wall0,
        )

    def _after_finish(self, req: EngineRequest, replica: int, now: float,
                      next_turn: dict[str, Request], events: list, order: Iterable[int],
                      progress: Callable[[int], Any] | None) -> None:
        self.router.on_finish(replica, req.request_id, now)
        if progress is not None:
            progress(1)
        nxt = next_turn.pop(req.request_id, None)
        if nxt is not None:
            heapq.heappush(events, (now + nxt.think_time_s, _ARRIVAL, next(order), nxt))  # type: ignore[call-overload]
