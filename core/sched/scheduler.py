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
            raise ValueError(
                f"preemption_mode must be 'recompute' or 'swap', got {self.preemption_mode!r}"
            )
        if self.discard_requeue not in ("tail", "head"):
            raise ValueError(
                f"discard_requeue must be 'tail' or 'head', got {self.discard_requeue!r}"
            )


@dataclass
class ScheduledChunk:
    """``num_tokens`` tokens of ``request`` computed this step, from position ``start``;
    ``sample`` when the chunk ends at the request's last known token (a new token follows).
    ``spec_token_ids``: draft tokens fed after the request's known tokens, the last
    ``len(spec_token_ids)`` of ``num_tokens`` (speculative decoding verifies them in this step;
    :mod:`core.spec`)."""

    request: EngineRequest
    start: int
    num_tokens: int
    sample: bool
    spec_token_ids: tuple[int, ...] = ()

    @property
    def end(self) -> int:
        return self.start + self.num_tokens

    @property
    def num_spec_tokens(self) -> int:
        return len(self.spec_token_ids)

    @property
    def input_token_ids(self) -> list[int]:
        """The tokens this chunk feeds the model: known tokens, then any draft tokens."""
        known = self.request.token_ids[self.start : self.end - self.num_spec_tokens]
        return [*known, *self.spec_token_ids]


@dataclass
class SpecOutcome:
    """What verifying draft tokens gave (speculative decoding, :mod:`core.spec`), besides the
    one sampled token per request: ``accepted`` draft tokens (they precede the sampled one),
    ``drafts`` proposed for each request's next step, and ``rolled_back``: requests whose SSM
    state the runner restored to its chunk's start (a hybrid model after a rejection)."""

    accepted: dict[str, list[int]] = field(default_factory=dict)
    drafts: dict[str, list[int]] = field(default_factory=dict)
    rolled_back: set[str] = field(default_factory=set)


