"""Where a simulated replica's time and memory go: recomputation, swap stalls, idle KV.

InferCept's argument is an accounting of *waste*, GPU memory x time that produces nothing.
The simulator reports busy time and per-request timelines, but not which part of a step was
recomputation, how long the batch waited for the host link, or how much KV sat idle on the
device while its request was paused. :class:`StepProbe` measures these without touching a
policy: it is the replica's cost model and host link (it passes every call through to the real
ones and returns exactly their answer) and it wraps the replica's interception policy
(:class:`ObservedPolicy` returns exactly the wrapped policy's decisions). So a probed run makes
the same decisions, in the same virtual time, as an unprobed one; the tests check that.

What it measures, per replica (token counts are KV tokens; ``M`` is KV bytes per token):

- ``recompute_s``: forward time spent recomputing. For every step that recomputes, the step's
  time minus the time of the same step without the recomputed part of each chunk (the marginal
  cost: what the batch waited for the recomputation). A step that only recomputes counts whole,
  as a vLLM prefill iteration of a returning request does.
- ``swap_stall_s``: time the batch waited for the host link: the whole transfer when swaps are
  not overlapped with the forward (vLLM's swap), else the part of it longer than the forward.
- waste, in token-seconds (x ``M`` for bytes x seconds), after the paper's definitions:

  - preserve: KV of paused requests kept on the device, integrated over time;
  - recompute: ``recompute_s`` of each step x the KV the step's batch holds (the recomputed
    context and everyone else's wait for it: ``T_fwd(C_i) * (C_i + C_other)``);
  - swap: ``swap_stall_s`` of each step x the KV of the step's batch.

Preserved KV is tracked at each scheduler iteration (the policy's :meth:`plan` is asked once per
iteration, after returning calls resumed): between two iterations the set of preserved paused
requests does not change except by what the first iteration did to it (the policy's discards,
and swap-outs or discards of swap targets when memory ran out, which the next iteration sees).
Decode runs that the simulator fast-forwards contain no recomputation, no swap and no change in
the paused set (``core.sched.decode_run.decode_run_limit``), so the probe loses nothing to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.sched.intercept import InterceptPolicy, IterationPlan
from core.sched.request import EngineRequest, PauseMode, RequestStatus
from core.sched.scheduler import ScheduledChunk, SchedulerOutput


@dataclass
class ProbeTotals:
    """The probe's sums over a run (seconds, KV tokens, token-seconds)."""

    recompute_s: float = 0.0
    recompute_steps: int = 0
    swap_stall_s: float = 0.0
    swap_out_tokens: int = 0
    swap_in_tokens: int = 0
    preserve_waste: float = 0.0
    recompute_waste: float = 0.0
    swap_waste: float = 0.0


def without_recompute(out: SchedulerOutput) -> SchedulerOutput:
    """The step ``out`` with the recomputed part of every chunk removed (tokens below the
    request's high-water mark were computed before and are being computed again)."""
    chunks = []
    for c in out.chunks:
        high = c.request.max_computed_tokens
        if c.end <= high:
            continue  # all recomputation
        start = max(c.start, high)
        chunks.append(ScheduledChunk(c.request, start, c.end - start, c.sample))
    return SchedulerOutput(chunks=chunks, now=out.now)


def recomputed_in(out: SchedulerOutput) -> int:
    """Tokens of ``out`` below their request's high-water mark."""
    return sum(max(0, min(c.end, c.request.max_computed_tokens) - c.start) for c in out.chunks)


class ObservedPolicy(InterceptPolicy):
    """``inner`` exactly (same attributes, same decisions), and the preserved-KV integral.

    Only reads the scheduler: :meth:`plan` returns ``inner.plan(sched, now)`` unchanged.
    """

    def __init__(self, inner: InterceptPolicy, totals: ProbeTotals) -> None:
        self.inner = inner
        self.totals = totals
        for name in (
            "name",
            "requeue",
            "preemption_mode",
            "recompute_saturation",
            "swap_out_budget_tokens",
            "swap_in_budget_tokens",
            "pipelined_swap",
        ):
            setattr(self, name, getattr(inner, name))
        self._held: list[tuple[EngineRequest, int]] = []
        self._since = 0.0

    def pause_mode(self, req: EngineRequest, interception: Any, now: float) -> PauseMode:
        return self.inner.pause_mode(req, interception, now)

    def quiet(self, sched: Any, now: float) -> bool:
        return self.inner.quiet(sched, now)

    def recompute_budget(self, decode_tokens: int) -> int | None:
        return self.inner.recompute_budget(decode_tokens)

    def plan(self, sched: Any, now: float) -> IterationPlan:
        # KV preserved since the last iteration: still paused and preserved, or resumed just
        # now from a preserved pause (running again); a request the last iteration swapped out
        # or discarded (it is paused in another mode, or waiting / swapped after resuming) had
        # left the device then.
        held = sum(
            tokens
            for r, tokens in self._held
            if r.status == RequestStatus.RUNNING
            or (r.status == RequestStatus.PAUSED and r.pause_mode == PauseMode.PRESERVE)
        )
        self.totals.preserve_waste += held * (now - self._since)
        plan = self.inner.plan(sched, now)
        dropped = {id(r) for r in plan.discard}
        self._held = [
            (r, r.num_computed_tokens)
            for r in sched.paused
            if r.pause_mode == PauseMode.PRESERVE and id(r) not in dropped
        ]
        self._since = now
        return plan

    def __repr__(self) -> str:
        return f"ObservedPolicy({self.inner!r})"


class StepProbe:
    """A replica's cost model and host link, passed through, with the accounting of the module
    doc. Use :meth:`replica_kwargs` for :class:`~core.sim.simulator.ReplicaConfig`."""

    def __init__(self, cost: Any, host_link: Any, policy: InterceptPolicy) -> None:
        self.cost = cost
        self.link = host_link
        self.totals = ProbeTotals()
        self.policy = ObservedPolicy(policy, self.totals)
        self._last: tuple[SchedulerOutput, float, int] | None = None
        if callable(getattr(cost, "decode_run_times", None)):
            # pure decode runs: nothing to account, keep the cost model's vectorized path
            self.decode_run_times = cost.decode_run_times

    def replica_kwargs(self) -> dict[str, Any]:
        return {"cost": self, "host_link": self, "intercept": self.policy}

    # -- cost model ---------------------------------------------------------------------------

    def step_time_for(self, out: SchedulerOutput) -> float:
        dt = float(self.cost.step_time_for(out))
        batch_kv = sum(c.end for c in out.chunks)
        self._last = (out, dt, batch_kv)
        if recomputed_in(out):
            rest = without_recompute(out)
            r = dt - (float(self.cost.step_time_for(rest)) if rest.chunks else 0.0)
            t = self.totals
            t.recompute_s += r
            t.recompute_steps += 1
            t.recompute_waste += r * batch_kv
        return dt

    # -- host link ----------------------------------------------------------------------------

    def swap_s(self, tokens: int) -> float:
        s = float(self.link.swap_s(tokens))
        if self._last is None:
            return s
        out, dt, batch_kv = self._last
        stall = max(0.0, s - dt) if out.swap_overlaps_forward else s
        t = self.totals
        t.swap_stall_s += stall
        t.swap_waste += stall * batch_kv
        t.swap_out_tokens += out.swap_out_tokens
        t.swap_in_tokens += out.swap_in_tokens
        return s
