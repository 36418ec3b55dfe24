"""The simulator: the engine's scheduler and caches on a virtual clock, with a cost model in
place of the forward pass.

Each :class:`SimReplica` is exactly what a real replica runs (``Scheduler`` + ``KVBackend``
from ``core.sched``/``core.kv``), driven by :class:`SimulatedRunner`. :class:`Simulator` is a
discrete-event loop over request arrivals, replica step completions and tool-call returns,
with a global :class:`~core.cluster.Router` choosing replicas. No policy is re-implemented
here: only time is. Events are ordered by time, then kind (arrivals, step completions,
tool-call returns), then creation order (arrivals) or replica index. Decode fast-forward gives
results identical to ``Simulator(..., fast_forward=False)``.

Event order and how decode fast-forward works: docs/core/sim.md.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from core.cluster.router import (
    Router,
    RouteRequest,
    make_router,
)
from core.kv.backend import KVBackend, PagedKVBackend, RadixKVBackend
from core.kv.policies import AdmissionPolicy, EvictionPolicy
from core.sched.decode_run import DecodeRun, decode_run_limit
from core.sched.request import EngineRequest
from core.sched.runner import StepResult
from core.sched.scheduler import ScheduledChunk, Scheduler, SchedulerConfig, SchedulerOutput
from core.sim.cost import CostModel
from core.workload.schema import Request, Workload


class StepCost(Protocol):
    """A cost model: seconds one scheduler step takes (see ``core.sim.cost``). It may also have
    ``decode_run_times(context_lens, k)`` (the times of ``k`` consecutive decode steps, each
    equal to ``step_time_for`` of that step: :class:`core.sim.cost.CostModel` has it); without
    it decode fast-forward asks ``step_time_for`` for every step of a run."""

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
    tokens of the requests that sample.

    ``host_link`` (default: the cost model, if it has ``swap_s``): ``swap_s(tokens)``, seconds
    to move ``tokens`` tokens' KV one way between device and host. The step's swaps (both ways
    at once: the link is full duplex) overlap the forward when the scheduler pipelines them
    (the step takes the longer of the two), else they come first (the step takes the sum).
    Without a host link swaps take no time.
    """

    def __init__(self, cost: StepCost, host_link: Any = None) -> None:
        self.cost = cost
        if host_link is None and callable(getattr(cost, "swap_s", None)):
            host_link = cost
        self.host_link = host_link

    def execute(self, out: SchedulerOutput) -> StepResult:
        sampled: dict[str, int] = {}
        for c in out.chunks:
            if c.sample:
                req = c.request
                ref = getattr(req.sampling, "reference", None)
                k = req.num_output_tokens
                sampled[req.request_id] = (
                    ref[k] if ref is not None and k < len(ref) else FILLER_TOKEN
                )
        dt = self.cost.step_time_for(out)
        swapped = max(out.swap_out_tokens, out.swap_in_tokens)
        if swapped and self.host_link is not None:
            t_swap = self.host_link.swap_s(swapped)
            dt = max(dt, t_swap) if out.swap_overlaps_forward else dt + t_swap
        return StepResult(sampled=sampled, forward_s=dt)

    # -- decode runs ----------------------------------------------------------------------------

    def run_tokens(self, out: SchedulerOutput, k: int) -> dict[str, list[int]]:
        """The tokens each request of ``out`` samples in ``k`` consecutive decode steps (what
        :meth:`execute` would return step by step)."""
        tokens: dict[str, list[int]] = {}
        for c in out.chunks:
            req = c.request
            ref = getattr(req.sampling, "reference", None)
            o = req.num_output_tokens
            toks = list(ref[o : o + k]) if ref is not None else []
            if len(toks) < k:
                toks += [FILLER_TOKEN] * (k - len(toks))
            tokens[req.request_id] = toks
        return tokens

    def run_times(self, out: SchedulerOutput, k: int) -> list[float]:
        """Seconds of ``k`` consecutive decode steps starting with ``out``, each exactly what
        ``cost.step_time_for`` says for it: ``cost.decode_run_times`` when the cost model
        defines it consistently with its ``step_time_for``, else one call per step."""
        cost = self.cost
        runs = getattr(cost, "decode_run_times", None)
        if runs is not None and (
            not isinstance(cost, CostModel)
            or type(cost).decode_run_times is not CostModel.decode_run_times
            or type(cost).step_time_for is CostModel.step_time_for
        ):
            times = runs([c.start for c in out.chunks], k)
            return times.tolist() if hasattr(times, "tolist") else [float(t) for t in times]
        chunks = out.chunks
        return [
            cost.step_time_for(out)
            if i == 0
            else cost.step_time_for(
                SchedulerOutput(
                    chunks=[ScheduledChunk(c.request, c.start + i, 1, True) for c in chunks]
                )
            )
            for i in range(k)
        ]


