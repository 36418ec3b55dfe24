"""Token-budget continuous batching with chunked prefill, preemption, and pause/resume.

One :class:`Scheduler` serves both worlds: the engine executes its :class:`SchedulerOutput`
with a real forward pass, the simulator with a cost model. It never reads a clock (``now`` is
passed in) and never touches a tensor (copies are queued by the KV backend).

A step (vLLM v1's shape):

1. paused requests whose external call has returned rejoin (their returned tokens appended),
   and the interception policy (:mod:`core.sched.intercept`) decides what happens to the KV of
   those still paused;
2. running requests get their next tokens (one to decode, or the next prefill chunk), within
   the token budget; when KV memory runs out, the request the queue policy ranks last is
   preempted (recompute: its KV is freed and it waits again; swap: its KV moves to the host),
   unless the policy names a paused request to swap out or discard first;
3. swapped-out requests are swapped back in while memory (and the policy's per-iteration
   host-link budget) allows;
4. waiting requests are admitted in policy order (its key, or the order its
   :meth:`~core.sched.policies.QueuePolicy.admission_order` gives for this step), starting
   after their prefix-cache hit.

:meth:`Scheduler.update` then records the sampled tokens and finishes, pauses or continues
each request.

Recomputation (tokens a request computed before and lost) is capped per step when the policy
chunks it (``recompute_saturation``). KV moved over the host link is reported per step
(:attr:`SchedulerOutput.swap_out_tokens` / ``swap_in_tokens``) for a simulator to time.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.kv.backend import KVBackend, PendingCopies
from core.sched.intercept import InterceptPolicy, make_intercept_policy
from core.sched.policies import QueuePolicy, make_policy
from core.sched.request import EngineRequest, PauseMode, RequestStatus


@dataclass
class SchedulerConfig:
    """Batching limits.

    - ``max_num_batched_tokens``: tokens computed per step (prefill chunks + decodes);
    - ``max_num_seqs``: requests holding KV at once (running, including mid-prefill);
    - ``max_model_len``: prompt + output limit; longer prompts are rejected with an error;
    - ``enable_chunked_prefill``: split prompts across steps (else a prompt waits for a step
      with room for all of it, and prompts longer than the budget are rejected);
    - ``preemption_mode``: ``"recompute"`` or ``"swap"`` (falls back to recompute when the
      backend cannot swap or the host pool is full), unless the interception policy says;
    - ``discard_requeue``: where a request whose KV was discarded during a pause waits on
      resume: ``"tail"`` (vLLM: as if it had just arrived) or ``"head"`` (its original place),
      unless the interception policy says (``InterceptPolicy.requeue``);
    - ``vocab_size``: range for filler tokens of interceptions that return no token ids.
    """

    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 128
    max_model_len: int = 4096
    enable_chunked_prefill: bool = True
    preemption_mode: str = "recompute"
    discard_requeue: str = "tail"
    vocab_size: int = 32000

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs", "max_model_len", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.preemption_mode not in ("recompute", "swap"):
            raise ValueError(f"preemption_mode must be 'recompute' or 'swap', got {self.preemption_mode!r}")
        if self.discard_requeue not in ("tail", "head"):
            raise ValueError(f"discard_requeue must be 'tail' or 'head', got {self.discard_requeue!r}")


@dataclass
class ScheduledChunk:
    """``num_tokens`` tokens of ``request`` computed this step, from position ``start``;
    ``sample`` when the chunk ends at the request's last known token (a new token follows)."""

    request: EngineRequest
    start: int
    num_tokens: int
    sample: bool

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


