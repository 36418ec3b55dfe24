"""SpecReason's judges: the large model's own step likelihood mapped to 0-9 (the primary one),
and an oracle (the exact step checker) that separates the judge's quality from the mechanism.

The paper's judge decodes one score token after a prompt asking for a 0-9 rating. The zoo's
models were never trained to emit a score, so that judge is not offered here (the checklist
says so); the likelihood judge costs the same one prefill and no decode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

from core.zoo.tasks import ANSWER_PREFIX, Example, check_answer, check_arith_step

from .reason import Event

JUDGES = ("likelihood", "oracle")


def likelihood_score(logprobs: Sequence[float]) -> float:
    """0-9 from a step's token log-probabilities: 9 x the geometric mean token probability
    (9: the large model would have written every token itself, with certainty)."""
    if not logprobs:
        return 0.0
    return 9.0 * math.exp(sum(logprobs) / len(logprobs))


class Scorer(Protocol):
    """The large model's log-probabilities of ``step`` after ``history`` from one prefill, and
    the prefix-cache hit that prefill had."""

    def logprobs(self, history: Sequence[int], step: Sequence[int]) -> tuple[list[float], int]: ...


class LikelihoodJudge:
    """Scores a step by the large model's likelihood of it (:func:`likelihood_score`), read
    from one prefill of history + step through ``scorer`` (a
    :class:`~.engines.StepScorer`)."""

    name = "likelihood"

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def score(
        self, history: Sequence[int], step: Sequence[int], position: int
    ) -> tuple[float, list[Event]]:
        logprobs, cached = self.scorer.logprobs(history, step)
        new = len(history) + len(step) - cached
        return likelihood_score(logprobs), [Event("large", "prefill", new, cached)]


class OracleJudge:
    """9 for a right step, 0 for a wrong one, by the task's exact checkers: an arithmetic step
    must be exactly the right step at its position, an answer step the right answer. Free (no
    model runs), so its runs show the mechanism with a perfect judge."""

    name = "oracle"

    def __init__(self, example: Example, decode: Callable[[Sequence[int]], str]) -> None:
        self.example = example
        self.decode = decode

    def score(
        self, history: Sequence[int], step: Sequence[int], position: int
    ) -> tuple[float, list[Event]]:
        return (9.0 if self.right(step, position) else 0.0), []

    def right(self, step: Sequence[int], position: int) -> bool:
        text = self.decode(step).strip()
        if text.startswith(ANSWER_PREFIX):
            return position == self.example.difficulty and check_answer(self.example, text)
        return check_arith_step(self.example, position, text)
