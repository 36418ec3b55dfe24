"""SpecReason's loop and its baselines over any step models: torch-free, so the control flow is
tested with fake models and a fake judge.

A problem is solved one step at a time (a step ends at the blank line). Per step the small model
writes a step, the judge scores it 0-9 from the large model's one prefill over history + step,
and the step is kept when ``score >= tau``; otherwise the large model writes that step. The
large model's KV of the history stays in its engine's prefix cache between steps, so a judge's
prefill and a regeneration pay only for the new tokens. Stops at a final answer, a repeated
step, or the step budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Event:
    """Work one model did, enough to price it at another scale: ``prefill`` of ``tokens`` new
    tokens over ``context`` cached ones, ``decode`` of ``tokens`` one-token steps starting at
    ``context``, or ``verify``: ``tokens`` target steps of token-level speculation, each over
    ``drafts`` draft tokens (drafted by the other model) at a mean ``context``."""

    model: str  # "small" or "large"
    kind: str  # "prefill", "decode", "verify"
    tokens: int
    context: int
    drafts: int = 0


@dataclass
class Generation:
    """What a model wrote (token ids; a step ends with its newline or EOS) and its work."""

    token_ids: list[int]
    events: list[Event]
    finished: bool  # ended with EOS
    draft_tokens: int = 0
    accepted_tokens: int = 0


class StepModel(Protocol):
    """A model the loop drives: ``write`` continues ``ids`` greedily until the end of the step
    (``step=True``: the newline that ends a line, or EOS) or of the completion (EOS), at most
    ``max_tokens`` tokens."""

    name: str

    def write(self, ids: Sequence[int], max_tokens: int, *, step: bool) -> Generation: ...


class Judge(Protocol):
    """Scores the small model's ``step`` (token ids) after ``history`` (token ids) of problem
    number ``index`` at step position ``position``, 0-9 (higher: better); returns the score and
    the large model's events it cost (none for an oracle)."""

    name: str

    def score(
        self, history: Sequence[int], step: Sequence[int], position: int
    ) -> tuple[float, list[Event]]: ...


@dataclass
class StepRecord:
    """One step of a SpecReason run: the small model's proposal, the judge's score, whether it
    was kept, and the length of the step kept (the proposal's or the large model's)."""

    position: int
    proposal: list[int]
    score: float
    accepted: bool
    kept_tokens: int


@dataclass
class Solution:
    """A run on one problem: the completion's token ids (the prompt excluded), its work,
    wall-clock and this thread's CPU seconds, and SpecReason's steps (empty for the one-model
    baselines)."""

    token_ids: list[int]
    finished: bool
    events: list[Event]
    seconds: float
    cpu_seconds: float
    steps: list[StepRecord] = field(default_factory=list)
    draft_tokens: int = 0
    accepted_tokens: int = 0


def solve(model: StepModel, prompt: Sequence[int], max_tokens: int) -> Solution:
    """A baseline: one model writes the whole completion in one request."""
    t0, c0 = time.perf_counter(), time.thread_time()
    g = model.write(prompt, max_tokens, step=False)
    return Solution(
        g.token_ids,
        g.finished,
        g.events,
        time.perf_counter() - t0,
        time.thread_time() - c0,
        draft_tokens=g.draft_tokens,
        accepted_tokens=g.accepted_tokens,
    )


def spec_reason(
    prompt: Sequence[int],
    small: StepModel,
    large: StepModel,
    judge: Judge,
    tau: float,
    *,
    newline: int,
    max_steps: int,
    step_tokens: int = 40,
    decide: Callable[[float, float], bool] = lambda score, tau: score >= tau,
) -> Solution:
    """SpecReason on one problem (see the module doc). ``newline``: the token that ends a line;
    a kept step gets a second one (the blank line). Steps run to ``max_steps``."""
    t0, c0 = time.perf_counter(), time.thread_time()
    history = list(prompt)
    out: list[int] = []
    events: list[Event] = []
    records: list[StepRecord] = []
    drafts = accepted = 0
    previous: list[int] | None = None
    finished = False
    for position in range(max_steps):
        proposal = small.write(history, step_tokens, step=True)
        events += proposal.events
        score, judge_events = judge.score(history, proposal.token_ids, position)
        events += judge_events
        keep = decide(score, tau)
        step = proposal
        if not keep:
            step = large.write(history, step_tokens, step=True)
            events += step.events
            drafts += step.draft_tokens
            accepted += step.accepted_tokens
        records.append(
            StepRecord(position, list(proposal.token_ids), score, keep, len(step.token_ids))
        )
        ids = list(step.token_ids)
        if step.finished or not ids:
            out += ids
            finished = step.finished
            break
        if ids == previous:  # a repeated step: the run is stuck
            break
        previous = list(ids)
        if ids[-1] == newline:
            ids.append(newline)
        history += ids
        out += ids
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    return Solution(out, finished, events, wall, cpu, records, drafts, accepted)
