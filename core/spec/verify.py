"""Verification of draft tokens against the target model's distributions: greedy matching and
modified rejection sampling (Leviathan et al. 2023; Chen et al. 2023), lossless in both cases."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from core.engine.sampling import SAMPLING_EPS, apply_top_k_top_p


def target_probs(logits: torch.Tensor, sampling: Any) -> torch.Tensor:
    """The distribution the sampler draws a random row from: logits divided by the
    temperature, top-k and top-p applied, softmax. ``logits`` ``[n, vocab]`` (one request)."""
    n = logits.shape[0]
    scaled = logits.float() / float(sampling.temperature)
    k = torch.full((n,), int(sampling.top_k), dtype=torch.long, device=logits.device)
    p = torch.full((n,), float(sampling.top_p), dtype=torch.float32, device=logits.device)
    use_k = 0 < int(sampling.top_k) < logits.shape[-1]
    use_p = float(sampling.top_p) < 1.0
    scaled = apply_top_k_top_p(scaled, k if use_k else None, p if use_p else None)
    return scaled.softmax(dim=-1)


def block_stop_tokens(
    logits: torch.Tensor,
    sampling: Any,
    num_output_tokens: int,
    eos_token_id: int | Iterable[int] | None,
) -> torch.Tensor:
    """``min_tokens`` for a row per position: row ``i`` is the distribution of the request's
    output token ``num_output_tokens + i``, whose stop/EOS ids are blocked while that is below
    ``min_tokens`` (as the sampler does one token at a time). Returns a copy when it blocks."""
    min_tokens = int(getattr(sampling, "min_tokens", 0) or 0)
    if num_output_tokens >= min_tokens:
        return logits
    ids = [t for t in sampling.all_stop_token_ids(eos_token_id) if t < logits.shape[-1]]
    rows = min(logits.shape[0], min_tokens - num_output_tokens)
    if not ids or rows <= 0:
        return logits
    logits = logits.clone()
    logits[:rows, torch.tensor(ids, device=logits.device)] = -math.inf
    return logits


def blocks_stop_tokens(sampling: Any, num_output_tokens: int) -> bool:
    """Whether :func:`block_stop_tokens` would change a row at this output length."""
    return num_output_tokens < int(getattr(sampling, "min_tokens", 0) or 0)


def is_greedy(sampling: Any) -> bool:
    return sampling is None or float(sampling.temperature) < SAMPLING_EPS


def verify_greedy(logits: torch.Tensor | Sequence[int], draft: Sequence[int]) -> tuple[int, int]:
    """``logits`` ``[len(draft) + 1, vocab]``: the target's at each draft position and after
    the last (or their argmax ids). Accept drafts while each equals the target's argmax;
    ``(accepted, next_token)`` where the next token is the argmax after the accepted ones
    (exactly what decoding one token at a time gives)."""
    best = logits.argmax(dim=-1).tolist() if isinstance(logits, torch.Tensor) else list(logits)
    a = 0
    while a < len(draft) and draft[a] == best[a]:
        a += 1
    return a, int(best[a])


def verify_sampled(
    p: torch.Tensor,
    draft: Sequence[int],
    q: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Modified rejection sampling. ``p`` ``[len(draft) + 1, vocab]``: the target's
    distributions; ``q`` ``[len(draft), vocab]``: the draft's (None: one-hot at each draft,
    as for a deterministic drafter). Draft ``i`` is accepted with probability
    ``min(1, p_i(x) / q_i(x))``; at the first rejection the token is drawn from the normalized
    ``max(0, p_i - q_i)``, and if all are accepted from ``p_k``. The tokens produced are then
    distributed exactly as sampling from ``p`` one token at a time. ``(accepted, next_token)``."""
    n = len(draft)
    dev = p.device
    if n:
        idx = torch.arange(n, device=dev)
        d = torch.tensor(list(draft), dtype=torch.long, device=dev)
        p_d = p[idx, d]
        q_d = q[idx, d] if q is not None else torch.ones(n, device=dev)
        u = torch.rand(n, generator=generator, device=dev)
        ok = (u * q_d <= p_d).tolist()
        a = 0
        while a < n and ok[a]:
            a += 1
    else:
        a = 0
    if a < n:
        if q is not None:
            residual = (p[a] - q[a]).clamp_min_(0)
        else:
            residual = p[a].clone()
            residual[int(draft[a])] = 0
        total = float(residual.sum())
        dist = residual / total if total > 0 else p[a]  # p == q: a rejection has probability 0
    else:
        dist = p[n]
    token = torch.multinomial(dist, 1, generator=generator)
    return a, int(token)
