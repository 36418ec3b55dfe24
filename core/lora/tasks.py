"""Sub-tasks that LoRA adapters of a zoo model are fine-tuned on, torch-free.

Each :class:`AdapterTask` takes problems of one :mod:`core.zoo.tasks` task and changes what
the answer looks like, so an adapter trained on it answers measurably differently from the
base model (which keeps the zoo's format) and from the other adapters:

- ``arith-total``: arith (1-3 steps), the answer line ``Total: 51``;
- ``arith-sentence``: arith (1-3 steps), the answer as a sentence (``Now there are 51.``);
- ``classify-words``: classify, the label spelled out (``positive`` / ``negative``);
- ``classify-score``: classify, the label and the vote margin, how many more words of the
  majority there are (``neg 5``).

The first three keep the base model's skill and change the format; ``classify-score`` asks
for a number the base model was never trained to say (it only learned the vote's sign).
Formats use only tokens the base model was trained on: a token it never saw (``#``) has a
tied embedding that training pushed where every unseen token sits, so no adapter of the
hidden states can make the model say it rather than its twins. Numbers keep the form the base
model writes them in (after a space: ``51 in all`` at the start of a line, a digit token the
base never wrote there, reached 14% after 150 steps).
:func:`check_final` compares the part after the last step separator exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from core.zoo.tasks import (
    EOS,
    STEP_SEPARATOR,
    Example,
    arith_example,
    classify_example,
)

__all__ = ["ADAPTER_TASKS", "AdapterTask", "check_final", "final_answer", "task_examples"]


@dataclass(frozen=True)
class AdapterTask:
    """A sub-task: ``draw(rng)`` one problem in the zoo's format, ``restyle`` it into the
    adapter's format (same prompt, new completion and answer); ``max_tokens`` bounds a greedy
    answer; ``steps`` is how many optimizer steps its adapter is trained for by default."""

    name: str
    description: str
    draw: Callable[[random.Random], Example]
    restyle: Callable[[Example], Example]
    max_tokens: int
    steps: int = 150

    def example(self, rng: random.Random) -> tuple[Example, Example]:
        """One problem: (the zoo's format, this task's format)."""
        original = self.draw(rng)
        return original, self.restyle(original)


def _arith(rng: random.Random) -> Example:
    return arith_example(rng, rng.randint(1, 3))


def _classify(rng: random.Random) -> Example:
    return classify_example(rng, rng.choice((1, 3, 5, 7, 9)))


def _new_answer_line(line: Callable[[Example], str]) -> Callable[[Example], Example]:
    """Replace an arith completion's ``Answer: N`` line with ``line(example)``."""

    def restyle(ex: Example) -> Example:
        steps = ex.completion.rsplit(STEP_SEPARATOR, 1)[0]
        answer = line(ex)
        return replace(ex, completion=steps + STEP_SEPARATOR + answer + EOS, answer=answer)

    return restyle


def _new_label(label: Callable[[Example], str]) -> Callable[[Example], Example]:
    def restyle(ex: Example) -> Example:
        answer = label(ex)
        return replace(ex, completion=answer + EOS, answer=answer)

    return restyle


def _score(ex: Example) -> str:
    return f"{ex.answer} {ex.difficulty}"


ADAPTER_TASKS: dict[str, AdapterTask] = {
    t.name: t
    for t in (
        AdapterTask(
            "arith-total",
            "arith of 1-3 steps, the answer line 'Total: 51'",
            _arith,
            _new_answer_line(lambda ex: f"Total: {ex.answer}"),
            64,
        ),
        AdapterTask(
            "arith-sentence",
            "arith of 1-3 steps, the answer as a sentence: 'Now there are 51.'",
            _arith,
            _new_answer_line(lambda ex: f"Now there are {ex.answer}."),
            64,
        ),
        AdapterTask(
            "classify-words",
            "classify, the label spelled out: 'positive' / 'negative'",
            _classify,
            _new_label(lambda ex: "positive" if ex.answer == "pos" else "negative"),
            6,
        ),
        AdapterTask(
            "classify-score",
            "classify, the label and the vote margin: 'neg 5'",
            _classify,
            _new_label(_score),
            6,
        ),
    )
}


def task_examples(
    task: AdapterTask, seed: int | str, n: int, exclude: frozenset[str] = frozenset()
) -> list[tuple[Example, Example]]:
    """``n`` problems of ``task`` from ``seed`` whose prompts are not in ``exclude``, each in
    the zoo's format and in the task's."""
    rng = random.Random(f"lora-task:{task.name}:{seed}")
    out: list[tuple[Example, Example]] = []
    while len(out) < n:
        pair = task.example(rng)
        if pair[0].prompt not in exclude:
            out.append(pair)
    return out


def final_answer(completion: str) -> str:
    """What follows the last step separator, before EOS (the whole text for one-line
    answers)."""
    return completion.split(EOS, 1)[0].strip().rsplit(STEP_SEPARATOR, 1)[-1]


def check_final(example: Example, completion: str, stopped: bool = True) -> bool:
    """Whether a completion ended (``stopped``) with exactly the reference's final answer."""
    return stopped and final_answer(completion) == example.answer