@dataclass
class SchedulerOutput:
    """What one step computes, and the tensor copies it needs first/after.

    ``swap_out_tokens`` / ``swap_in_tokens``: KV tokens (whole blocks) that cross the host link
    for this step, each way: swaps queued since the previous step was scheduled, and the part
    of a longer swap-in done in this step; ``swap_overlaps_forward``: the transfer runs beside
    the forward (pipelined) rather than before it. ``num_recompute_tokens``: tokens of the
    chunks that were computed before (recomputation); ``recompute_budget``: the cap on the
    chunks of recomputing requests this step (None: no cap). ``lora_step``: the step's LoRA
    mode (a :class:`core.lora.scheduler.LoRAStep`) when a LoRA scheduler made it, else None.
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
    lora_step: Any = None

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        """Nothing to compute and nothing crossing the host link."""
        return not self.chunks and not self.swap_out_tokens and not self.swap_in_tokens


class Scheduler:
    """Continuous batching over a :class:`~core.kv.backend.KVBackend`; see the module doc.

    ``intercept``: the :class:`~core.sched.intercept.InterceptPolicy` (or its name) for paused
    requests' KV; None keeps it (``"preserve"``). It may be replaced between steps.
    """

    supports_decode_runs = True
    """Whether a decode run (:mod:`core.sched.decode_run`, the simulator's fast-forward) may
    stand for this class's pure-decode steps: it applies what :meth:`schedule` and
    :meth:`update` would do without calling them. Not inherited: a subclass whose steps are
    still this class's declares it again, any other gets no runs."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.supports_decode_runs = bool(cls.__dict__.get("supports_decode_runs", False))

    def __init__(
        self,
        config: SchedulerConfig,
        kv: KVBackend,
        policy: QueuePolicy | str = "fcfs",
        intercept: InterceptPolicy | str | None = None,
    ) -> None:
        self.config = config
        self.kv = kv
        self.policy = make_policy(policy)
        self.intercept = make_intercept_policy(intercept)
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
            return (
                f"needs KV for {need} tokens (prompt + max_tokens + tool returns), the "
                f"cache holds {self.kv.capacity_tokens}"
            )
        if not cfg.enable_chunked_prefill and n > cfg.max_num_batched_tokens:
            return (
                f"prompt of {n} tokens exceeds max_num_batched_tokens="
                f"{cfg.max_num_batched_tokens} without chunked prefill"
            )
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

    def pause(
        self,
        request_id: str,
        now: float,
        mode: PauseMode = PauseMode.PRESERVE,
        resume_time: float | None = None,
        interception: Any = None,
    ) -> None:
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

    @property
    def swap_ins_in_progress(self) -> bool:
        """Some swapped-out request's KV has partly crossed the host link back."""
        return bool(self._swap_in_moved)

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
            n += self._num_spec_tokens(req, n, budget)
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

        order = self._admission_order(budget) if self.policy.custom_admission_order else None
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
        self._link_left = [
            math.inf if b is None else b
            for b in (pol.swap_out_budget_tokens, pol.swap_in_budget_tokens)
        ]
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
            if self.kv.supports_swap and tokens <= self._link_left[0] and self.kv.can_swap_out(req):
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
        # a budget is whole tokens or inf (never the min: tokens - moved is finite), so int()
        # only tells the type checker the step is a token count
        step = int(min(tokens - moved, self._link_left[1]))
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
        if not (
            self.waiting
            and budget > 0
            and not self.swapped
            and len(self.running) < self.config.max_num_seqs
        ):
            return None
        return self.policy.admission_order(self.waiting, self._cached_tokens)

    def _cached_tokens(self, req: EngineRequest) -> int:
        return self.kv.peek_prefix(req.token_ids)

    def _chunk_size(
        self, req: EngineRequest, budget: int, stops: tuple[int, ...] | None = None
    ) -> int:
        remaining = req.num_uncomputed_tokens
        n = min(remaining, budget)
        if not self.config.enable_chunked_prefill and n < remaining:
            return 0
        stop = (
            next((p for p in stops if p > req.num_computed_tokens), None)
            if stops is not None
            else self.kv.next_stop(req)
        )
        if stop is not None:
            n = min(n, stop - req.num_computed_tokens)
        return max(n, 0)

    def _num_spec_tokens(self, req: EngineRequest, n: int, budget: int) -> int:
        """Draft tokens to verify after the ``n`` known tokens of ``req``'s chunk: only when
        the chunk reaches its last known token, within the token budget, the output tokens
        left and the model length, and never across a prefill stop (an SSM checkpoint)."""
        if not req.spec_token_ids or n != req.num_uncomputed_tokens:
            return 0
        if self.kv.next_stop(req) is not None:
            return 0
        room = min(
            budget - n,
            req.max_tokens - req.num_output_tokens - 1,
            self.config.max_model_len - req.num_tokens - 1,
        )
        return max(0, min(len(req.spec_token_ids), room))

    def _add_chunk(self, out: SchedulerOutput, req: EngineRequest, n: int, now: float) -> None:
        start = req.num_computed_tokens
        spec = tuple(req.spec_token_ids[: max(0, start + n - req.num_tokens)])
        out.chunks.append(
            ScheduledChunk(req, start, n, sample=start + n >= req.num_tokens, spec_token_ids=spec)
        )
        if start < req.max_computed_tokens:
            out.num_recompute_tokens += min(start + n, req.max_computed_tokens) - start
            if self._recompute_left is not None:
                self._recompute_left -= n
        self.kv.on_scheduled(req, start, n, now)

    def _preempt(self, req: EngineRequest, now: float, out: SchedulerOutput) -> None:
        self.running.remove(req)
        req.spec_token_ids = []
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

    def update(
        self,
        out: SchedulerOutput,
        sampled: dict[str, int],
        now: float,
        logprobs: dict[str, Any] | None = None,
        spec: SpecOutcome | None = None,
    ) -> list[EngineRequest]:
        """Advance every scheduled request by its chunk and append its sampled token (after
        the draft tokens ``spec`` says were accepted, each checked for a stop); returns the
        requests that finished in this step."""
        finished: list[EngineRequest] = []
        for chunk in out.chunks:
            req = chunk.request
            if req.is_finished or req.status != RequestStatus.RUNNING:
                continue  # aborted while the step ran
            known_end = chunk.end - chunk.num_spec_tokens
            # tokens below the high-water mark were computed before and dropped: recomputation
            req.timeline.recomputed_tokens += max(
                0, min(known_end, req.max_computed_tokens) - chunk.start
            )
            req.num_computed_tokens = known_end
            if not chunk.sample:
                req.max_computed_tokens = max(req.max_computed_tokens, known_end)
                continue
            rid = req.request_id
            accepted = spec.accepted.get(rid, []) if spec is not None else []
            tokens = [*accepted[: chunk.num_spec_tokens], sampled[rid]]
            tl = req.timeline
            if tl.first_token_time is None:
                tl.first_token_time = now
            status, icp, appended = None, None, 0
            for token in tokens:
                appended += 1
                req.token_ids.append(token)
                req.output_token_ids.append(token)
                tl.token_times.append(now)
                status = self._stop_status(req, token)
                icp = req.interception_due() if status is None else None
                if status is not None or icp is not None:
                    break
            if logprobs is not None and rid in logprobs:
                req.logprobs.append(logprobs[rid])
            stale_state = chunk.num_spec_tokens > 0 and self._settle_spec(
                req, chunk, appended, len(tokens) - 1, spec
            )
            req.max_computed_tokens = max(req.max_computed_tokens, req.num_computed_tokens)
            req.spec_token_ids = list(spec.drafts.get(rid, ())) if spec is not None else []
            if status is not None:
                if stale_state:  # its SSM state is ahead of its tokens: nothing to cache
                    self.kv.free(req, now, cache=False)
                self._finish(req, status, now)
                finished.append(req)
                continue
            if icp is not None:
                req.next_interception += 1
                mode = self.intercept.pause_mode(req, icp, now)
                if stale_state and mode == PauseMode.PRESERVE:
                    mode = PauseMode.DISCARD
                self.pause(req.request_id, now, mode, now + icp.duration_s, interception=icp)
        return finished

    def _settle_spec(
        self,
        req: EngineRequest,
        chunk: ScheduledChunk,
        kept: int,
        num_accepted: int,
        spec: SpecOutcome | None,
    ) -> bool:
        """After a step that verified draft tokens: count them, set the computed tokens to the
        positions whose KV holds accepted tokens (the last known token stays uncomputed) and
        free the rejected ones' KV slots. Hybrid models: the SSM state covers the whole chunk
        unless the runner rolled it back to the chunk's start; True when it is ahead of the
        tokens (a stop among accepted drafts), so it must not be cached or kept."""
        # ``kept`` tokens were appended this step; the first ``num_accepted`` of them were drafts
        tl = req.timeline
        tl.num_draft_tokens += chunk.num_spec_tokens
        tl.num_accepted_tokens += num_accepted
        tl.num_spec_steps += 1
        known_end = chunk.end - chunk.num_spec_tokens
        computed = min(known_end + min(kept, num_accepted), req.num_tokens - 1)
        stale = False
        if self.kv.hybrid:
            if spec is not None and req.request_id in spec.rolled_back:
                computed = chunk.start
            else:
                stale = computed != chunk.end
        req.num_computed_tokens = computed
        self.kv.truncate(req, computed)
        return stale

    def _stop_status(self, req: EngineRequest, token: int) -> RequestStatus | None:
        sp = req.sampling
        min_tokens = getattr(sp, "min_tokens", 0)
        if req.num_output_tokens >= min_tokens:
            if not getattr(sp, "ignore_eos", False) and token in req.eos_token_ids:
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
            prev == RequestStatus.PAUSED and req.pause_mode == PauseMode.PRESERVE
        )
        if holds_kv:
            self.kv.free(req, now, cache=status != RequestStatus.FINISHED_ERROR)
        elif prev in (RequestStatus.SWAPPED,) or (
            prev == RequestStatus.PAUSED and req.pause_mode == PauseMode.SWAP
        ):
            self.kv.free(req, now, cache=False)
        self._swap_in_moved.pop(req.request_id, None)
        req.status = status
        req.timeline.finish_time = now
