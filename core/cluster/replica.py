"""One real engine replica: an :class:`~core.engine.LLM` engine fed by a submission queue.

:class:`Replica` owns a model and its KV cache and is stepped by whoever drives it:
:class:`~core.cluster.serving.Fleet`'s in-process backend calls :meth:`Replica.pump` from its
own loop; :class:`ReplicaServer` (the body of a Ray actor) calls it from a background thread
so the replica runs in parallel with the others. Either way the replica is the
:class:`~core.cluster.router.ReplicaView` routers read.

Failure: an exception in admission or in a step kills the replica. Every request it held (and
every one submitted later) finishes at once with ``RequestStatus.FINISHED_ERROR`` and the
error ``"replica <i> died: <ExceptionType>: <message>"``; :attr:`Replica.error` keeps the
reason. A dead replica is never stepped again.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.sched.request import EngineRequest, RequestStatus

# engine clock of every replica; the fleet measures each replica's offset to its own clock
clock = time.perf_counter


@dataclass(frozen=True)
class ReplicaSpec:
    """How to build a replica: ``LLM(model, **engine)`` with ``threads`` torch threads.

    ``model`` is a checkpoint directory or a config dict (random weights from
    ``engine["seed"]``, so replicas built from one spec are identical). ``torch.set_num_threads``
    is process-wide: in-process replicas share the last value set.
    """

    model: Any
    engine: Mapping[str, Any] = field(default_factory=dict)
    threads: int = 1


@dataclass(frozen=True)
class Submission:
    """A routed request as a replica receives it; ``arrival_time`` in the replica's clock."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: Any
    arrival_time: float
    interceptions: tuple[Any, ...] = ()

    @property
    def work_tokens(self) -> int:
        """Tokens it adds to a replica's queue: the prompt plus every output token."""
        return len(self.prompt_token_ids) + int(self.sampling.max_tokens)


@dataclass(frozen=True)
class ReplicaLoad:
    """A snapshot of a replica: its :class:`ReplicaView` load, counters, and why it died."""

    outstanding_requests: int = 0
    outstanding_tokens: int = 0
    steps: int = 0
    busy_s: float = 0.0
    finished: int = 0
    error: str | None = None


def failed_request(sub: Submission, message: str, now: float) -> EngineRequest:
    """``sub`` as a request that failed with ``message`` at ``now`` (never started)."""
    req = EngineRequest(
        sub.request_id,
        list(sub.prompt_token_ids),
        sub.sampling,
        arrival_time=min(sub.arrival_time, now),
        interceptions=list(sub.interceptions),
    )
    _fail(req, message, now)
    return req


def _fail(req: EngineRequest, message: str, now: float) -> None:
    # set the fields directly: the scheduler that held it may be broken
    req.status = RequestStatus.FINISHED_ERROR
    req.error = message
    last = req.timeline.token_times[-1] if req.timeline.token_times else req.timeline.arrival_time
    req.timeline.finish_time = max(now, last)


