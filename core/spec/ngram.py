"""Prompt lookup (n-gram) drafting: copy what followed the same n tokens earlier."""

from __future__ import annotations

from collections.abc import Sequence

from .drafter import Draft, Drafter, DraftRequest


def ngram_lookup(tokens: Sequence[int], n_max: int, n_min: int, k: int) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier occurrence of the last ``n`` tokens
    of ``tokens``, for the largest ``n`` in ``[n_min, n_max]`` that occurs; empty if none."""
    size = len(tokens)
    if k <= 0:
        return []
    seq = list(tokens)
    for n in range(min(n_max, size - 1), n_min - 1, -1):
        tail = seq[size - n :]
        first = tail[0]
        # latest start i < size - n with seq[i:i+n] == tail; what follows it is the draft
        for i in range(size - n - 1, -1, -1):
            if seq[i] == first and seq[i : i + n] == tail:
                return seq[i + n : i + n + k]
    return []


class NgramDrafter(Drafter):
    """vLLM's ``"ngram"`` method: prompt lookup over the request's own tokens (prompt and
    output). Deterministic (``q`` one-hot), no state, no model."""

    name = "ngram"

    def __init__(self, prompt_lookup_max: int = 4, prompt_lookup_min: int = 1) -> None:
        if not 1 <= prompt_lookup_min <= prompt_lookup_max:
            raise ValueError(
                f"need 1 <= prompt_lookup_min <= prompt_lookup_max, got {prompt_lookup_min}, "
                f"{prompt_lookup_max}"
            )
        self.n_max = prompt_lookup_max
        self.n_min = prompt_lookup_min

    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]:
        return [
            Draft(ngram_lookup(r.token_ids, self.n_max, self.n_min, r.num_drafts)) for r in requests
        ]