@dataclass
class ReplicaConfig:
    """One replica: its cost model, KV memory and batching limits.

    ``prefix_cache``: ``"block"`` (vLLM hashing), ``"radix"`` (needed for hybrids and for
    Marconi/Preble policies) or ``"none"``. ``intercept``: the scheduler's interception policy
    (:mod:`core.sched.intercept`); ``host_link``: times swaps (see :class:`SimulatedRunner`);
    ``scheduler_factory``: see :meth:`make_scheduler`; ``runner_factory``: ``(cost,
    host_link) -> runner`` (default :class:`SimulatedRunner`; speculative decoding:
    :meth:`core.spec.sim.SpecSimConfig.runner`).
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
    intercept: Any = None
    host_link: Any = None
    scheduler_factory: Callable[..., Scheduler] | None = None
    runner_factory: Callable[[StepCost, Any], SimulatedRunner] | None = None

    def make_scheduler(self) -> Scheduler:
        """The replica's scheduler: ``scheduler_factory(config, backend, queue_policy,
        intercept)`` (e.g. a :class:`core.lora.LoRAScheduler` subclass, or a ``partial`` of one),
        or a plain :class:`Scheduler`."""
        factory = self.scheduler_factory or Scheduler
        return factory(
            self.scheduler, self.make_backend(), self.queue_policy, intercept=self.intercept
        )

    def make_backend(self) -> KVBackend:
        if self.prefix_cache == "radix" or self.hybrid:
            return RadixKVBackend(
                self.num_kv_blocks,
                self.block_size,
                hybrid=self.hybrid,
                num_state_slots=self.num_state_slots,
                kv_bytes_per_token=self.kv_bytes_per_token,
                ssm_state_bytes=self.ssm_state_bytes,
                eviction=self.eviction,
                admission=self.admission,
                enable_prefix_caching=self.prefix_cache != "none",
            )
        if self.prefix_cache not in ("block", "none"):
            raise ValueError(
                f"prefix_cache must be 'block', 'radix' or 'none', got {self.prefix_cache!r}"
            )
        return PagedKVBackend(
            self.num_kv_blocks,
            self.block_size,
            enable_prefix_caching=self.prefix_cache == "block",
            kv_bytes_per_token=self.kv_bytes_per_token,
            num_host_blocks=self.num_host_blocks,
        )


class SimReplica:
    """A replica in virtual time: a real :class:`Scheduler` and KV backend, a simulated runner.

    With ``fast_forward`` a step that starts a decode run (see docs/core/sim.md) stands for the
    whole run: :attr:`run` holds it, :attr:`busy_until` is the end of its last step, and
    :meth:`materialize` / :meth:`end_run_at` apply it lazily. :attr:`version` changes whenever
    the end of the work in flight changes (so a simulator can drop stale completion events).
    """

    RUN_CAP = 1024
    """The most steps one run covers (longer ones continue as a new run): bounds the step
    times computed ahead for a run that an arrival may cut short."""

    def __init__(self, index: int, config: ReplicaConfig, *, fast_forward: bool = False) -> None:
        self.index = index
        self.config = config
        self.scheduler = config.make_scheduler()
        factory = config.runner_factory or SimulatedRunner
        self.runner = factory(config.cost, config.host_link)
        self.fast_forward = fast_forward
        self.busy_until: float | None = None  # end of the step (or run) in flight
        self.in_flight: tuple[SchedulerOutput, StepResult] | None = None
        self.run: DecodeRun | None = None
        self._run_times: list[float] = []
        self.version = 0
        self.view_time: float | None = None  # lazily materialize a run up to here on a view
        self.steps = 0
        self.fast_forwarded_steps = 0  # steps 2..k of runs (counted in ``steps`` too)
        self.busy_time = 0.0
        self._outstanding_tokens = 0

    # -- ReplicaView ----------------------------------------------------------------------------

    def outstanding_requests(self) -> int:
        self._sync_view()
        s = self.scheduler
        return len(s.waiting) + len(s.running) + len(s.swapped) + len(s.paused)

    def outstanding_tokens(self) -> int:
        self._sync_view()
        s = self.scheduler
        total = 0
        for q in (s.waiting, s.running, s.swapped, s.paused):
            for r in q:
                total += r.num_uncomputed_tokens + r.max_tokens - r.num_output_tokens
        return total

    def cached_prefix(self, token_ids: Sequence[int]) -> int:
        self._sync_view()
        return self.scheduler.kv.peek_prefix(token_ids)

    def _sync_view(self) -> None:
        if self.run is not None and self.view_time is not None:
            self.materialize(self.view_time)

    # -- stepping -------------------------------------------------------------------------------

    def start_step(self, now: float) -> float | None:
        """Schedule a step (or a decode run) at ``now``; when it ends, or None when there is
        nothing to run."""
        out = self.scheduler.schedule(now)
        if out.is_empty:
            self.in_flight = None
            return None
        if self.fast_forward and self._start_run(out, now):
            return self.busy_until
        result = self.runner.execute(out)
        dt = result.forward_s
        self.in_flight = (out, result)
        self.busy_until = now + dt
        self.steps += 1
        self.busy_time += dt
        return self.busy_until

    def _start_run(self, out: SchedulerOutput, now: float) -> bool:
        if getattr(self.runner, "speculative", False):
            return False  # each step proposes the next drafts: no two steps are alike
        times: list[float] = []
        ends: list[float] = []

        def step_ends(k: int) -> list[float]:
            if len(ends) < k:
                times[:] = self.runner.run_times(out, k)
                ends[:] = itertools.accumulate(times, initial=now)
                del ends[0]
            return ends[:k]

        k = decode_run_limit(self.scheduler, out, self.RUN_CAP, step_ends)
        if k <= 1:
            return False
        step_ends(k)
        self.run = DecodeRun(self.scheduler, out, k, ends, self.runner.run_tokens(out, k))
        self._run_times = times
        self.busy_until = ends[k - 1]
        return True

    def finish_step(self) -> list[EngineRequest]:
        """Apply the step (or the rest of the run) that ended at :attr:`busy_until`; the
        requests that finished."""
        assert self.busy_until is not None
        run = self.run
        if run is not None:
            self.run = None
            done = run.advance(run.steps)
            for dt in self._run_times[: run.steps]:
                self.busy_time += dt
            self.steps += run.steps
            self.fast_forwarded_steps += run.steps - 1
            self.busy_until = None
            return done
        assert self.in_flight is not None
        out, result = self.in_flight
        now = self.busy_until
        self.in_flight, self.busy_until = None, None
        done = self.scheduler.update(out, result.sampled, now, spec=result.spec)
        forget = getattr(self.runner, "forget", None)
        if forget is not None:
            for req in done:
                forget(req.request_id)
        return done

    def materialize(self, t: float) -> None:
        """Apply the steps of the run in flight that ended before ``t`` (and schedule the next):
        the state a step-by-step simulation shows at ``t``, before events at ``t``."""
        run = self.run
        if run is None:
            return
        m = bisect.bisect_left(run.step_ends, t, 0, run.steps)  # steps that ended before t
        if m >= run.steps:
            raise RuntimeError(
                f"replica {self.index}: its run ended at {run.step_ends[run.steps - 1]} "
                f"but was not applied before {t}"
            )
        if m > run.updated:
            run.advance(m)

    def end_run_at(self, t: float) -> float | None:
        """Something changes the replica at ``t`` (a request arrives): end its run with the step
        in flight at ``t``. The new end time if it moved (the version changes), else None."""
        run = self.run
        if run is None:
            return None
        self.materialize(t)
        last = run.updated + 1
        if last >= run.steps:
            return None
        run.truncate(last)
        self.version += 1
        self.busy_until = run.step_ends[last - 1]
        return self.busy_until


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
    fast_forwarded_steps: int = 0  # steps applied in decode runs without their own event

    @property
    def total_steps(self) -> int:
        return sum(self.steps)

    def fingerprint(self) -> tuple[list[tuple[Any, ...]], list[int], list[float], float]:
        """Everything two runs of one simulation must agree on exactly, as a value to compare
        with ``==``: for each request (in :attr:`requests` order) its id, replica, status,
        timeline (:meth:`~core.sched.request.RequestTimeline.to_dict`), prefix-cache hit,
        computed and output token counts and token ids; then the per-replica step counts and
        busy times, and the makespan. Left out: ``wall_s`` and ``fast_forwarded_steps``, which
        differ between a fast-forwarded and a step-by-step run of the same simulation."""
        reqs = [
            (
                r.request_id,
                self.replica_of[r.request_id],
                r.status.value,
                r.timeline.to_dict(),
                r.num_cached_tokens,
                r.num_computed_tokens,
                r.num_output_tokens,
                tuple(r.token_ids),
            )
            for r in self.requests
        ]
        return reqs, self.steps, self.busy_time, self.makespan


# -- events -------------------------------------------------------------------------------------

ARRIVAL, STEP_DONE, WAKE, TICK = 0, 1, 2, 3
"""Event kinds, in the order they are handled at equal times: an arrival at ``t`` joins before
the step scheduled at ``t``, as in the real engine (which admits every request with arrival <=
now); a controller's tick comes last."""


