"""The drafter interface: whatever proposes the tokens a speculative step verifies."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class DraftRequest:
    """One request to draft for: its known tokens (prompt and outputs so far, including the
    tokens of the step just verified), how many drafts it may use, and its sampling (a draft
    model samples with it; None or greedy params: argmax)."""

    request_id: str
    token_ids: Sequence[int]
    num_prompt_tokens: int
    num_drafts: int
    sampling: Any = None
    generator: Any = None


@dataclass
class Draft:
    """Proposed tokens and, when they were drawn from a distribution, that distribution ``q``
    (``[len(token_ids), vocab]`` probabilities, row ``i`` the one token ``i`` was drawn from).
    ``probs`` None means each token was chosen deterministically (``q`` is one-hot), as for the
    n-gram and suffix drafters and a greedy draft model."""

    token_ids: list[int]
    probs: Any = None


class Drafter(ABC):
    """Proposes up to ``num_drafts`` next tokens per request, for the target model to verify.

    Contract: :meth:`propose` returns one :class:`Draft` per request, in order, each at most
    ``num_drafts`` long (empty: nothing to propose; the request decodes one token). A drafter
    may keep per-request state (a draft model's KV); :meth:`release` drops it when the request
    ends, and :meth:`observe` shows it each finished request's tokens (a corpus for drafting
    later requests). Drafters that need no torch (n-gram, suffix) also run in the simulator.
    """

    name: str = "drafter"

    @abstractmethod
    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]: ...

    def observe(self, prompt_token_ids: Sequence[int], output_token_ids: Sequence[int]) -> None:  # noqa: B027
        """A request finished with these tokens (default: ignored)."""

    def release(self, request_id: str) -> None:  # noqa: B027
        """Forget the request's state (default: none is kept)."""