class Replica:
    """One engine replica: submitted requests join the engine on :meth:`pump`, which also runs
    one engine step when there is work.

    Contract:
    - :meth:`submit` is thread-safe and never blocks on a step; :meth:`pump`,
      :meth:`cached_prefix` and :meth:`abort_all` serialize on one lock.
    - :meth:`pump` returns the requests that finished (completed, rejected at admission, or
      failed), each exactly once, with timelines in this replica's :func:`clock`; the engine
      forgets them.
    - ``outstanding_*`` count submitted requests not yet returned (queued ones included).
    - after a failure (see the module doc) :attr:`error` is set and :meth:`pump` only returns
      the requests it fails.
    """

    def __init__(self, index: int, spec: ReplicaSpec) -> None:
        import torch

        from core.engine import LLM

        torch.set_num_threads(spec.threads)
        self.index = index
        self.llm = LLM(spec.model, **dict(spec.engine))
        self.engine = self.llm.engine
        self.engine.clock = clock
        self.error: str | None = None
        self.steps = 0
        self.busy_s = 0.0
        self.finished = 0
        self._inbox: deque[Submission] = deque()
        self._held: dict[str, EngineRequest] = {}
        self._lock = threading.Lock()

    # -- ReplicaView ----------------------------------------------------------------------------

    def outstanding_requests(self) -> int:
        return len(self._inbox) + len(self._held)

    def outstanding_tokens(self) -> int:
        # the simulator's SimReplica counts the same way: uncomputed tokens + remaining output
        queued = sum(s.work_tokens for s in list(self._inbox))
        return queued + sum(
            r.num_uncomputed_tokens + r.max_tokens - r.num_output_tokens
            for r in list(self._held.values())
        )

    def cached_prefix(self, token_ids: Sequence[int]) -> int:
        with self._lock:
            return 0 if self.error else self.engine.scheduler.kv.peek_prefix(token_ids)

    def load(self) -> ReplicaLoad:
        return ReplicaLoad(
            self.outstanding_requests(),
            self.outstanding_tokens(),
            self.steps,
            self.busy_s,
            self.finished,
            self.error,
        )

    # -- driving --------------------------------------------------------------------------------

    def submit(self, subs: Iterable[Submission]) -> None:
        self._inbox.extend(subs)  # deque.extend is atomic: no lock, never waits for a step

    def has_work(self) -> bool:
        """Whether :meth:`pump` would admit or step now (a paused request due counts)."""
        if self.error is not None:
            return False
        s = self.engine.scheduler
        wake = s.next_event_time()
        return bool(
            self._inbox
            or s.running
            or s.waiting
            or s.swapped
            or (wake is not None and wake <= clock())
        )

    def next_wake(self) -> float | None:
        """When a paused request resumes by itself (this replica's clock), if it ever does."""
        return None if self.error else self.engine.scheduler.next_event_time()

    def pump(self) -> list[EngineRequest]:
        """Admit what was submitted, run one step if there is work; the finished requests."""
        with self._lock:
            if self.error is not None:
                return self._fail_inbox(self._obituary())
            done: list[EngineRequest] = []
            try:
                while self._inbox:
                    done += self._admit(self._inbox.popleft())
                if self.has_work():  # the step's schedule() also resumes paused requests due
                    done += self.engine.step()
                    self.steps += 1
                    if self.engine.last_step is not None:
                        self.busy_s += self.engine.last_step.total_s
            except Exception as exc:  # noqa: BLE001 - any engine error kills this replica
                return self._release(done) + self._die(f"{type(exc).__name__}: {exc}")
            return self._release(done)

    def abort_all(self, message: str) -> list[EngineRequest]:
        """Fail every request this replica holds or has queued (the fleet gave up on them)."""
        with self._lock:
            now = clock()
            out = self._fail_inbox(message)
            for req in self._held.values():
                if not req.is_finished:
                    try:
                        self.engine.abort(req.request_id)  # frees its KV
                    except Exception:  # noqa: BLE001 - a broken engine: just report them
                        pass
                _fail(req, message, now)
            return out + self._release(list(self._held.values()))

    def _admit(self, sub: Submission) -> list[EngineRequest]:
        req = self.engine.add_request(
            sub.request_id,
            list(sub.prompt_token_ids),
            sub.sampling,
            # an arrival a clock-offset error puts in our future would precede its own start
            arrival_time=min(sub.arrival_time, clock()),
            interceptions=sub.interceptions,
            eos_token_id=self.llm.config.eos_token_id,  # all of them, if the config lists several
        )
        self._held[req.request_id] = req
        return [req] if req.is_finished else []

    def _release(self, done: list[EngineRequest]) -> list[EngineRequest]:
        for req in done:
            self._held.pop(req.request_id, None)
            self.engine.drop(req.request_id)
        self.finished += len(done)
        return done

    def _obituary(self) -> str:
        return f"replica {self.index} died: {self.error}"

    def _die(self, reason: str) -> list[EngineRequest]:
        self.error = reason
        message = self._obituary()
        now = clock()
        held = list(self._held.values())
        for req in held:
            _fail(req, message, now)
        self._held.clear()
        self.engine.scheduler.requests.clear()  # the engine is broken: keep nothing alive
        self.finished += len(held)
        return held + self._fail_inbox(message)

    def _fail_inbox(self, message: str) -> list[EngineRequest]:
        now = clock()
        out = []
        while self._inbox:
            out.append(failed_request(self._inbox.popleft(), message, now))
        self.finished += len(out)
        return out


@dataclass(frozen=True)
class Exchange:
    """What :meth:`ReplicaServer.exchange` returns: the requests finished since the last call
    (replica clock) and the replica's load after taking the new submissions."""

    finished: list[EngineRequest]
    load: ReplicaLoad


class ReplicaServer:
    """A :class:`Replica` with its own engine loop in a background thread (the body of a Ray
    actor; also usable in-process).

    The loop admits submissions as they come and steps while there is work, and otherwise
    sleeps until a submission, a paused request's resume time, or :attr:`IDLE_WAIT_S`. Methods
    (:meth:`exchange`, :meth:`cached_prefix`, ...) run on the caller's thread and never wait
    for more than one step. A dead replica's loop ends; :meth:`exchange` keeps answering (it
    returns the failed requests and the reason in ``load.error``).
    """

    IDLE_WAIT_S = 0.1

    def __init__(self, index: int, spec: ReplicaSpec) -> None:
        self.replica = Replica(index, spec)
        self._finished: list[EngineRequest] = []
        self._out_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=f"replica-{index}", daemon=True)
        self._thread.start()

    def clock(self) -> float:
        return clock()

    def exchange(self, subs: Sequence[Submission] = ()) -> Exchange:
        """Queue ``subs``; the requests finished since the last call, and the load."""
        rep = self.replica
        if subs:
            rep.submit(subs)
            self._wake.set()
        if rep.error is not None:
            self._thread.join(timeout=1.0)  # let the loop hand over what its death failed
            self._collect(rep.pump())  # no loop any more: fail late submissions here
        with self._out_lock:
            done, self._finished = self._finished, []
        return Exchange(done, rep.load())

    def cached_prefix(self, token_ids: Sequence[int]) -> int:
        return self.replica.cached_prefix(token_ids)

    def abort_all(self, message: str) -> None:
        """Fail and forget everything this replica holds, queued results included (the fleet
        gave up on them: a timeout)."""
        self.replica.abort_all(message)
        with self._out_lock:
            self._finished.clear()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5.0)

    def _collect(self, done: list[EngineRequest]) -> None:
        if done:
            with self._out_lock:
                self._finished.extend(done)

    def _loop(self) -> None:
        rep = self.replica
        while not self._stop and rep.error is None:
            self._collect(rep.pump())
            # clear before checking for work: a submit in between sets it again, so no lost wake
            self._wake.clear()
            if not rep.has_work():
                wake = rep.next_wake()
                wait = self.IDLE_WAIT_S if wake is None else min(self.IDLE_WAIT_S, wake - clock())
                self._wake.wait(max(0.0, wait))