class Event(NamedTuple):
    """An entry of the event heap, ordered as the tuple ``(time, kind, key, tag)``: ``key`` and
    then ``tag`` break ties within a kind (see docs/core/sim.md). Made by the subclasses below,
    which give ``key`` and ``tag`` their names."""

    time: float
    kind: int
    key: int
    tag: Any


class Arrival(Event):
    """``request`` arrives; ``seq`` (creation order) breaks ties."""

    __slots__ = ()
    seq = Event.key
    request = Event.tag

    def __new__(cls, time: float, seq: int, request: Request) -> Arrival:
        return tuple.__new__(cls, (time, ARRIVAL, seq, request))


class StepDone(Event):
    """The step (or decode run) of replica ``replica`` ends, unless the replica's version is no
    longer ``version`` (its run was cut short and has a new end). Ties: by replica."""

    __slots__ = ()
    replica = Event.key
    version = Event.tag

    def __new__(cls, time: float, replica: int, version: int) -> StepDone:
        return tuple.__new__(cls, (time, STEP_DONE, replica, version))


class Wake(Event):
    """A paused request's tool call returns on idle replica ``replica``; ties by replica, then
    creation order (``seq``)."""

    __slots__ = ()
    replica = Event.key
    seq = Event.tag

    def __new__(cls, time: float, replica: int, seq: int) -> Wake:
        return tuple.__new__(cls, (time, WAKE, replica, seq))