@dataclass
class SchedulerOutput:
    """What one step computes, and the tensor copies it needs first/after.

    ``swap_out_tokens`` / ``swap_in_tokens``: KV tokens (whole blocks) that cross the host link
    for this step, each way: swaps queued since the previous step was scheduled, and the part
    of a longer swap-in done in this step; ``swap_overlaps_forward``: the transfer runs beside
    the forward (pipelined) rather than before it. ``num_recompute_tokens``: tokens of the
    chunks that were computed before (recomputation); ``recompute_budget``: the cap on the
    chunks of recomputing requests this step (None: no cap).
    """

    chunks: list[ScheduledChunk] = field(default_factory=list)
    copies: PendingCopies = field(default_factory=PendingCopies)
    preempted: list[str] = field(default_factory=list)
    now: float = 0.0
    swap_out_tokens: int = 0
    swap_in_tokens: int = 0
    swap_overlaps_forward: bool = False
    num_recompute_tokens: int = 0
    recompute_budget: int | None = None

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        """Nothing to compute and nothing crossing the host link."""
        return not self.chunks and not self.swap_out_tokens and not self.swap_in_tokens


@dataclass
class DecodeRun:
    """Steps ``1..steps`` of a *decode run*: step 1 is ``out`` (from :meth:`Scheduler.schedule`),
    and each later step decodes one more token of the same requests, in the same order, every
    context one longer (see :meth:`Scheduler.decode_run_limit`, which says how long that is
    provably so). A simulator applies such a run lazily with :meth:`Scheduler.advance_decode_run`.

    ``step_ends[s - 1]`` is when step ``s`` ends (step ``s + 1`` starts then);
    ``tokens[request_id][s - 1]`` is the token the request samples in step ``s``. ``updated``:
    steps whose results are applied; ``scheduled``: steps whose scheduling is applied (their KV
    allocated): ``updated + 1`` while the run lasts, as in a step loop between two steps.
    ``steps`` may be lowered (a request arrived: the step in flight is the last) but never
    below ``scheduled``.
    """

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
            raise ValueError(f"cannot end a run of {self.steps} steps, {self.scheduled} scheduled, "
                             f"after step {steps}")  # fmt: skip
        self.steps = steps


