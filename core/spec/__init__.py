"""Speculative decoding: drafters propose tokens, the target verifies them in one forward.

- :class:`SpeculativeConfig`: vLLM's ``speculative_config`` dict (``method`` ``"ngram"``,
  ``"draft_model"`` or ``"suffix"``, ``num_speculative_tokens``, ...).
- :class:`Drafter` and its implementations: :class:`NgramDrafter` (prompt lookup),
  :class:`SuffixDrafter` (suffix trees over earlier outputs and the request's own tokens), and
  ``core.spec.draft_model.DraftModelDrafter`` (a smaller model with its own KV cache; torch).
- ``core.spec.runner.SpecModelRunner``: the engine's runner with verification (greedy matching
  or modified rejection sampling, lossless either way); ``core.spec.sim``: the simulator's
  (a cost model prices the verify and draft steps).

The scheduler side is generic (``EngineRequest.spec_token_ids``, ``ScheduledChunk.spec_token_ids``,
``SpecOutcome``): draft tokens count against the token budget and rejected ones' KV is freed.
This package's top level imports without torch. Guide: docs/core/spec.md.
"""

from .config import METHODS, SpeculativeConfig
from .drafter import Draft, Drafter, DraftRequest
from .ngram import NgramDrafter, ngram_lookup
from .suffix import SuffixDrafter, SuffixTree

__all__ = [
    "METHODS",
    "Draft",
    "DraftRequest",
    "Drafter",
    "NgramDrafter",
    "SpeculativeConfig",
    "SuffixDrafter",
    "SuffixTree",
    "ngram_lookup",
]
