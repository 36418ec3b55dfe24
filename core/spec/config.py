"""``speculative_config``: vLLM's option dict for speculative decoding, parsed and checked."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

METHODS = ("ngram", "draft_model", "suffix")


@dataclass(frozen=True)
class SpeculativeConfig:
    """How a request's next tokens are drafted and how many are verified per step.

    - ``method``: ``"ngram"`` (prompt lookup: the tokens that followed the latest earlier
      occurrence of the context's last ``prompt_lookup_max`` .. ``prompt_lookup_min`` tokens),
      ``"draft_model"`` (a smaller model, ``model``: a checkpoint directory or a config for a
      random-initialized one, with its own KV cache) or ``"suffix"`` (a suffix tree over earlier
      outputs and the request's own tokens; ``suffix_max_depth``, ``suffix_min_token_prob``,
      ``suffix_corpus``: token sequences it starts from). Given ``model`` and no method,
      the method is ``"draft_model"``.
    - ``num_speculative_tokens``: the most draft tokens verified per request and step (k).
    - ``draft_kv_blocks``: KV blocks of the draft model's own cache (None: as many tokens as the
      target's cache holds).
    """

    method: str
    num_speculative_tokens: int
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 1
    model: Any = None
    draft_kv_blocks: int | None = None
    suffix_max_depth: int = 24
    suffix_min_token_prob: float = 0.1
    suffix_corpus: Sequence[Sequence[int]] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"speculative_config: unknown method {self.method!r} (use one of {', '.join(METHODS)})"
            )
        k = self.num_speculative_tokens
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(
                f"speculative_config: num_speculative_tokens must be an int >= 1, got {k!r}"
            )
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError(
                "speculative_config: need 1 <= prompt_lookup_min <= prompt_lookup_max, got "
                f"{self.prompt_lookup_min} and {self.prompt_lookup_max}"
            )
        if self.method == "draft_model" and self.model is None:
            raise ValueError(
                "speculative_config: method 'draft_model' needs 'model' (a path or config)"
            )
        if self.suffix_max_depth < 2:
            raise ValueError(
                f"speculative_config: suffix_max_depth must be >= 2, got {self.suffix_max_depth}"
            )
        if not 0.0 <= self.suffix_min_token_prob <= 1.0:
            raise ValueError(
                f"speculative_config: suffix_min_token_prob must be in [0, 1], got {self.suffix_min_token_prob}"
            )

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | SpeculativeConfig) -> SpeculativeConfig:
        """Parse vLLM's dict (``method``, ``model``, ``num_speculative_tokens``,
        ``prompt_lookup_max``/``min``, ...); an unknown key raises ValueError naming it."""
        if isinstance(options, SpeculativeConfig):
            return options
        if not isinstance(options, Mapping):
            raise ValueError(f"speculative_config must be a dict, got {type(options).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"speculative_config: unknown option(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sorted(known))})"
            )
        opts = dict(options)
        if "num_speculative_tokens" not in opts:
            raise ValueError("speculative_config: 'num_speculative_tokens' is required")
        method = opts.pop("method", None)
        if method is None:
            if opts.get("model") is None:
                raise ValueError("speculative_config: give 'method' or a draft 'model'")
            method = "draft_model"
        model = opts.get("model")
        if isinstance(model, os.PathLike):
            opts["model"] = os.fspath(model)
        return cls(method=method, **opts)
