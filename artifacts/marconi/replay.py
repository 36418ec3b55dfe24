"""Cache-level session replay: the engine-free driver of Marconi's hit-rate experiments.

Requests (prompt and output token ids) go through one :class:`~core.kv.radix.RadixCache`
bounded in bytes, one at a time in arrival order, as the authors' simulator drives its tree:

1. match the whole prompt (``match_prefix``): the hit is the prefix up to the deepest node
   holding an SSM checkpoint; a match ending inside an edge splits it there (the branch point);
2. the admission policy names the positions whose state the request's prefill (and decode)
   captures: Marconi's and SGLang+'s the branch point, vLLM+'s every 32 tokens; plus the leaf
   (the state after prompt + output) when the policy admits it;
3. insert prompt + output with those checkpoints; the insertion evicts other entries until the
   cache fits (the new sequence's path is protected first, then evicted too if it alone is too
   big).

No locks are taken: requests are served one at a time, so nothing can evict between the match
and the insertion, and the insertion protects its own path. Time is logical, as the authors'
(``use_logical_ts``): request ``i`` (0-based, in arrival order) is matched at ``2i`` and
inserted at ``2i + 1``, so recency is measured in operations, not seconds.

Page sizes: Marconi and SGLang+ run token-level (``page_size = 1``, as the authors'); vLLM+
on 32-token blocks, in the accounting layout of :class:`BlockLRUEviction` (one node per run
of blocks instead of per block: the same hits and bytes at a fraction of the cost;
``exact_blocks=True`` gives the slot-exact layout an engine uses).

Per request the result gives the prompt length, the hit, the FLOPs the hit saved
(``costs.prefix_flops(hit)``) and the FLOPs its uncached part needs
(``costs.prefill_flops(prompt_len, hit)``), by the paper's formulas (:class:`MarconiCosts`).
The Marconi policy tunes alpha once on the way (:class:`AlphaTuner`).

Differences from the authors' simulator: it evicts *before* inserting, by an estimate of the
bytes needed, and may then evict nodes on the path it is about to insert; we insert first and
evict others until the cache fits, so the bytes held never exceed the capacity by more than
what cannot be evicted, and freed bytes are exact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from core.kv.policies import AdmissionPolicy, EvictionPolicy
from core.kv.radix import RadixCache

from .policies import (
    ALPHA_GRID,
    AlphaTuner,
    BlockLRUEviction,
    FlopAwareEviction,
    MarconiCosts,
    make_marconi_policies,
    policy_page_size,
    vllm_plus_accounting_cache,
)

__all__ = ["CacheReplayer", "ReplayRequest", "ReplayResult", "RequestOutcome", "replay_requests"]


class ReplayRequest(Protocol):
    """What the replay reads from a request (e.g. :class:`core.workload.schema.Request`);
    ``request_id`` is optional."""

    arrival_time: float
    prompt_token_ids: Sequence[int] | None
    output_token_ids: Sequence[int] | None


class CacheReplayer:
    """Serves requests on one cache the way the module docstring describes (steps 1-3).

    Contract: :meth:`serve` changes only ``cache``; KV values and checkpoint slots are fresh
    integers counted up from ``first_value`` (the cache treats them as opaque ids: start a
    replay on a cloned tree above every id the tree holds).
    """

    def __init__(self, cache: RadixCache, *, first_value: int = 0):
        self.cache = cache
        self.next_value = first_value

    def serve(
        self, prompt: Sequence[int], output: Sequence[int], *, match_now: float, insert_now: float
    ) -> tuple[int, int]:
        """Match ``prompt``, insert ``prompt + output``; returns ``(hit_tokens, matched_tokens)``."""
        cache = self.cache
        m = cache.match_prefix(prompt, match_now)
        seq = (*prompt, *output)
        v = self.next_value
        ckpts: dict[int, int] = {}
        if cache.hybrid:
            # the positions the request's forward captures: branch point / every k tokens ...
            for p in cache.checkpoint_positions(seq, m):
                ckpts[p] = v
                v += 1
            # ... and its live state at the end, if admitted
            if cache.admit_leaf(seq) and len(seq) not in ckpts:
                ckpts[len(seq)] = v
                v += 1
        fresh = len(seq) - m.matched_len
        values = m.values + tuple(range(v, v + fresh))  # the matched part reuses the tree's
        self.next_value = v + fresh
        cache.insert(seq, values, insert_now, checkpoints=ckpts)
        return m.hit_len, m.matched_len


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """One replayed request: its hit and the prefill FLOPs saved and still needed."""

    request_id: str
    arrival_time: float
    prompt_len: int
    output_len: int
    hit_tokens: int  # reusable: up to the deepest checkpoint (<= matched_tokens <= prompt_len)
    matched_tokens: int  # tokens whose KV was cached, reusable or not
    flops_saved: float  # costs.prefix_flops(hit_tokens)
    flops_uncached: float  # costs.prefill_flops(prompt_len, hit_tokens)


@dataclass
class ReplayResult:
    """What :func:`replay_requests` measured.

    Totals: ``token_hit_rate`` = hit tokens / prompt tokens; ``flops_saved_fraction`` = FLOPs
    saved / all prefill FLOPs (saved + still needed); ``request_hit_rate`` = requests with a
    hit / requests. ``evicted_*`` count what the cache evicted (nodes: leaves removed plus
    one-child nodes merged). ``n0`` is the number of requests seen at the first eviction,
    ``tuned_alpha`` the alpha tuning chose (None without tuning, or if the run ended before the
    tuning window did) and ``alpha_scores`` the FLOPs each alpha saved in the tuning replay.
    ``wall_seconds`` and ``cache`` (kept on request) do not take part in equality.
    """

    policy: str
    capacity_bytes: int
    page_size: int
    requests: list[RequestOutcome]
    evicted_nodes: int
    evicted_tokens: int
    evicted_checkpoints: int
    final_bytes: int
    n0: int | None = None
    tuned_alpha: float | None = None
    alpha_scores: dict[float, float] = field(default_factory=dict)
    wall_seconds: float = field(default=0.0, compare=False)
    cache: RadixCache | None = field(default=None, compare=False, repr=False)

    @property
    def num_requests(self) -> int:
        return len(self.requests)

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_len for r in self.requests)

    @property
    def hit_tokens(self) -> int:
        return sum(r.hit_tokens for r in self.requests)

    @property
    def flops_saved(self) -> float:
        return math.fsum(r.flops_saved for r in self.requests)

    @property
    def flops_uncached(self) -> float:
        return math.fsum(r.flops_uncached for r in self.requests)

    @property
    def token_hit_rate(self) -> float:
        p = self.prompt_tokens
        return self.hit_tokens / p if p else 0.0

    @property
    def request_hit_rate(self) -> float:
        return (
            sum(r.hit_tokens > 0 for r in self.requests) / self.num_requests
            if self.requests
            else 0.0
        )

    @property
    def flops_saved_fraction(self) -> float:
        total = self.flops_saved + self.flops_uncached
        return self.flops_saved / total if total else 0.0

    def throughput(self) -> tuple[float, float]:
        """Replay speed: (requests/s, prompt+output tokens/s) over ``wall_seconds``."""
        if self.wall_seconds <= 0:
            return 0.0, 0.0
        tokens = sum(r.prompt_len + r.output_len for r in self.requests)
        return self.num_requests / self.wall_seconds, tokens / self.wall_seconds

    def summary(self) -> dict[str, float | int | str | None]:
        """One tidy row (for metrics.csv)."""
        return {
            "policy": self.policy,
            "capacity_bytes": self.capacity_bytes,
            "page_size": self.page_size,
            "requests": self.num_requests,
            "prompt_tokens": self.prompt_tokens,
            "hit_tokens": self.hit_tokens,
            "token_hit_rate": self.token_hit_rate,
            "request_hit_rate": self.request_hit_rate,
            "flops_saved": self.flops_saved,
            "flops_saved_fraction": self.flops_saved_fraction,
            "evicted_nodes": self.evicted_nodes,
            "evicted_checkpoints": self.evicted_checkpoints,
            "n0": self.n0,
            "tuned_alpha": self.tuned_alpha,
        }


def _ordered(
    requests: Iterable[ReplayRequest],
) -> list[tuple[str, ReplayRequest, Sequence[int], Sequence[int]]]:
    out = []
    for i, r in enumerate(requests):
        rid = str(getattr(r, "request_id", i))
        prompt, output = r.prompt_token_ids, r.output_token_ids
        if prompt is None or output is None:
            missing = "prompt_token_ids" if prompt is None else "output_token_ids"
            raise ValueError(f"request {rid!r} has no {missing}: the replay needs token ids")
        if not math.isfinite(r.arrival_time):
            raise ValueError(f"request {rid!r} has arrival_time={r.arrival_time}")
        out.append((rid, r, prompt, output))
    # arrival order; ties keep the input order (sorted is stable)
    out.sort(key=lambda x: x[1].arrival_time)
    return out


def replay_requests(
    requests: Iterable[ReplayRequest],
    *,
    capacity_bytes: int,
    policy: str | tuple[AdmissionPolicy, EvictionPolicy] = "marconi",
    costs: MarconiCosts | None = None,
    page_size: int | None = None,
    tune: bool | None = None,
    window_factor: int = 5,
    alphas: Sequence[float] = ALPHA_GRID,
    exact_blocks: bool = False,
    keep_cache: bool = False,
) -> ReplayResult:
    """Replay ``requests`` in arrival order through a cache of ``capacity_bytes``.

    Args:
        policy: a name of :data:`~.policies.POLICY_NAMES` or an ``(admission,
            eviction)`` pair, used as is (e.g. ``make_marconi_policies("marconi", alpha=0.7)``
            for a static alpha; a tuner would change the pair's alpha).
        costs: the model's FLOP and byte formulas (default: the paper's 7B hybrid); the cache
            counts bytes with its sizes.
        page_size: the cache's page size (default: :func:`policy_page_size` of a named policy;
            for a pair, the block size of a :class:`BlockLRUEviction`, else 1).
        tune: attach an :class:`AlphaTuner` (default: only for ``"marconi"``); needs a
            :class:`FlopAwareEviction`.
        window_factor, alphas: the tuner's (5, or 15 for LMSys-like traces; 0..2.0 step 0.1).
        exact_blocks: vLLM+ only: keep one node and one checkpoint per block (the slot-exact
            layout an engine needs) instead of the equivalent accounting layout of
            :class:`BlockLRUEviction`, which costs per run of blocks instead of per block.
        keep_cache: return the final cache in the result (for inspection).
    """
    if (
        isinstance(capacity_bytes, bool)
        or not isinstance(capacity_bytes, int)
        or capacity_bytes < 0
    ):
        raise ValueError(f"capacity_bytes must be an integer >= 0, got {capacity_bytes!r}")
    costs = costs or MarconiCosts.paper_7b()
    if isinstance(policy, str):
        name = policy
        admission, eviction = make_marconi_policies(name, costs)
        page = page_size if page_size is not None else policy_page_size(name)
        tune = (name == "marconi") if tune is None else tune
    else:
        admission, eviction = policy
        name = f"{type(admission).__name__}+{type(eviction).__name__}"
        block = eviction.block_size if isinstance(eviction, BlockLRUEviction) else 1
        page = page_size if page_size is not None else block
        tune = bool(tune)
    tuner = None
    if tune:
        if not isinstance(eviction, FlopAwareEviction):
            raise ValueError(f"tune=True needs a FlopAwareEviction, got {eviction!r}")
        tuner = AlphaTuner(eviction, window_factor=window_factor, alphas=alphas)
    cache = None
    if isinstance(eviction, BlockLRUEviction) and not exact_blocks and page == eviction.block_size:
        cache = vllm_plus_accounting_cache(
            costs, capacity_bytes=capacity_bytes, block_size=page, eviction=eviction
        )
    blocks = cache is not None  # the accounting layout: count evictions per block, as the exact one
    if cache is None:
        cache = costs.new_cache(
            capacity_bytes=capacity_bytes, page_size=page, eviction=eviction, admission=admission
        )
    rep = CacheReplayer(cache)
    outcomes: list[RequestOutcome] = []
    n0: int | None = None
    start = time.perf_counter()
    for i, (rid, r, prompt, output) in enumerate(_ordered(requests)):
        t_match, t_insert = 2.0 * i, 2.0 * i + 1
        hit, matched = rep.serve(prompt, output, match_now=t_match, insert_now=t_insert)
        if n0 is None and (cache.stats.evicted_tokens or cache.stats.evicted_checkpoints):
            n0 = i + 1
        if tuner is not None:
            tuner.observe(cache, prompt, output, t_insert, match_now=t_match)
        p = len(prompt)
        outcomes.append(
            RequestOutcome(
                rid,
                float(r.arrival_time),
                p,
                len(output),
                hit,
                matched,
                costs.prefix_flops(hit),
                costs.prefill_flops(p, hit),
            )
        )
    wall = time.perf_counter() - start
    s = cache.stats
    return ReplayResult(
        policy=name,
        capacity_bytes=capacity_bytes,
        page_size=page,
        requests=outcomes,
        evicted_nodes=s.evicted_tokens // page if blocks else s.evicted_nodes,
        evicted_tokens=s.evicted_tokens,
        evicted_checkpoints=s.evicted_tokens // page if blocks else s.evicted_checkpoints,
        final_bytes=cache.total_bytes,
        n0=n0,
        tuned_alpha=tuner.tuned_alpha if tuner is not None else None,
        alpha_scores=dict(tuner.scores) if tuner is not None else {},
        wall_seconds=wall,
        cache=cache if keep_cache else None,
    )