class Tick(Event):
    """The cluster controller's periodic call (see :class:`Controller`); ``seq`` counts them."""

    __slots__ = ()
    seq = Event.key

    def __new__(cls, time: float, seq: int) -> Tick:
        return tuple.__new__(cls, (time, TICK, seq, None))


class Controller(Protocol):
    """A cluster-level policy called every ``interval_s`` simulated seconds (e.g. dLoRA's
    request migration): ``tick(now, replicas)`` sees the replicas as they are at ``now`` and
    returns moves ``(request_id, from_replica, to_replica)`` of *waiting* requests (admitted to
    no batch yet, holding no KV), which the simulator applies in order."""

    interval_s: float

    def tick(self, now: float, replicas: Sequence[SimReplica]) -> list[tuple[str, int, int]]: ...


def to_engine_request(req: Request, index: int) -> EngineRequest:
    """The engine-side request for a workload request. Prompts without token ids get
    content no other request shares (so they never hit a prefix cache by accident). A LoRA
    adapter comes from ``req.metadata["lora"]`` (a :class:`core.lora.LoRARequest`)."""
    if req.prompt_token_ids is not None:
        ids = list(req.prompt_token_ids)
    elif req.block_hashes is not None and req.block_size:
        from core.workload.mooncake import expand_block_tokens

        ids = expand_block_tokens(req.block_hashes, req.prompt_len, req.block_size)
    else:
        ids = [1_000_000 + index] * req.prompt_len
    ref = tuple(req.output_token_ids) if req.output_token_ids is not None else None
    return EngineRequest(
        request_id=req.request_id,
        prompt_token_ids=ids,
        sampling=SimSampling(max_tokens=max(1, req.output_len), reference=ref),
        arrival_time=req.arrival_time,
        interceptions=list(req.interceptions),
        lora=req.metadata.get("lora"),
    )


