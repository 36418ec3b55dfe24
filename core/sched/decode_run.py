"""Decode runs: the simulator's fast-forward over steps that only decode.

A *decode run* is ``k`` consecutive steps that each decode one more token of the same
requests, in the same order, every context one longer. :func:`decode_run_limit` says how long
a run starting with a just-scheduled step provably is; :class:`DecodeRun` then applies its
steps lazily (:meth:`DecodeRun.advance`) and leaves the :class:`~core.sched.scheduler.Scheduler`
and its KV backend exactly as the step loop ``schedule -> execute -> update`` would. The engine
does not use this; the simulator does (:mod:`core.sim.simulator`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from core.sched.request import EngineRequest
from core.sched.scheduler import ScheduledChunk, Scheduler, SchedulerOutput


def decode_run_limit(
    sched: Scheduler,
    out: SchedulerOutput,
    max_steps: int | None = None,
    step_ends: Callable[[int], Sequence[float]] | None = None,
) -> int:
    """How many steps, starting with ``out`` (just returned by ``sched.schedule``, not yet
    updated), are provably the same pure-decode batch if no request arrives: ``k`` such that
    steps ``2..k`` would each schedule one token of every request of ``out``, in the same order,
    contexts one longer each step, and nothing else would happen in them (no admission,
    swap-in, resume, preemption, prefix-cache eviction by the backend, finish or pause) except
    possibly in step ``k``'s update. 1 when ``out`` starts no such run.

    Conditions: the scheduler's class declares :attr:`Scheduler.supports_decode_runs`; every
    chunk of ``out`` is one sampled token and ``out`` schedules every running request; no
    request could be admitted or swapped in (nothing waits or is swapped, or the batch is at
    ``max_num_seqs`` or uses the whole token budget); no request can stop on a token
    (``ignore_eos`` or no EOS id, no ``stop_token_ids``); no prefill stop (SSM checkpoint) is
    pending; no KV crosses the host link; the interception policy is
    :meth:`~core.sched.intercept.InterceptPolicy.quiet`. Then ``k`` is the smallest of
    ``max_steps``, the first step after which some request reaches ``max_tokens`` or
    ``max_model_len`` or an interception is due, and the most steps the free KV blocks cover
    (the backend allocates ``block_size``-token blocks as a request grows, as both shipped
    backends do; a paged backend reusing a free block drops its cached hash, the same as step
    by step). ``step_ends(k)`` (optional, the end times of steps ``1..k``) is needed to also
    stop before a step that starts at or after a paused request's ``resume_time``; without it
    no run is allowed while a request is paused with a resume time.
    """
    if not sched.supports_decode_runs:
        return 1
    chunks, running, cfg = out.chunks, sched.running, sched.config
    n = len(chunks)
    if n == 0 or n != len(running) or out.copies:
        return 1
    if out.swap_out_tokens or out.swap_in_tokens or sched.swap_ins_in_progress:
        return 1  # host-link transfers are under way
    if sched.paused and not sched.intercept.quiet(sched, out.now):
        return 1  # the interception policy would act in a later step
    k = cfg.max_model_len if max_steps is None else max_steps  # any finite bound
    for c, req in zip(chunks, running, strict=True):
        if c.request is not req or c.num_tokens != 1 or not c.sample:
            return 1
        sp = req.sampling
        if getattr(sp, "stop_token_ids", None) or not (
            getattr(sp, "ignore_eos", False) or not req.eos_token_ids
        ):
            return 1
        if sched.kv.next_stop(req) is not None:
            return 1
        # after step s the request has o + s output tokens and c.start + 1 + s tokens
        o = req.num_output_tokens
        k = min(k, req.max_tokens - o, cfg.max_model_len - c.start - 1)
        if req.next_interception < len(req.interceptions):
            k = min(k, req.interceptions[req.next_interception].after_output_tokens - o)
    if k <= 1:
        return 1
    if sched.waiting or sched.swapped:
        if cfg.max_num_batched_tokens - n > 0 and n < cfg.max_num_seqs:
            return 1  # an admission or swap-in would be attempted
    k = _kv_run_limit(sched, chunks, k)
    resumes = [r.resume_time for r in sched.paused if r.resume_time is not None]
    if resumes and k > 1:
        if step_ends is None:
            return 1
        ends = step_ends(k)
        # step s (>= 2) starts at ends[s - 2] and must start before the first resume
        k = min(k, 1 + bisect.bisect_left(ends, min(resumes), 0, k - 1))
    return max(k, 1)


def _kv_run_limit(sched: Scheduler, chunks: Sequence[ScheduledChunk], k: int) -> int:
    """The largest ``j <= k`` such that steps ``2..j`` of a decode run fit in the free KV blocks
    (a request whose context is ``c`` in step 1 holds ``ceil((c + s) / bs)`` blocks after step
    ``s``)."""
    bs, free = sched.kv.block_size, sched.kv.num_free_blocks
    ctx = [c.start for c in chunks]

    def need(j: int) -> int:
        return sum((c + j + bs - 1) // bs - (c + bs) // bs for c in ctx)

    if need(k) <= free:
        return k
    lo, hi = 1, k  # need(lo) == 0 <= free < need(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if need(mid) <= free:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class DecodeRun:
    """Steps ``1..steps`` of a decode run on ``scheduler``: step 1 is ``out`` (from
    ``scheduler.schedule``), and each later step decodes one more token of the same requests
    (``steps`` no more than :func:`decode_run_limit` allows).

    ``step_ends[s - 1]`` is when step ``s`` ends (step ``s + 1`` starts then);
    ``tokens[request_id][s - 1]`` is the token the request samples in step ``s``. ``updated``:
    steps whose results are applied; ``scheduled``: steps whose scheduling is applied (their KV
    allocated): ``updated + 1`` while the run lasts, as in a step loop between two steps.
    ``steps`` may be lowered (a request arrived: the step in flight is the last) but never
    below ``scheduled``.
    """

    scheduler: Scheduler
    out: SchedulerOutput
    steps: int
    step_ends: Sequence[float]
    tokens: Mapping[str, Sequence[int]]
    updated: int = 0
    scheduled: int = 1

    def step_start(self, step: int) -> float:
        """When step ``step`` (1-based) starts."""
        return self.out.now if step == 1 else self.step_ends[step - 2]

    def truncate(self, steps: int) -> None:
        """End the run after step ``steps`` (>= the steps already scheduled)."""
        if not self.scheduled <= steps <= self.steps:
            raise ValueError(
                f"cannot end a run of {self.steps} steps, {self.scheduled} scheduled, "
                f"after step {steps}"
            )
        self.steps = steps

    def advance(self, steps: int) -> list[EngineRequest]:
        """Bring the scheduler to where a step loop would be right after step ``steps`` ended:
        steps ``1..steps`` updated (tokens appended, token times, computed counts) and, while
        the run lasts, step ``steps + 1`` scheduled (its KV allocated). When ``steps ==
        self.steps`` the run is over: that last step is updated by ``Scheduler.update`` itself
        (finishes, interceptions) and its finished requests are returned.

        The KV backend sees the same calls, in the same order (by step, then by request), as a
        step loop would make, except that, when the backend declares
        :attr:`~core.kv.backend.KVBackend.mergeable_decode_calls`, calls that would change
        nothing but the request's slot count are merged into the next one."""
        if not self.updated <= steps <= self.steps:
            raise ValueError(
                f"run of {self.steps} steps, {self.updated} applied: cannot advance to step {steps}"
            )
        if steps == self.updated:
            return []
        sched = self.scheduler
        final = steps == self.steps
        chunks = self.out.chunks
        finished: list[EngineRequest] = []
        if self.updated == 0:  # step 1: the ordinary update
            first = {c.request.request_id: self.tokens[c.request.request_id][0] for c in chunks}
            finished = sched.update(self.out, first, self.step_ends[0])
            self.updated = 1
            if final and steps == 1:
                return finished
            assert not finished, "a decode run's first step cannot finish a request"
        bulk_to = steps - 1 if final else steps
        if bulk_to > self.updated:
            self._update_steps(self.updated + 1, bulk_to)
            self.updated = bulk_to
        sched_to = steps if final else min(steps + 1, self.steps)
        if sched_to > self.scheduled:
            self._schedule_steps(self.scheduled + 1, sched_to)
            self.scheduled = sched_to
        if final:
            s = steps
            out = SchedulerOutput(
                chunks=[ScheduledChunk(c.request, c.start + s - 1, 1, True) for c in chunks],
                now=self.step_start(s),
            )
            sampled = {
                c.request.request_id: self.tokens[c.request.request_id][s - 1] for c in chunks
            }
            finished = sched.update(out, sampled, self.step_ends[s - 1])
            self.updated = s
        return finished

    def _update_steps(self, a: int, b: int) -> None:
        """``Scheduler.update`` of steps ``a..b`` (2 <= a <= b), none of which finishes or
        pauses a request (guaranteed by :func:`decode_run_limit`)."""
        times = self.step_ends[a - 1 : b]
        for c in self.out.chunks:
            req = c.request
            new = self.tokens[req.request_id][a - 1 : b]
            req.token_ids.extend(new)
            req.output_token_ids.extend(new)
            req.timeline.token_times.extend(times)
            # step s computes position c.start + s - 1: recomputed if below the high-water mark
            high = req.max_computed_tokens
            req.timeline.recomputed_tokens += max(0, min(b, high - c.start) - a + 1)
            req.num_computed_tokens = c.start + b
            req.max_computed_tokens = max(high, c.start + b)

    def _schedule_steps(self, a: int, b: int) -> None:
        """The KV side of scheduling steps ``a..b`` (2 <= a <= b): what ``Scheduler.schedule``
        would ask the backend, in its order (see :meth:`advance`)."""
        kv = self.scheduler.kv
        bs = kv.block_size
        every_step = not kv.mergeable_decode_calls
        chunks = self.out.chunks
        # step s grows the request from c + s - 1 to c + s slots: a call matters when it starts
        # a block ((c + s - 1) % bs == 0) or fills one ((c + s) % bs == 0)
        events: list[tuple[int, int]] = []
        for idx, c in enumerate(chunks):
            if every_step:
                events.extend((s, idx) for s in range(a, b + 1))
                continue
            for r in ((1 - c.start) % bs, (-c.start) % bs):
                first = a + (r - a) % bs
                events.extend((s, idx) for s in range(first, b + 1, bs))
        events.sort()
        done = [a - 1] * len(chunks)  # steps whose slots each request holds
        saved = [c.request.num_computed_tokens for c in chunks]
        try:
            for s, idx in events:
                if done[idx] >= s:
                    continue  # start and fill on the same step (bs == 1)
                c, now = chunks[idx], self.step_start(s)
                self._allocate(c, done[idx], s, now)
                if every_step:
                    kv.on_scheduled(c.request, c.start + s - 1, 1, now)
                done[idx] = s
            for idx, c in enumerate(chunks):
                if done[idx] < b:
                    self._allocate(c, done[idx], b, self.step_start(b))
        finally:
            for c, v in zip(chunks, saved, strict=True):
                c.request.num_computed_tokens = v

    def _allocate(self, chunk: ScheduledChunk, have: int, upto: int, now: float) -> None:
        """Grow ``chunk.request`` from the slots of steps ``1..have`` of the run to ``1..upto``."""
        req = chunk.request
        req.num_computed_tokens = chunk.start + have
        if not self.scheduler.kv.allocate(req, upto - have, None, now):
            raise RuntimeError(
                f"decode run: KV for request {req.request_id!r} ran out although "
                "decode_run_limit said it fits"
            )
