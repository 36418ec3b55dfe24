"""Routing and traffic matrices of one MoE layer.

A routing matrix ``R[s, e]`` counts the tokens that source GPU ``s`` (where the token's
attention ran) sends to expert ``e``; top-k routing counts a token once per chosen expert. A
placement ``p[e]`` names the GPU that holds expert ``e``. The dispatch all-to-all then moves
``R[s, e] * bytes_per_token`` bytes from GPU ``s`` to GPU ``p[e]`` (nothing when they are the
same GPU); the combine all-to-all moves the same bytes back (the transpose).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Placement = Sequence[int] | np.ndarray
"""One GPU index per expert."""


def check_routing(routing: np.ndarray) -> np.ndarray:
    """``routing`` as a float array, or ValueError naming what is wrong with it."""
    r = np.asarray(routing, dtype=float)
    if r.ndim != 2 or 0 in r.shape:
        raise ValueError(f"a routing matrix is [sources, experts], got shape {r.shape}")
    if not np.isfinite(r).all() or (r < 0).any():
        raise ValueError("a routing matrix holds finite token counts >= 0")
    return r


def check_placement(placement: Placement, experts: int, gpus: int) -> np.ndarray:
    """``placement`` as an int array of one GPU per expert, or ValueError."""
    p = np.asarray(placement, dtype=int)
    if p.shape != (experts,):
        raise ValueError(f"a placement names one GPU per expert ({experts}), got {p.shape}")
    if (p < 0).any() or (p >= gpus).any():
        raise ValueError(f"placement {p.tolist()} names a GPU outside 0..{gpus - 1}")
    return p


def zipf_routing(
    sources: int,
    experts: int,
    tokens_per_source: int,
    *,
    skew: float,
    top_k: int = 2,
    rng: np.random.Generator,
    shared_popularity: bool = True,
) -> np.ndarray:
    """Token counts ``[sources, experts]`` with expert popularity ~ Zipf(``skew``): each source
    routes ``tokens_per_source`` tokens to ``top_k`` distinct experts each, drawn without
    replacement in proportion to ``rank ** -skew``. The popularity order is one random
    permutation shared by all sources (``shared_popularity``) or one per source. ``skew = 0``
    is uniform routing."""
    if not 1 <= top_k <= experts:
        raise ValueError(f"top_k must be in 1..{experts}, got {top_k}")
    if skew < 0:
        raise ValueError(f"skew must be >= 0, got {skew}")
    weights = np.arange(1, experts + 1, dtype=float) ** -skew
    order = rng.permutation(experts)
    out = np.zeros((sources, experts))
    for s in range(sources):
        if not shared_popularity:
            order = rng.permutation(experts)
        w = np.empty(experts)
        w[order] = weights
        # Gumbel top-k: k distinct experts per token, each drawn in proportion to w
        keys = np.log(w)[None, :] + rng.gumbel(size=(tokens_per_source, experts))
        chosen = np.argpartition(-keys, top_k - 1, axis=1)[:, :top_k]
        out[s] = np.bincount(chosen.ravel(), minlength=experts)
    return out


def dispatch_bytes(
    routing: np.ndarray, placement: Placement, gpus: int, bytes_per_token: float
) -> np.ndarray:
    """The dispatch traffic ``D[i, j]`` in bytes from GPU ``i`` to GPU ``j`` (zero diagonal:
    tokens whose expert sits on their own GPU do not cross the network). Sources are GPUs
    ``0..sources-1``."""
    r = check_routing(routing)
    if r.shape[0] > gpus:
        raise ValueError(f"{r.shape[0]} source GPUs but a cluster of {gpus}")
    p = check_placement(placement, r.shape[1], gpus)
    d = np.zeros((gpus, gpus))
    for e, g in enumerate(p):
        d[: r.shape[0], g] += r[:, e] * bytes_per_token
    np.fill_diagonal(d, 0.0)
    return d


def expert_loads(routing: np.ndarray) -> np.ndarray:
    """Tokens each expert computes: the column sums of the routing matrix."""
    return check_routing(routing).sum(axis=0)
