"""Speculative decoding in the simulator: the same scheduler, a cost model for the verify and
draft steps, and acceptance from a token drafter over the reference tokens or from a rate.

Torch-free. The verify step needs no new pricing rule: a chunk with ``k`` draft tokens is
``k + 1`` new tokens over its cached context, which a :class:`~core.sim.cost.CostModel` prices
like any multi-token chunk (:func:`~core.sim.cost.chunks_of`). The draft step is priced by
the draft model's own cost model (``k`` one-token steps over the drafting sequences) or, for
a model-free drafter, by a fixed overhead per drafting sequence.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.sched.runner import StepResult
from core.sched.scheduler import SchedulerOutput, SpecOutcome
from core.sim.cost import CostModel
from core.sim.simulator import FILLER_TOKEN, SimulatedRunner, StepCost

from .drafter import Drafter, DraftRequest


def expected_tokens_per_step(acceptance: float, k: int) -> float:
    """Tokens a verify step yields on average when each draft is accepted independently with
    probability ``acceptance`` (Leviathan et al.): ``(1 - a^(k+1)) / (1 - a)``."""
    a = min(max(acceptance, 0.0), 1.0)
    if a >= 1.0:
        return float(k + 1)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def expected_speedup(
    acceptance: float, k: int, draft_cost_ratio: float, verify_cost_ratio: float = 1.0
) -> float:
    """Speedup over one-token decoding: tokens per step over the step's cost, in units of a
    decode step: ``k`` draft steps of relative cost ``draft_cost_ratio`` each (c) plus a verify
    step of relative cost ``verify_cost_ratio`` (~1 while decoding is memory-bound)."""
    return expected_tokens_per_step(acceptance, k) / (k * draft_cost_ratio + verify_cost_ratio)


def draft_step_time(draft_cost: CostModel, contexts: Sequence[int], k: int) -> float:
    """Seconds of ``k`` draft-model steps over sequences with these contexts: the first feeds
    each sequence's newest token, the others one draft each (contexts one longer per step)."""
    return float(sum(draft_cost.step_time((), [c + i for c in contexts]) for i in range(k)))


@dataclass
class SpecSimConfig:
    """Speculation for a simulated replica.

    - ``num_speculative_tokens``: k.
    - ``drafter``: a torch-free :class:`~core.spec.drafter.Drafter` (n-gram, suffix) that
      drafts from the request's tokens; a draft is accepted while it equals the request's
      reference tokens (what the target says). Or None, and then ``acceptance_rate``: each
      draft (the reference token) is accepted with that probability, independently (a draft
      model's measured rate), seeded per request by ``seed``.
    - ``draft_cost``: the draft model's cost model (None: model-free drafting, which costs
      ``draft_overhead_s`` per drafting sequence and step).
    """

    num_speculative_tokens: int
    drafter: Drafter | None = None
    acceptance_rate: float | None = None
    draft_cost: Any = None
    draft_overhead_s: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_speculative_tokens < 1:
            raise ValueError(
                f"num_speculative_tokens must be >= 1, got {self.num_speculative_tokens}"
            )
        if (self.drafter is None) == (self.acceptance_rate is None):
            raise ValueError("give exactly one of drafter and acceptance_rate")
        if self.acceptance_rate is not None and not 0.0 <= self.acceptance_rate <= 1.0:
            raise ValueError(f"acceptance_rate must be in [0, 1], got {self.acceptance_rate}")

    def runner(self, cost: StepCost, host_link: Any = None) -> SpecSimulatedRunner:
        """The replica's runner (:attr:`core.sim.ReplicaConfig.runner_factory` takes this)."""
        return SpecSimulatedRunner(cost, host_link, spec=self)


class SpecSimulatedRunner(SimulatedRunner):
    """A :class:`~core.sim.simulator.SimulatedRunner` that verifies the scheduled drafts
    (against the reference tokens) and proposes the next ones, timing each step as the verify
    forward (the target's cost model) plus the draft step. Decode fast-forward is off for it
    (every step changes the drafts)."""

    speculative = True

    def __init__(self, cost: StepCost, host_link: Any = None, *, spec: SpecSimConfig) -> None:
        super().__init__(cost, host_link)
        self.spec = spec
        self._rngs: dict[str, random.Random] = {}
        self._requests: dict[str, Any] = {}

    @staticmethod
    def _reference(req: Any, start: int, n: int) -> list[int]:
        ref = getattr(req.sampling, "reference", None)
        toks = list(ref[start : start + n]) if ref is not None else []
        return toks + [FILLER_TOKEN] * (n - len(toks))

    def _rng(self, rid: str) -> random.Random:
        rng = self._rngs.get(rid)
        if rng is None:
            rng = self._rngs[rid] = random.Random(f"{self.spec.seed}:{rid}")
        return rng

    def execute(self, out: SchedulerOutput) -> StepResult:
        result = super().execute(out)  # times the step; samples the chunks without drafts
        spec = result.spec = SpecOutcome()
        for c in out.chunks:
            if not (c.sample and c.num_spec_tokens):
                continue
            req = c.request
            o = req.num_output_tokens
            truth = self._reference(req, o, c.num_spec_tokens + 1)
            a = 0
            if self.spec.acceptance_rate is not None:
                rng = self._rng(req.request_id)
                while a < c.num_spec_tokens and rng.random() < self.spec.acceptance_rate:
                    a += 1
            else:
                while a < c.num_spec_tokens and c.spec_token_ids[a] == truth[a]:
                    a += 1
            spec.accepted[req.request_id] = truth[:a]
            result.sampled[req.request_id] = truth[a]
        result.forward_s += self._propose(out, result)
        return result

    def _propose(self, out: SchedulerOutput, result: StepResult) -> float:
        """Drafts for the next step into ``result.spec``; the draft step's seconds."""
        spec = result.spec
        assert spec is not None
        k = self.spec.num_speculative_tokens
        asks: list[DraftRequest] = []
        for c in out.chunks:
            if not c.sample:
                continue
            req = c.request
            rid = req.request_id
            self._requests[rid] = req
            new = [*spec.accepted.get(rid, ()), result.sampled[rid]]
            n_out = req.num_output_tokens + len(new)
            room = min(k, req.max_tokens - n_out - 1)
            if room <= 0:
                continue
            if self.spec.drafter is None:  # a draft model at a measured rate: the truth
                spec.drafts[rid] = self._reference(req, n_out, room)
            asks.append(DraftRequest(rid, [*req.token_ids, *new], req.num_prompt_tokens, room))
        if asks and self.spec.drafter is not None:
            for ask, d in zip(asks, self.spec.drafter.propose(asks), strict=True):
                if d.token_ids:
                    spec.drafts[ask.request_id] = list(d.token_ids)
        drafting = [a for a in asks if a.request_id in spec.drafts]
        if self.spec.draft_cost is not None:
            steps = max((len(spec.drafts[a.request_id]) for a in drafting), default=0)
            return draft_step_time(
                self.spec.draft_cost, [len(a.token_ids) - 1 for a in drafting], steps
            )
        return self.spec.draft_overhead_s * len(drafting)

    def forget(self, request_id: str) -> None:
        """The request finished: show its tokens to the drafter, drop its state."""
        self._rngs.pop(request_id, None)
        req = self._requests.pop(request_id, None)
        drafter = self.spec.drafter
        if drafter is not None:
            if req is not None and req.status.finish_reason in ("stop", "length"):
                drafter.observe(req.prompt_token_ids, req.output_token_ids)
            drafter.release(request_id)
