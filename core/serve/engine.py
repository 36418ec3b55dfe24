"""The engine behind the HTTP server: one driver thread steps real engines, asyncio waits.

:class:`AsyncEngine` owns one or more workers (a :class:`Worker` is an :class:`~core.engine.LLM`
engine in this process; :class:`~core.serve.remote.RemoteWorker` one in a Ray actor; several sit
behind a :class:`~core.cluster.router.Router`) and one driver thread that admits submissions,
applies aborts, pumps every worker (one step, or one exchange with an actor) and hands each
request's new tokens to its :class:`RequestStream` on the event loop. Handlers only touch the event-loop side
(:meth:`AsyncEngine.submit`, :meth:`AsyncEngine.abort`), so no lock guards the engines.

Every submitted request gets exactly one final :class:`Update` (finished, with a reason):
completed (``stop``/``length``), aborted, rejected, or failed when a step raised (the engine is
then dead and :attr:`AsyncEngine.error` says why) or when :meth:`AsyncEngine.shutdown` gave up
on it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.cluster.router import Router, RouteRequest, notify_finish
from core.sched.request import EngineRequest

__all__ = [
    "ENGINE_FAILED",
    "SHUTTING_DOWN",
    "AsyncEngine",
    "EngineDead",
    "EngineWorker",
    "QueueFull",
    "RequestStream",
    "Update",
    "Worker",
]


SHUTTING_DOWN = "server shutting down"
"""The error of a request shutdown gave up on."""
ENGINE_FAILED = "engine failed"
"""How the error of every request a failed engine held begins."""


class QueueFull(RuntimeError):
    """The admission queue is full: the client should retry later (HTTP 429)."""


class EngineDead(RuntimeError):
    """The engine failed or is shutting down and takes no new requests (HTTP 503)."""


@dataclass
class Update:
    """What one request got since its previous update: new output tokens, and at the end
    ``finished`` with ``finish_reason`` (``stop``, ``length``, ``abort``, ``error``) and
    ``error`` (why, for ``abort`` and ``error``)."""

    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None
    error: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    timeline: dict[str, Any] = field(default_factory=dict)


class RequestStream:
    """The updates of one submitted request, in order, ending with a finished one.

    Updates go to ``queue`` as ``(index, update)`` pairs: several streams may share one queue
    (the choices of one HTTP request); iterating a stream reads its own queue.
    """

    def __init__(
        self,
        request_id: str,
        num_prompt_tokens: int,
        queue: asyncio.Queue[tuple[int, Update]] | None = None,
        index: int = 0,
    ) -> None:
        self.request_id = request_id
        self.num_prompt_tokens = num_prompt_tokens
        self.index = index
        self.finished = False
        self.queue: asyncio.Queue[tuple[int, Update]] = (
            queue if queue is not None else asyncio.Queue()
        )

    def put(self, update: Update) -> None:
        if not self.finished:  # one final update, never a second
            self.finished = update.finished
            self.queue.put_nowait((self.index, update))

    async def __aiter__(self) -> AsyncIterator[Update]:
        while True:
            _, update = await self.queue.get()
            yield update
            if update.finished:
                return


class Worker:
    """One engine replica in this process, driven only by the :class:`AsyncEngine` thread; a
    :class:`~core.cluster.router.ReplicaView` for routers.

    The driver calls :meth:`add` and :meth:`abort`, then :meth:`pump` (one step if there is
    work, and the updates since the last pump); :meth:`idle` says whether a pump would step.
    ``steps`` and ``busy_s`` count the steps and their seconds."""

    def __init__(self, index: int, llm: Any) -> None:
        self.index = index
        self.llm = llm
        self.engine = llm.engine
        self.live: dict[str, EngineRequest] = {}
        self.steps = 0
        self.busy_s = 0.0
        self._sent: dict[str, int] = {}

    # -- ReplicaView ---------------------------------------------------------------------------

    def outstanding_requests(self) -> int:
        return len(self.live)

    def outstanding_tokens(self) -> int:
        return sum(
            r.num_uncomputed_tokens + r.max_tokens - r.num_output_tokens for r in self.live.values()
        )

    def cached_prefix(self, token_ids: Sequence[int]) -> int:
        return int(self.engine.scheduler.kv.peek_prefix(token_ids))

    # -- driving -------------------------------------------------------------------------------

    def add(self, request_id: str, prompt_token_ids: list[int], sampling: Any) -> None:
        req = self.engine.add_request(
            request_id, prompt_token_ids, sampling, eos_token_id=self.llm.eos_token_id
        )
        self.live[request_id] = req
        self._sent[request_id] = 0

    def abort(self, request_id: str) -> None:
        if request_id in self.live:
            self.engine.abort(request_id)  # frees its KV now

    def idle(self) -> bool:
        s = self.engine.scheduler
        return not (s.running or s.waiting or s.swapped)

    def step(self) -> None:
        t0 = time.perf_counter()
        self.engine.step()
        self.steps += 1
        self.busy_s += time.perf_counter() - t0

    def pump(self) -> list[tuple[str, Update]]:
        if not self.idle():
            self.step()
        return self.collect()

    def kv_stats(self) -> tuple[float, int]:
        """The share of KV blocks in use and the number of free blocks."""
        kv = self.engine.scheduler.kv
        return float(kv.usage), int(kv.num_free_blocks)

    def collect(self) -> list[tuple[str, Update]]:
        """New tokens of every live request; finished ones leave the engine."""
        out = []
        for rid, req in list(self.live.items()):
            n = len(req.output_token_ids)
            if n == self._sent[rid] and not req.is_finished:
                continue
            update = Update(list(req.output_token_ids[self._sent[rid] : n]))
            self._sent[rid] = n
            if req.is_finished:
                update.finished = True
                update.finish_reason = req.status.finish_reason
                update.error = req.error
                update.num_prompt_tokens = req.num_prompt_tokens
                update.num_output_tokens = req.num_output_tokens
                update.num_cached_tokens = req.num_cached_tokens
                update.timeline = req.timeline.to_dict()
                del self.live[rid], self._sent[rid]
                self.engine.drop(rid)
            out.append((rid, update))
        return out

    def fail_all(self, message: str) -> list[tuple[str, Update]]:
        out = [(rid, Update([], True, "error", message)) for rid in self.live]
        self.live.clear()
        self._sent.clear()
        return out


class EngineWorker(Protocol):
    """What :class:`AsyncEngine` drives: a :class:`Worker` here, or a
    :class:`~core.serve.remote.RemoteWorker` for a Ray actor."""

    index: int
    steps: int
    busy_s: float

    def outstanding_requests(self) -> int: ...
    def outstanding_tokens(self) -> int: ...
    def cached_prefix(self, token_ids: Sequence[int]) -> int: ...
    def add(self, request_id: str, prompt_token_ids: list[int], sampling: Any) -> None: ...
    def abort(self, request_id: str) -> None: ...
    def idle(self) -> bool: ...
    def pump(self) -> list[tuple[str, Update]]: ...
    def kv_stats(self) -> tuple[float, int]: ...
    def fail_all(self, message: str) -> list[tuple[str, Update]]: ...


@dataclass
class _Submission:
    request_id: str
    prompt_token_ids: list[int]
    sampling: Any


class AsyncEngine:
    """Workers stepped by one driver thread, reached from asyncio.

    Contract:
    - :meth:`start` (on the event loop) starts the thread; :meth:`submit` and :meth:`abort`
      are called on that loop only; :meth:`submit` raises :class:`QueueFull` when
      ``max_outstanding`` requests are already in the system and :class:`EngineDead` once the
      engine failed or shutdown began.
    - with several workers, ``router`` picks the worker of each request when it is admitted.
    - :meth:`shutdown` takes no new requests, lets the ones in flight finish for ``grace_s``
      seconds, fails the rest (``finish_reason="abort"``, ``error="server shutting down"``)
      and stops the thread.
    """

    IDLE_WAIT_S = 0.05

    def __init__(
        self,
        workers: Sequence[EngineWorker],
        router: Router | None = None,
        max_outstanding: int = 256,
        closers: Sequence[Callable[[], None]] = (),
    ) -> None:
        if not workers:
            raise ValueError("an AsyncEngine needs at least one worker")
        if len(workers) > 1 and router is None:
            raise ValueError("several workers need a router")
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be >= 1, got {max_outstanding}")
        self.workers = list(workers)
        self.closers = list(closers)  # run after shutdown (stop Ray actors, ...)
        self.router = router
        self.max_outstanding = max_outstanding
        self.error: str | None = None
        self.closing = False
        self._streams: dict[str, RequestStream] = {}
        self._abort_reasons: dict[str, str] = {}
        self._shutdown_task: asyncio.Task[None] | None = None
        self.on_finished: Callable[[Update], None] | None = None
        """Called on the event loop with every request's final update, once each."""
        self._inbox: deque[_Submission] = deque()
        self._aborts: deque[str] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._owner: dict[str, EngineWorker] = {}  # driver thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- event-loop side -----------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._drive, name="serve-engine", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> dict[str, float]:
        """Engine steps and their seconds, over all workers."""
        return {
            "steps": float(sum(w.steps for w in self.workers)),
            "busy_s": sum(w.busy_s for w in self.workers),
        }

    @property
    def num_outstanding(self) -> int:
        """Requests submitted and not finished (running, queued, or not yet admitted)."""
        return len(self._streams)

    @property
    def free_slots(self) -> int:
        """How many more requests :meth:`submit` takes now."""
        return max(0, self.max_outstanding - len(self._streams))

    def submit(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: Any,
        queue: asyncio.Queue[tuple[int, Update]] | None = None,
        index: int = 0,
    ) -> RequestStream:
        """Queue a request; its updates go to the returned stream (``queue`` and ``index``:
        see :class:`RequestStream`)."""
        if self.error is not None:
            raise EngineDead(f"the engine failed: {self.error}")
        if self.closing:
            raise EngineDead("the server is shutting down")
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is in flight already")
        if len(self._streams) >= self.max_outstanding:
            raise QueueFull(
                f"{len(self._streams)} requests in flight; the server takes at most "
                f"{self.max_outstanding} (running and queued)"
            )
        stream = RequestStream(request_id, len(prompt_token_ids), queue, index)
        self._streams[request_id] = stream
        self._inbox.append(_Submission(request_id, list(prompt_token_ids), sampling))
        self._wake.set()
        return stream

    def abort(self, request_id: str, reason: str = "aborted") -> None:
        """Stop a request (its client left or timed out); its KV is freed at the next step,
        and its final update carries ``reason``."""
        if request_id in self._streams:
            self._abort_reasons.setdefault(request_id, reason)
            self._aborts.append(request_id)
            self._wake.set()

    def begin_shutdown(self, grace_s: float = 30.0) -> asyncio.Task[None]:
        """Start :meth:`shutdown` in the background (once); the task that runs it."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self._shutdown(grace_s))
        return self._shutdown_task

    async def shutdown(self, grace_s: float = 30.0) -> None:
        await self.begin_shutdown(grace_s)

    async def _shutdown(self, grace_s: float) -> None:
        self.closing = True
        deadline = time.monotonic() + grace_s
        while self._streams and time.monotonic() < deadline and self.error is None:
            await asyncio.sleep(0.02)
        for rid in list(self._streams):
            self.abort(rid, SHUTTING_DOWN)
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30.0)
        self._fail_in_flight("abort", SHUTTING_DOWN)  # the thread is gone
        for close in self.closers:
            await asyncio.to_thread(close)

    def _deliver(self, updates: list[tuple[str, Update]]) -> None:
        for rid, update in updates:
            stream = self._streams.get(rid)
            if stream is None:
                continue
            if update.finish_reason == "abort" and update.error is None:
                update.error = self._abort_reasons.get(rid, "aborted")
            stream.put(update)
            if update.finished:
                del self._streams[rid]
                self._abort_reasons.pop(rid, None)
                if self.on_finished is not None:
                    self.on_finished(update)

    # -- driver thread -------------------------------------------------------------------------

    def _post(self, updates: list[tuple[str, Update]]) -> None:
        if updates and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, updates)

    def _admit(self, sub: _Submission) -> None:
        if len(self.workers) == 1 or self.router is None:
            worker = self.workers[0]
        else:
            route = RouteRequest(sub.request_id, sub.prompt_token_ids, int(sub.sampling.max_tokens))
            worker = self.workers[self.router.route(route, self.workers, time.perf_counter())]
        worker.add(sub.request_id, sub.prompt_token_ids, sub.sampling)
        self._owner[sub.request_id] = worker

    def _finished(self, worker: EngineWorker, rid: str, update: Update) -> None:
        del self._owner[rid]
        if self.router is not None and len(self.workers) > 1:
            notify_finish(
                self.router, worker.index, rid, time.perf_counter(), update.num_output_tokens
            )

    def _drive(self) -> None:
        try:
            while True:
                self._wake.clear()  # before looking for work: a later submit sets it again
                while self._inbox:
                    self._admit(self._inbox.popleft())
                stopping = self._stop
                while self._aborts:
                    rid = self._aborts.popleft()
                    owner = self._owner.get(rid)
                    if owner is not None:
                        owner.abort(rid)
                updates = []
                for w in self.workers:
                    for rid, update in w.pump():
                        if update.finished:
                            self._finished(w, rid, update)
                        updates.append((rid, update))
                self._post(updates)
                if stopping:
                    return
                if all(w.idle() for w in self.workers):
                    self._wake.wait(self.IDLE_WAIT_S)
        except Exception as exc:  # noqa: BLE001 - a broken engine fails every request it holds
            self.error = f"{type(exc).__name__}: {exc}"  # from now on submit() refuses
            message = f"{ENGINE_FAILED}: {self.error}"
            self._post([u for w in self.workers for u in w.fail_all(message)])
            if self._loop is not None and not self._loop.is_closed():
                # on the loop, after those: whatever is still in flight (e.g. not admitted yet)
                self._loop.call_soon_threadsafe(self._fail_in_flight, "error", message)

    def _fail_in_flight(self, finish_reason: str, message: str) -> None:
        """End every request still in flight (on the loop, once the thread cannot)."""
        self._deliver([(rid, Update([], True, finish_reason, message)) for rid in self._streams])
