"""The engine loop: a scheduler, a runner and a clock.

``Engine.step()`` = schedule, execute, update: the same three calls whether the runner is a
real model (here) or a cost model (the simulator), so both worlds share every policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from core.lora.request import LoRARequest
from core.metrics.record import RequestRecord
from core.sched.request import EngineRequest, PauseMode
from core.sched.runner import Runner
from core.sched.scheduler import Scheduler

from .sampling import PromptLogprobs


@dataclass
class RequestOutput:
    """A request's result: vLLM's shape, with our per-request timeline.

    ``token_ids`` are the generated tokens; ``finished`` with ``finish_reason`` one of
    ``stop``, ``length``, ``abort``, ``error`` (then ``error`` says why). ``prompt_logprobs``
    (when the sampling params ask for them): one entry per prompt token, None for the first,
    see :data:`~core.engine.sampling.PromptLogprobs`. ``metrics`` holds the
    timeline as absolute readings of the engine's clock (``time.perf_counter()`` unless the
    engine was given another; ``arrival_time``, ``first_token_time``, ``token_times``,
    ``finish_time``), plus recomputed tokens, preemptions and pauses. The latencies people
    want are properties: :attr:`ttft`, :attr:`tpot`, :attr:`e2e` (seconds, None until known).
    """

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    finished: bool
    finish_reason: str | None = None
    error: str | None = None
    text: str | None = None
    logprobs: list[Any] | None = None
    prompt_logprobs: PromptLogprobs | None = None
    num_cached_tokens: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)

    def record(self) -> RequestRecord:
        """This output as a :class:`core.metrics.RequestRecord`, which defines the latencies."""
        return RequestRecord.from_output(self)

    @property
    def ttft(self) -> float | None:
        """Time to first token (s); None before the first token."""
        return self.record().ttft

    @property
    def e2e(self) -> float | None:
        """End-to-end latency (s); None while unfinished."""
        return self.record().e2e

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first (s/token); None below two tokens."""
        return self.record().tpot

    @classmethod
    def from_request(cls, req: EngineRequest) -> RequestOutput:
        return cls(
            request_id=req.request_id,
            prompt_token_ids=list(req.prompt_token_ids),
            token_ids=list(req.output_token_ids),
            finished=req.is_finished,
            finish_reason=req.status.finish_reason,
            error=req.error,
            logprobs=list(req.logprobs) if req.logprobs else None,
            prompt_logprobs=_prompt_logprobs(req),
            num_cached_tokens=req.num_cached_tokens,
            metrics=req.timeline.to_dict(),
        )


def _prompt_logprobs(req: EngineRequest) -> PromptLogprobs | None:
    if getattr(req.sampling, "prompt_logprobs", None) is None or req.error is not None:
        return None
    if req.prompt_logprobs is None:  # a one-token prompt, or not computed yet
        return [None] * req.num_prompt_tokens
    return list(req.prompt_logprobs)


@dataclass
class StepStats:
    """Timing of one engine step: total, model execution, and everything else (scheduling,
    batch building, bookkeeping)."""

    total_s: float
    forward_s: float
    num_tokens: int
    num_seqs: int

    @property
    def overhead_s(self) -> float:
        return self.total_s - self.forward_s


def _eos_ids(eos: int | Iterable[int] | None) -> int | tuple[int, ...] | None:
    """EOS id(s) as an :class:`EngineRequest` keeps them: one int, a tuple of several, or None
    (also for an empty list)."""
    if eos is None:
        return None
    if isinstance(eos, Iterable):
        return tuple(int(t) for t in eos) or None
    return int(eos)


class Engine:
    """Continuous batching over a :class:`Scheduler` and a :class:`Runner`.

    ``clock`` returns the current time in seconds (wall clock by default; a simulator passes its
    virtual clock). Requests are added with :meth:`add_request`, advanced by :meth:`step`, and
    stopped with :meth:`abort`; :meth:`pause` / :meth:`resume` stop one mid-generation for an
    external call.
    """

    def __init__(
        self, scheduler: Scheduler, runner: Runner, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.clock = clock
        self.last_step: StepStats | None = None
        self._listeners: list[Callable[[EngineRequest], None]] = []

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: Any,
        *,
        arrival_time: float | None = None,
        priority: int = 0,
        interceptions: Iterable[Any] = (),
        eos_token_id: int | Iterable[int] | None = None,
        lora_request: LoRARequest | None = None,
    ) -> EngineRequest:
        """Queue a request. An empty or too-long prompt finishes at once with an error.
        ``lora_request``: the LoRA adapter it runs with (the engine needs LoRA enabled).

        ``eos_token_id``: the model's EOS id, or several (a config's list): any of them stops
        the request unless its sampling ignores EOS; None or an empty list: no EOS.
        """
        req = EngineRequest(
            request_id=request_id,
            prompt_token_ids=list(prompt_token_ids),
            sampling=sampling,
            arrival_time=self.clock() if arrival_time is None else arrival_time,
            priority=priority,
            interceptions=list(interceptions),
            eos_token_id=_eos_ids(eos_token_id),
            lora=lora_request,
        )
        self.scheduler.add_request(req)
        return req

    def abort(self, request_id: str) -> bool:
        return self.scheduler.abort(request_id, self.clock())

    def pause(
        self,
        request_id: str,
        mode: PauseMode = PauseMode.PRESERVE,
        resume_after_s: float | None = None,
    ) -> None:
        now = self.clock()
        resume = None if resume_after_s is None else now + resume_after_s
        self.scheduler.pause(request_id, now, mode, resume)

    def resume(self, request_id: str, returned_token_ids: list[int]) -> None:
        self.scheduler.resume(request_id, returned_token_ids, self.clock())

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[EngineRequest]:
        """One iteration; returns the requests that finished during it."""
        t0 = time.perf_counter()
        out = self.scheduler.schedule(self.clock())
        result = self.runner.execute(out)
        self._keep_prompt_logprobs(result.prompt_logprobs)
        finished = self.scheduler.update(
            out, result.sampled, self.clock(), result.logprobs, spec=result.spec
        )
        for req in finished:
            forget = getattr(self.runner, "forget", None)
            if forget is not None:
                forget(req.request_id)
        self.last_step = StepStats(
            time.perf_counter() - t0, result.forward_s, out.num_tokens, len(out.chunks)
        )
        return finished

    def _keep_prompt_logprobs(self, got: dict[str, tuple[int, list[Any]]]) -> None:
        """Store each request's prompt logprobs by position: a chunk adds its positions, and
        positions computed again (after a preemption) are replaced."""
        for rid, (first, entries) in got.items():
            req = self.scheduler.requests.get(rid)
            if req is None:
                continue
            if req.prompt_logprobs is None:
                req.prompt_logprobs = [None] * req.num_prompt_tokens
            req.prompt_logprobs[first : first + len(entries)] = entries

    def run(self, *, idle_sleep: Callable[[float], None] = time.sleep) -> None:
        """Step until every request finished, waiting while only paused requests remain."""
        while self.has_unfinished_requests():
            s = self.scheduler
            if not (s.running or s.waiting or s.swapped):
                nxt = s.next_event_time()
                if nxt is None:
                    raise RuntimeError("only paused requests remain and none will resume by itself")
                idle_sleep(max(0.0, nxt - self.clock()))
            self.step()

    def request(self, request_id: str) -> EngineRequest:
        return self.scheduler.requests[request_id]

    def drop(self, request_id: str) -> None:
        """Forget a finished request (the LLM API does so after returning its output)."""
        req = self.scheduler.requests.get(request_id)
        if req is not None and req.is_finished:
            del self.scheduler.requests[request_id]
