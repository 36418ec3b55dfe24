"""The pure parts of the peer comparison: the jobs sent to workers, the interleaved order of
rounds, the ratios, and the agreement of greedy outputs. No processes here, so all of it is
tested directly."""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

AGREEMENT_PREFIXES = (1, 4, 16)


@dataclass(frozen=True)
class Job:
    """One ``generate`` request for a worker: prompts and each one's output length."""

    prompts: list[list[int]]
    max_tokens: list[int]

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.max_tokens):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.max_tokens)} lengths")

    def payload(self) -> dict[str, Any]:
        """The JSON request (protocol in ``peer_workers/_protocol.py``)."""
        return {"cmd": "generate", "prompts": self.prompts, "max_tokens": self.max_tokens}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Job:
        return cls([list(map(int, p)) for p in data["prompts"]], list(map(int, data["max_tokens"])))

    @property
    def useful_tokens(self) -> int:
        return sum(self.max_tokens)


@dataclass(frozen=True)
class DecodeJobs:
    """Batch-1 decode as the difference of two single-request runs with equally long prompts:
    ``first`` generates 1 token (prefill + first token), ``full`` generates ``1 + steps``. Their
    time difference is ``steps`` decode steps, free of prefill and of per-call overhead, and the
    same recipe works for every system whatever timestamps its API exposes."""

    first: Job
    full: Job
    steps: int

    @classmethod
    def make(cls, prompt_a: list[int], prompt_b: list[int], steps: int) -> DecodeJobs:
        if len(prompt_a) != len(prompt_b):
            raise ValueError("the two decode prompts must be equally long")
        if steps < 1:
            raise ValueError(f"decode steps must be >= 1, got {steps}")
        return cls(Job([prompt_a], [1]), Job([prompt_b], [1 + steps]), steps)

    def tokens_per_s(self, first_s: float, full_s: float) -> float:
        """Decode tokens/s from the two runs' times, NaN when noise made the difference <= 0."""
        gap = full_s - first_s
        return self.steps / gap if gap > 0 else float("nan")


def schedule(systems: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of systems in each round: every system once per round, the order rotated by
    one each round (A B C, B C A, C A B, ...), so no system always runs first or right after
    the same neighbour, and a slow drift of the machine hits all of them alike."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    n = len(systems)
    return [[systems[(r + i) % n] for i in range(n)] for r in range(rounds)]


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v and v not in (float("inf"), float("-inf"))]
    return statistics.median(finite) if finite else float("nan")


def ratios(per_round: Mapping[str, Sequence[float]], ours: str) -> dict[str, dict[str, Any]]:
    """``ours / peer`` for a rate (higher is better) measured once per round for each system.

    The ratio of each round pairs measurements taken minutes apart, so drift cancels; the
    reported ``ratio`` is the median of those, ``per_round`` lists them, and ``ours`` /
    ``peer`` hold the median rates. Rounds where either side is missing (NaN) are left out.
    """
    if ours not in per_round:
        raise KeyError(f"no measurements of {ours!r}")
    mine = per_round[ours]
    out: dict[str, dict[str, Any]] = {}
    for peer, theirs in per_round.items():
        if peer == ours:
            continue
        if len(theirs) != len(mine):
            raise ValueError(f"{peer}: {len(theirs)} rounds, {ours}: {len(mine)}")
        each = [
            a / b if a == a and b == b and b > 0 else float("nan")
            for a, b in zip(mine, theirs, strict=True)
        ]
        out[peer] = {
            "ratio": _median(each),
            "per_round": each,
            "ours": _median(mine),
            "peer": _median(theirs),
        }
    return out


def agreement(
    ours: Sequence[Sequence[int]],
    theirs: Sequence[Sequence[int]],
    prefixes: Sequence[int] = AGREEMENT_PREFIXES,
) -> dict[str, Any]:
    """How far two systems' greedy outputs for the same requests agree.

    ``first_<n>``: the share of requests whose first ``n`` tokens are equal (a request shorter
    than ``n`` counts when all its tokens are equal); ``exact``: the share equal in full;
    ``mean_common_prefix``: the mean share of each request's output before the first
    difference. A random-init fp32 model can turn after a near-tie in the logits, so a
    difference late in an output is not by itself a bug; an early one in many requests is.
    """
    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} outputs vs {len(theirs)}")
    if not ours:
        raise ValueError("no outputs to compare")

    shared = [
        len(os.path.commonprefix([list(a), list(b)])) for a, b in zip(ours, theirs, strict=True)
    ]
    lengths = [max(len(a), len(b)) for a, b in zip(ours, theirs, strict=True)]
    n = len(ours)
    out: dict[str, Any] = {"n_requests": n}
    for k in prefixes:
        out[f"first_{k}"] = sum(s >= min(k, m) for s, m in zip(shared, lengths, strict=True)) / n
    out["exact"] = sum(list(a) == list(b) for a, b in zip(ours, theirs, strict=True)) / n
    out["mean_common_prefix"] = statistics.fmean(
        s / m if m else 1.0 for s, m in zip(shared, lengths, strict=True)
    )
    diverged = [s for s, m in zip(shared, lengths, strict=True) if s < m]
    out["first_difference_median"] = statistics.median(diverged) if diverged else None
    return out