class Scheduler:
    """Continuous batching over a :class:`~core.kv.backend.KVBackend`; see the module doc.

    ``intercept``: the :class:`~core.sched.intercept.InterceptPolicy` (or its name) for paused
    requests' KV; None keeps it (``"preserve"``). It may be replaced between steps.
    """

    def __init__(self, config: SchedulerConfig, kv: KVBackend,
                 policy: QueuePolicy | str = "fcfs",
                 intercept: InterceptPolicy | str | None = None) -> None:
        self.config = config
        self.kv = kv
        self.policy = make_policy(policy)
        self.intercept = make_intercept_policy(intercept)
        self._dynamic_order = type(self.policy).admission_order is not QueuePolicy.admission_order
        self.requests: dict[str, EngineRequest] = {}
        self.waiting: list[EngineRequest] = []  # sorted by policy key
        self.running: list[EngineRequest] = []  # in admission order
        self.swapped: list[EngineRequest] = []  # sorted by policy key
        self.paused: list[EngineRequest] = []
        self._seq = 0
        # per iteration (set by _begin_iteration): the policy's swap targets, the host-link
        # budgets left each way, the recompute tokens left
        self._swap_targets: list[EngineRequest] = []
        self._link_left = [math.inf, math.inf]
        self._recompute_left: int | None = None
        self._link_used = [0, 0]  # KV tokens moved out / in since the last step was scheduled
        self._swap_in_moved: dict[str, int] = {}  # swap-ins in progress: tokens moved so far

    # -- requests -------------------------------------------------------------------------------

    def add_request(self, req: EngineRequest) -> None:
        """Queue a request; an invalid one finishes at once with an error status."""
        if req.request_id in self.requests:
            raise ValueError(f"request id {req.request_id!r} is already in the scheduler")
        self._seq += 1
        req.seq_no = self._seq
        self.requests[req.request_id] = req
        error = self._validate(req)
        if error:
            req.error = error
            self._finish(req, RequestStatus.FINISHED_ERROR, req.arrival_time)
            return
        self._enqueue(self.waiting, req)

    def _validate(self, req: EngineRequest) -> str | None:
        n, cfg = req.num_prompt_tokens, self.config
        if n == 0:
            return "empty prompt"
        if n >= cfg.max_model_len:
            return f"prompt of {n} tokens does not fit max_model_len={cfg.max_model_len}"
        need = n + req.max_tokens + sum(i.returned_tokens for i in req.interceptions)
        if need > self.kv.capacity_tokens:
            return (f"needs KV for {need} tokens (prompt + max_tokens + tool returns), the "
                    f"cache holds {self.kv.capacity_tokens}")
        if not cfg.enable_chunked_prefill and n > cfg.max_num_batched_tokens:
            return (f"prompt of {n} tokens exceeds max_num_batched_tokens="
                    f"{cfg.max_num_batched_tokens} without chunked prefill")
        return None

    def _enqueue(self, queue: list[EngineRequest], req: EngineRequest) -> None:
        bisect.insort(queue, req, key=self.policy.key)

    def abort(self, request_id: str, now: float) -> bool:
        """Stop a request wherever it is; False if unknown or already finished."""
        req = self.requests.get(request_id)
        if req is None or req.is_finished:
            return False
        self._finish(req, RequestStatus.FINISHED_ABORTED, now)
        return True

    def pause(self, request_id: str, now: float, mode: PauseMode = PauseMode.PRESERVE,
              resume_time: float | None = None, interception: Any = None) -> None:
        """Stop a running request mid-generation (an external call); :meth:`resume` continues it.

        ``resume_time``: when the call returns (the scheduler resumes it then by itself);
        None waits for an explicit :meth:`resume`. ``interception``: the
        :class:`~core.workload.schema.Interception` that fired, if any (policies read its kind).
        """
        req = self.requests[request_id]
        if req.status != RequestStatus.RUNNING:
            raise ValueError(f"request {request_id!r} is {req.status.value}, not running")
        self.running.remove(req)
        req.timeline.num_pauses += 1
        req.pause_mode, req.resume_time = mode, resume_time
        req.pause_time, req.paused_by = now, interception
        if mode == PauseMode.SWAP and self.kv.supports_swap and self.kv.can_swap_out(req):
            self._link_used[0] += self._kv_tokens(req)
            self.kv.swap_out(req)
        elif mode != PauseMode.PRESERVE:
            if mode == PauseMode.SWAP:  # no host room or no swap support: discard instead
                req.pause_mode = PauseMode.DISCARD
            self.kv.free(req, now, cache=False)
            req.num_computed_tokens = 0
        req.status = RequestStatus.PAUSED
        self.paused.append(req)

    def resume(self, request_id: str, returned_token_ids: list[int], now: float) -> None:
        """The external call returned: append its tokens and let the request continue."""
        req = self.requests[request_id]
        if req.status != RequestStatus.PAUSED:
            raise ValueError(f"request {request_id!r} is {req.status.value}, not paused")
        self.paused.remove(req)
        req.token_ids.extend(returned_token_ids)
        req.resume_time = req.pause_time = req.paused_by = None
        mode, req.pause_mode = req.pause_mode, None
        if mode == PauseMode.PRESERVE:
            req.status = RequestStatus.RUNNING
            self.running.append(req)
        elif mode == PauseMode.SWAP:
            req.status = RequestStatus.SWAPPED
            self._enqueue(self.swapped, req)
        else:
            req.status = RequestStatus.WAITING
            if (self.intercept.requeue or self.config.discard_requeue) == "tail":
                self._seq += 1
                req.seq_no, req.arrival_time = self._seq, now
            self._enqueue(self.waiting, req)

    # -- scheduling -----------------------------------------------------------------------------

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped or self.paused)

    def next_event_time(self) -> float | None:
        """When a paused request's call returns next (None if none is pending)."""
        times = [r.resume_time for r in self.paused if r.resume_time is not None]
        return min(times) if times else None

    def schedule(self, now: float) -> SchedulerOutput:
        """Pick this step's work; see the module docstring for the order."""
        cfg = self.config
        out = SchedulerOutput(now=now)
        for req in [r for r in self.paused if r.resume_time is not None and r.resume_time <= now]:
            self.resume(req.request_id, self._returned_tokens(req), now)
        self._begin_iteration(now)
        out.recompute_budget = self._recompute_left
        budget = cfg.max_num_batched_tokens
        scheduled: set[str] = set()

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = self._cap_recompute(req, self._chunk_size(req, budget))
            if n == 0:
                i += 1
                continue
            while not self.kv.allocate(req, n, None, now):
                if self._relieve(now):
                    continue  # a paused request's KV went first
                # never a request already scheduled in this step: its chunk is in the batch
                candidates = [r for r in self.running if r.request_id not in scheduled]
                victim = max(candidates, key=self.policy.key)
                self._preempt(victim, now, out)
                if victim is req:
                    break
            else:
                self._add_chunk(out, req, n, now)
                scheduled.add(req.request_id)
                budget -= n
                i += 1
                continue
            # req itself was preempted: the same index now holds the next request

        while self.swapped and budget > 0 and len(self.running) < cfg.max_num_seqs:
            req = self.swapped[0]
            blocks = self.kv.swapped_blocks(req)
            if blocks > self.kv.num_free_blocks:
                if self._relieve(now):
                    continue
                break
            if not self._transfer_in(req, blocks * self.kv.block_size):
                break  # the rest of its KV crosses the host link in later steps
            if not self.kv.swap_in(req):
                break
            self.swapped.pop(0)
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            n = self._cap_recompute(req, self._chunk_size(req, budget))
            if n and self.kv.allocate(req, n, None, now):
                self._add_chunk(out, req, n, now)
                budget -= n

        order = self._admission_order(budget) if self._dynamic_order else None
        queue = self.waiting if order is None else order
        admitted = 0
        while admitted < len(queue) and budget > 0 and len(self.running) < cfg.max_num_seqs:
            req = queue[admitted]
            if self.swapped:
                break  # swapped requests come back first
            hit = self.kv.lookup(req, now)
            req.num_computed_tokens = hit.num_cached_tokens
            n = self._cap_recompute(req, self._chunk_size(req, budget, stops=hit.stops))
            if n == 0 or not self.kv.allocate(req, n, hit, now):
                self.kv.cancel(hit)
                req.num_computed_tokens = 0
                if n and self._relieve(now):
                    continue  # look it up again: the freed blocks may have held its prefix
                break
            admitted += 1
            req.num_cached_tokens = hit.num_cached_tokens
            req.status = RequestStatus.RUNNING
            if req.timeline.first_scheduled_time is None:
                req.timeline.first_scheduled_time = now
            self.running.append(req)
            self._add_chunk(out, req, n, now)
            budget -= n
        if order is None:
            del self.waiting[:admitted]
        elif admitted:
            taken = {r.request_id for r in order[:admitted]}
            self.waiting[:] = [r for r in self.waiting if r.request_id not in taken]

        out.copies = self.kv.take_copies()
        out.swap_out_tokens, out.swap_in_tokens = self._link_used
        out.swap_overlaps_forward = self.intercept.pipelined_swap
        self._link_used = [0, 0]
        return out

    # -- interception policy --------------------------------------------------------------------

    def _begin_iteration(self, now: float) -> None:
        """Apply the policy's plan for paused requests and set this iteration's budgets."""
        pol = self.intercept
        plan = pol.plan(self, now)
        for req in plan.discard:
            self._discard_paused(req, now)
        self._swap_targets = list(plan.swap_targets)
        self._link_left = [math.inf if b is None else b
                           for b in (pol.swap_out_budget_tokens, pol.swap_in_budget_tokens)]
        if pol.recompute_saturation is None:
            self._recompute_left = None
        else:
            decode = sum(r.num_uncomputed_tokens for r in self.running if not self._recomputing(r))
            self._recompute_left = pol.recompute_budget(decode)

    @staticmethod
    def _recomputing(req: EngineRequest) -> bool:
        return req.num_computed_tokens < req.max_computed_tokens

    def _cap_recompute(self, req: EngineRequest, n: int) -> int:
        """``n`` tokens of ``req``, cut to the recompute tokens left when it is recomputing
        (the whole chunk counts: recomputed and new tokens alike). Chunking applies even
        without chunked prefill: the policy asked for it."""
        left = self._recompute_left
        if left is None or n == 0 or not self._recomputing(req):
            return n
        return min(n, left)

    def _kv_tokens(self, req: EngineRequest) -> int:
        """Tokens of KV (whole blocks) the request holds on the device."""
        return len(self.kv.block_table(req)) * self.kv.block_size

    def _discard_paused(self, req: EngineRequest, now: float) -> None:
        self.kv.free(req, now, cache=False)
        req.num_computed_tokens = 0
        req.pause_mode = PauseMode.DISCARD

    def _relieve(self, now: float) -> bool:
        """Memory ran short: free the next swap target of the policy's plan, swapped out if its
        KV fits in this iteration's swap-out budget and the host pool, else discarded. False
        when no target is left (the caller preempts or waits, as without a policy)."""
        while self._swap_targets:
            req = self._swap_targets.pop(0)
            if req.status != RequestStatus.PAUSED or req.pause_mode != PauseMode.PRESERVE:
                continue
            tokens = self._kv_tokens(req)
            if (self.kv.supports_swap and tokens <= self._link_left[0]
                    and self.kv.can_swap_out(req)):
                self.kv.swap_out(req)
                req.pause_mode = PauseMode.SWAP
                self._link_left[0] -= tokens
                self._link_used[0] += tokens
            else:
                self._discard_paused(req, now)
            return True
        return False

    def _transfer_in(self, req: EngineRequest, tokens: int) -> bool:
        """Move what this iteration's swap-in budget allows of the request's ``tokens`` KV
        tokens; True once all of them have crossed (then it may be swapped in)."""
        rid = req.request_id
        moved = self._swap_in_moved.get(rid, 0)
        step = min(tokens - moved, self._link_left[1])
        self._link_left[1] -= step
        self._link_used[1] += step
        moved += step
        if moved < tokens:
            self._swap_in_moved[rid] = moved
            return False
        self._swap_in_moved.pop(rid, None)
        return True

    def _admission_order(self, budget: int) -> list[EngineRequest] | None:
        """The policy's order for this step's admissions, asked only when one will be tried:
        the steps a decode run skips would not ask it, so a stateful policy sees the same calls
        with the simulator's fast-forward on or off."""
        if not (self.waiting and budget > 0 and not self.swapped
                and len(self.running) < self.config.max_num_seqs):
            return None
        return self.policy.admission_order(self.waiting, self._cached_tokens)

    def _cached_tokens(self, req: EngineRequest) -> int:
        return self.kv.peek_prefix(req.token_ids)

    def _chunk_size(self, req: EngineRequest, budget: int,
                    stops: tuple[int, ...] | None = None) -> int:
        remaining = req.num_uncomputed_tokens
        n = min(remaining, budget)
        if not self.config.enable_chunked_prefill and n < remaining:
            return 0
        stop = (next((p for p in stops if p > req.num_computed_tokens), None)
                if stops is not None else self.kv.next_stop(req))
        if stop is not None:
            n = min(n, stop - req.num_computed_tokens)
        return max(n, 0)

    def _add_chunk(self, out: SchedulerOutput, req: EngineRequest, n: int, now: float) -> None:
        start = req.num_computed_tokens
        out.chunks.append(ScheduledChunk(req, start, n, sample=start + n == req.num_tokens))
        if start < req.max_computed_tokens:
            out.num_recompute_tokens += min(start + n, req.max_computed_tokens) - start
            if self._recompute_left is not None:
                self._recompute_left -= n
        self.kv.on_scheduled(req, start, n, now)

    def _preempt(self, req: EngineRequest, now: float, out: SchedulerOutput) -> None:
        self.running.remove(req)
        req.timeline.num_preemptions += 1
        out.preempted.append(req.request_id)
        mode = self.intercept.preemption_mode or self.config.preemption_mode
        if mode == "swap" and self.kv.supports_swap and self.kv.can_swap_out(req):
            # memory is needed now: the swap goes even beyond the policy's budget
            tokens = self._kv_tokens(req)
            self._link_left[0] = max(0, self._link_left[0] - tokens)
            self._link_used[0] += tokens
            self.kv.swap_out(req)
            req.status = RequestStatus.SWAPPED
            self._enqueue(self.swapped, req)
            return
        # recompute: what it computed may survive in the prefix cache
        self.kv.free(req, now, cache=True)
        req.num_computed_tokens = 0
        req.status = RequestStatus.WAITING
        self._enqueue(self.waiting, req)

    def _returned_tokens(self, req: EngineRequest) -> list[int]:
        icp = req.interceptions[req.next_interception - 1]
        if icp.returned_token_ids is not None:
            return list(icp.returned_token_ids)
        # no ids in the workload: deterministic filler tokens of the right count
        rng = random.Random(f"{req.request_id}:{req.next_interception}")
        return [rng.randrange(1, self.config.vocab_size) for _ in range(icp.returned_tokens)]

    # -- after the forward ----------------------------------------------------------------------

    def update(self, out: SchedulerOutput, sampled: dict[str, int], now: float,
               logprobs: dict[str, Any] | None = None) -> list[EngineRequest]:
        """Advance every scheduled request by its chunk and append its sampled token; returns
        the requests that finished in this step."""
        finished: list[EngineRequest] = []
        for chunk in out.chunks:
            req = chunk.request
            if req.is_finished or req.status != RequestStatus.RUNNING:
                continue  # aborted while the step ran
            # tokens below the high-water mark were computed before and dropped: recomputation
            req.timeline.recomputed_tokens += max(0, min(chunk.end, req.max_computed_tokens) - chunk.start)
            req.num_computed_tokens = chunk.end
            req.max_computed_tokens = max(req.max_computed_tokens, chunk.end)
            if not chunk.sample:
                continue
            token = sampled[req.request_id]
            req.token_ids.append(token)
            req.output_token_ids.append(token)
            if logprobs is not None and req.request_id in logprobs:
                req.logprobs.append(logprobs[req.request_id])
            tl = req.timeline
            if tl.first_token_time is None:
                tl.first_token_time = now
            tl.token_times.append(now)
            status = self._stop_status(req, token)
            if status is not None:
                self._finish(req, status, now)
                finished.append(req)
                continue
            icp = req.interception_due()
            if icp is not None:
                req.next_interception += 1
                mode = self.intercept.pause_mode(req, icp, now)
                self.pause(req.request_id, now, mode, now + icp.duration_s, interception=icp)
        return finished

    # -- decode runs (the simulator's fast-forward) ---------------------------------------------

    # The methods a run skips for its steps 2..k; a subclass overriding one gets no runs.
    _RUN_SKIPS = ("schedule", "update", "_chunk_size", "_add_chunk", "_stop_status")

    def decode_run_limit(self, out: SchedulerOutput, max_steps: int | None = None,
                         step_ends: Callable[[int], Sequence[float]] | None = None) -> int:
        """How many steps, starting with ``out`` (just returned by :meth:`schedule`, not yet
        updated), are provably the same pure-decode batch if no request arrives: ``k`` such
        that steps ``2..k`` would each schedule one token of every request of ``out``, in the
        same order, contexts one longer each step, and nothing else would happen in them (no
        admission, swap-in, resume, preemption, prefix-cache eviction by the backend, finish
        or pause) except possibly in step ``k``'s update. 1 when ``out`` starts no such run.

        Conditions: every chunk of ``out`` is one sampled token and ``out`` schedules every
        running request; no request could be admitted or swapped in (nothing waits or is
        swapped, or the batch is at ``max_num_seqs`` or uses the whole token budget); no
        request can stop on a token (``ignore_eos`` or no EOS id, no ``stop_token_ids``); no
        prefill stop (SSM checkpoint) is pending; no KV crosses the host link; the
        interception policy is :meth:`~core.sched.intercept.InterceptPolicy.quiet`. Then ``k``
        is the smallest of ``max_steps``, the first step after which some request reaches
        ``max_tokens`` or ``max_model_len`` or an interception is due, and the most steps the
        free KV blocks cover (the backend allocates ``block_size``-token blocks as a request
        grows, as both shipped backends do; a paged backend reusing a free block drops its
        cached hash, the same as step by step).
        ``step_ends(k)`` (optional, the end times of steps ``1..k``) is needed to also stop
        before a step that starts at or after a paused request's ``resume_time``; without it
        no run is allowed while a request is paused with a resume time.
        """
        cls = type(self)
        if any(getattr(cls, name) is not getattr(Scheduler, name) for name in self._RUN_SKIPS):
            return 1
        chunks, running, cfg = out.chunks, self.running, self.config
        n = len(chunks)
        if n == 0 or n != len(running) or out.copies:
            return 1
        if out.swap_out_tokens or out.swap_in_tokens or self._swap_in_moved:
            return 1  # host-link transfers are under way
        if self.paused and not self.intercept.quiet(self, out.now):
            return 1  # the interception policy would act in a later step
        k = cfg.max_model_len if max_steps is None else max_steps  # any finite bound
        for c, req in zip(chunks, running, strict=True):
            if c.request is not req or c.num_tokens != 1 or not c.sample:
                return 1
            sp = req.sampling
            if getattr(sp, "stop_token_ids", None) or not (
                    getattr(sp, "ignore_eos", False) or req.eos_token_id is None):
                return 1
            if self.kv.next_stop(req) is not None:
                return 1
            # after step s the request has o + s output tokens and c.start + 1 + s tokens
            o = req.num_output_tokens
            k = min(k, req.max_tokens - o, cfg.max_model_len - c.start - 1)
            if req.next_interception < len(req.interceptions):
                k = min(k, req.interceptions[req.next_interception].after_output_tokens - o)
        if k <= 1:
            return 1
        if self.waiting or self.swapped:
            if cfg.max_num_batched_tokens - n > 0 and n < cfg.max_num_seqs:
                return 1  # an admission or swap-in would be attempted
        k = self._kv_run_limit(chunks, k)
        resumes = [r.resume_time for r in self.paused if r.resume_time is not None]
        if resumes and k > 1:
            if step_ends is None:
                return 1
            ends = step_ends(k)
            # step s (>= 2) starts at ends[s - 2] and must start before the first resume
            k = min(k, 1 + bisect.bisect_left(ends, min(resumes), 0, k - 1))
        return max(k, 1)

    def _kv_run_limit(self, chunks: Sequence[ScheduledChunk], k: int) -> int:
        """The largest ``j <= k`` such that steps ``2..j`` of a decode run fit in the free KV
        blocks (a request whose context is ``c`` in step 1 holds ``ceil((c + s) / bs)`` blocks
        after step ``s``)."""
        bs, free = self.kv.block_size, self.kv.num_free_blocks
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

    def advance_decode_run(self, run: DecodeRun, steps: int) -> list[EngineRequest]:
        """Bring the scheduler to where a step loop would be right after step ``steps`` of
        ``run`` ended: steps ``1..steps`` updated (tokens appended, token times, computed
        counts) and, while the run lasts, step ``steps + 1`` scheduled (its KV allocated). When
        ``steps == run.steps`` the run is over: that last step is updated by :meth:`update`
        itself (finishes, interceptions) and its finished requests are returned.

        The KV backend sees the same calls, in the same order (by step, then by request), as
        a step loop would make, except that calls which would change nothing but the request's
        slot count are merged into the next one: a 1-token growth that neither starts a block
        nor fills one (when a block is filled a prefix-caching backend registers its hash)."""
        if not run.updated <= steps <= run.steps:
            raise ValueError(f"run of {run.steps} steps, {run.updated} applied: cannot advance "
                             f"to step {steps}")  # fmt: skip
        if steps == run.updated:
            return []
        final = steps == run.steps
        chunks = run.out.chunks
        finished: list[EngineRequest] = []
        if run.updated == 0:  # step 1: the ordinary update
            first = {c.request.request_id: run.tokens[c.request.request_id][0] for c in chunks}
            finished = self.update(run.out, first, run.step_ends[0])
            run.updated = 1
            if final and steps == 1:
                return finished
            assert not finished, "a decode run's first step cannot finish a request"
        bulk_to = steps - 1 if final else steps
        if bulk_to > run.updated:
            self._bulk_decode_update(run, run.updated + 1, bulk_to)
            run.updated = bulk_to
        sched_to = steps if final else min(steps + 1, run.steps)
        if sched_to > run.scheduled:
            self._schedule_decode_steps(run, run.scheduled + 1, sched_to)
            run.scheduled = sched_to
        if final:
            s = steps
            out = SchedulerOutput(
                chunks=[ScheduledChunk(c.request, c.start + s - 1, 1, True) for c in chunks],
                now=run.step_start(s))  # fmt: skip
            sampled = {c.request.request_id: run.tokens[c.request.request_id][s - 1] for c in chunks}
            finished = self.update(out, sampled, run.step_ends[s - 1])
            run.updated = s
        return finished

    def _bulk_decode_update(self, run: DecodeRun, a: int, b: int) -> None:
        """:meth:`update` of steps ``a..b`` (2 <= a <= b) of a run, none of which finishes or
        pauses a request (guaranteed by :meth:`decode_run_limit`)."""
        times = run.step_ends[a - 1 : b]
        for c in run.out.chunks:
            req = c.request
            new = run.tokens[req.request_id][a - 1 : b]
            req.token_ids.extend(new)
            req.output_token_ids.extend(new)
            req.timeline.token_times.extend(times)
            # step s computes position c.start + s - 1: recomputed if below the high-water mark
            high = req.max_computed_tokens
            req.timeline.recomputed_tokens += max(0, min(b, high - c.start) - a + 1)
            req.num_computed_tokens = c.start + b
            req.max_computed_tokens = max(high, c.start + b)

    def _schedule_decode_steps(self, run: DecodeRun, a: int, b: int) -> None:
        """The KV side of scheduling steps ``a..b`` (2 <= a <= b) of a run: what
        :meth:`schedule` would ask the backend, in its order (see :meth:`advance_decode_run`)."""
        kv, bs = self.kv, self.kv.block_size
        every_step = type(kv).on_scheduled is not KVBackend.on_scheduled
        chunks = run.out.chunks
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
                self._run_allocate(chunks[idx], done[idx], s, run.step_start(s))
                if every_step:
                    kv.on_scheduled(chunks[idx].request, chunks[idx].start + s - 1, 1, run.step_start(s))
                done[idx] = s
            for idx, c in enumerate(chunks):
                if done[idx] < b:
                    self._run_allocate(c, done[idx], b, run.step_start(b))
        finally:
            for c, v in zip(chunks, saved, strict=True):
                c.request.num_computed_tokens = v

    def _run_allocate(self, chunk: ScheduledChunk, have: int, upto: int, now: float) -> None:
        """Grow ``chunk.request`` from the slots of steps ``1..have`` of its run to
        ``1..upto``."""
        req = chunk.request
        req.num_computed_tokens = chunk.start + have
        if not self.kv.allocate(req, upto - have, None, now):
            raise RuntimeError(f"decode run: KV for request {req.request_id!r} ran out although "
                               "decode_run_limit said it fits")  # fmt: skip

    def _stop_status(self, req: EngineRequest, token: int) -> RequestStatus | None:
        sp = req.sampling
        min_tokens = getattr(sp, "min_tokens", 0)
        if req.num_output_tokens >= min_tokens:
            if not getattr(sp, "ignore_eos", False) and token == req.eos_token_id:
                return RequestStatus.FINISHED_STOPPED
            if token in (getattr(sp, "stop_token_ids", None) or ()):
                return RequestStatus.FINISHED_STOPPED
        if req.num_output_tokens >= req.max_tokens or req.num_tokens >= self.config.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _finish(self, req: EngineRequest, status: RequestStatus, now: float) -> None:
        prev = req.status
        for queue in (self.waiting, self.running, self.swapped, self.paused):
            if req in queue:
                queue.remove(req)
        holds_kv = prev == RequestStatus.RUNNING or (
            prev == RequestStatus.PAUSED and req.pause_mode == PauseMode.PRESERVE)
        if holds_kv:
            self.kv.free(req, now, cache=status != RequestStatus.FINISHED_ERROR)
        elif prev in (RequestStatus.SWAPPED,) or (
                prev == RequestStatus.PAUSED and req.pause_mode == PauseMode.SWAP):
            self.kv.free(req, now, cache=False)
        self._swap_in_moved.pop(req.request_id, None)
        req.status = status
        req.timeline.finish_time = now