class Simulator:
    """Replays requests through simulated replicas behind a router, in virtual time.

    ``sessions="open"`` uses every request's ``arrival_time``; ``"closed"`` sends a session's
    first turn at its arrival time and each later turn ``think_time_s`` after the previous
    turn finished (a user waits for the answer). Deterministic: see docs/core/sim.md for the
    order of simultaneous events.

    ``fast_forward`` (default on) applies runs of identical decode steps in one go (see
    docs/core/sim.md); the results are the same as without it, only faster. ``controller``:
    a :class:`Controller` ticked every ``interval_s`` while work remains; its moves re-home
    waiting requests (a migrated request keeps its arrival time and timeline).
    """

    def __init__(
        self,
        replicas: Sequence[ReplicaConfig],
        router: Router | str = "round-robin",
        *,
        fast_forward: bool = True,
        controller: Controller | None = None,
    ) -> None:
        if not replicas:
            raise ValueError("a simulation needs at least one replica")
        self.fast_forward = bool(fast_forward)
        self.replicas = [
            SimReplica(i, c, fast_forward=self.fast_forward) for i, c in enumerate(replicas)
        ]
        self.router = make_router(router)
        if controller is not None and not controller.interval_s > 0:
            raise ValueError(f"controller.interval_s must be > 0, got {controller.interval_s}")
        self.controller = controller

    def run(
        self,
        workload: Workload | Iterable[Request],
        *,
        sessions: str = "open",
        progress: Callable[[int], Any] | None = None,
    ) -> SimResult:
        if sessions not in ("open", "closed"):
            raise ValueError(f"sessions must be 'open' or 'closed', got {sessions!r}")
        wall0 = time.perf_counter()
        reqs = list(workload)
        engine_reqs = {r.request_id: to_engine_request(r, i) for i, r in enumerate(reqs)}
        # tie-breakers: arrivals by creation, step completions by (replica, version), tool-call
        # returns by (replica, creation); see docs/core/sim.md
        order = itertools.count()
        wakes = itertools.count()
        events: list[Arrival | StepDone | Wake | Tick] = []
        next_turn: dict[str, Request] = {}
        if sessions == "closed":
            by_session: dict[str, list[Request]] = {}
            for r in reqs:
                by_session.setdefault(r.session_id or r.request_id, []).append(r)
            for turns in by_session.values():
                turns.sort(key=lambda r: r.turn)
                heapq.heappush(events, Arrival(turns[0].arrival_time, next(order), turns[0]))
                for a, b in itertools.pairwise(turns):
                    next_turn[a.request_id] = b
        else:
            for r in reqs:
                heapq.heappush(events, Arrival(r.arrival_time, next(order), r))

        replica_of: dict[str, int] = {}
        now = 0.0
        idle = set(range(len(self.replicas)))
        replicas = self.replicas
        lazy_views = self.router.views_only
        ticks = itertools.count()
        if self.controller is not None:
            heapq.heappush(events, Tick(self.controller.interval_s, next(ticks)))

        def kick(rep: SimReplica, t: float) -> None:
            end = rep.start_step(t)
            if end is None:
                idle.add(rep.index)
                wake = rep.scheduler.next_event_time()
                if wake is not None:
                    heapq.heappush(events, Wake(max(wake, t), rep.index, next(wakes)))
            else:
                idle.discard(rep.index)
                heapq.heappush(events, StepDone(end, rep.index, rep.version))

        while events:
            ev = heapq.heappop(events)
            if isinstance(ev, StepDone) and ev.version != replicas[ev.replica].version:
                continue  # a run that an arrival cut short: its new end has its own event
            last_work, now = now, ev.time
            if isinstance(ev, Arrival):
                wreq = ev.request
                ereq = engine_reqs[wreq.request_id]
                ereq.arrival_time = now
                ereq.timeline.arrival_time = now
                if self.fast_forward:  # routers must see what step-by-step would show at now
                    for rep in replicas:
                        if rep.run is not None:
                            if lazy_views:
                                rep.view_time = now
                            else:
                                rep.materialize(now)
                i = self.router.route(
                    RouteRequest(ereq.request_id, ereq.token_ids, ereq.max_tokens, wreq.session_id),
                    replicas,
                    now,
                )
                replica_of[ereq.request_id] = i
                rep = replicas[i]
                end = rep.end_run_at(now)
                if end is not None:
                    heapq.heappush(events, StepDone(end, i, rep.version))
                rep.scheduler.add_request(ereq)
                if ereq.is_finished:  # rejected at admission
                    self._after_finish(ereq, i, now, next_turn, events, order, progress)
                if i in idle:
                    kick(rep, now)
            elif isinstance(ev, StepDone):
                rep = replicas[ev.replica]
                for done in rep.finish_step():
                    self._after_finish(done, rep.index, now, next_turn, events, order, progress)
                kick(rep, now)
            elif isinstance(ev, Wake):  # a paused request's tool call returns on an idle replica
                rep = replicas[ev.replica]
                if rep.index in idle:
                    kick(rep, now)
            else:  # Tick: the controller looks at the cluster and may move waiting requests
                assert self.controller is not None
                for rep in replicas:
                    rep.materialize(now)
                moves = self.controller.tick(now, replicas)
                for rid, src, dst in moves:
                    self._move(rid, replicas[src], replicas[dst], now, events)
                    replica_of[rid] = dst
                kicked = False
                for rep in replicas:
                    if rep.index in idle and rep.scheduler.has_unfinished():
                        kick(rep, now)
                        kicked = True
                busy = len(idle) < len(replicas)
                if busy or any(not isinstance(e, Tick) for e in events):
                    heapq.heappush(events, Tick(now + self.controller.interval_s, next(ticks)))
                if not (moves or kicked):
                    now = last_work  # a tick that changed nothing does not extend the makespan
        return SimResult(
            requests=[engine_reqs[r.request_id] for r in reqs if r.request_id in replica_of],
            replica_of=replica_of,
            steps=[r.steps for r in replicas],
            busy_time=[r.busy_time for r in replicas],
            makespan=now,
            wall_s=time.perf_counter() - wall0,
            fast_forwarded_steps=sum(r.fast_forwarded_steps for r in replicas),
        )

    @staticmethod
    def _move(
        rid: str,
        src: SimReplica,
        dst: SimReplica,
        now: float,
        events: list[Arrival | StepDone | Wake | Tick],
    ) -> None:
        """Move waiting request ``rid`` from ``src`` to ``dst`` (as an arrival there)."""
        req = src.scheduler.requests.get(rid)
        if req is None or req not in src.scheduler.waiting or req.num_computed_tokens:
            raise ValueError(f"request {rid!r} is not waiting on replica {src.index}: cannot move")
        src.scheduler.waiting.remove(req)
        del src.scheduler.requests[rid]
        end = dst.end_run_at(now)
        if end is not None:
            heapq.heappush(events, StepDone(end, dst.index, dst.version))
        dst.scheduler.add_request(req)

    def _after_finish(
        self,
        req: EngineRequest,
        replica: int,
        now: float,
        next_turn: dict[str, Request],
        events: list[Arrival | StepDone | Wake | Tick],
        order: Iterator[int],
        progress: Callable[[int], Any] | None,
    ) -> None:
        self.router.on_finish(replica, req.request_id, now, output_tokens=req.num_output_tokens)
        if progress is not None:
            progress(1)
        nxt = next_turn.pop(req.request_id, None)
        if nxt is not None:
            heapq.heappush(events, Arrival(now + nxt.think_time_s, next(order), nxt))
