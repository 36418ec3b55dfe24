"""Marconi (MLSys'25) prefix-caching policies for hybrid models, and its two baselines.

Everything here plugs into :class:`~core.kv.radix.RadixCache` through its two policy
interfaces, so the real engine (:class:`~core.kv.backend.RadixKVBackend`) and the cache-level
replay (:mod:`.replay`) run the very same objects:

- :class:`MarconiCosts`: the paper's per-layer FLOP and byte formulas (the ``marconi_*``
  functions) for one model (layer counts, ``d``, ``n``); :meth:`MarconiCosts.new_cache` builds a cache whose byte accounting is
  the one the eviction policy assumes.
- :class:`FlopAwareEviction`: Marconi's eviction. Candidates are nodes with at most one child
  (evicting a one-child node frees only its checkpoint); score = minmax(recency) +
  alpha * minmax(FLOP efficiency), lowest evicted first, re-scored after every victim.
- :class:`AlphaTuner`: the one-time tuning of alpha by replaying a window of past requests
  from a snapshot of the tree with every alpha of a grid.
- :class:`BlockLRUEviction`: vLLM+'s "LRU over blocks".
- :func:`make_marconi_policies`: ``(admission, eviction)`` for ``"marconi"``,
  ``"marconi-alpha0"``, ``"sglang+"`` and ``"vllm+"``; :func:`policy_page_size` gives the
  cache page size each one runs with.

The three systems, as the paper compares them (SGLang+ vs vLLM+ isolates admission, Marconi vs
SGLang+ isolates eviction):

======================  =====================================  ==================================
policy                  admission (SSM checkpoints)            eviction
======================  =====================================  ==================================
``"marconi"``           leaf + branch point (prefill split)    FLOP-aware, alpha tuned once
``"sglang+"``           leaf + branch point (prefill split)    LRU over leaves, path refreshed
``"vllm+"``             every 32 tokens, block-aligned         LRU over 32-token blocks
======================  =====================================  ==================================

Page size: Marconi and SGLang+ run on a token-level tree (``page_size = 1``, as Marconi's own
simulator); vLLM+ on 32-token pages (``page_size = 32``, vLLM's block-aligned caching): with
a checkpoint at every page boundary each node is one block, its 32 tokens of KV and the state
after them, and LRU over leaves is LRU over blocks. The cache-level replay runs vLLM+ in an
equivalent, much cheaper layout (runs of blocks per node; see :class:`BlockLRUEviction`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING

from core.kv.clock import Clock
from core.kv.policies import (
    AdmissionPolicy,
    CheckpointAtBranchesAndLeaves,
    CheckpointEveryK,
    EvictionPolicy,
    LRUEviction,
)
from core.kv.radix import RadixCache

if TYPE_CHECKING:
    from core.kv.radix import RadixNode
    from core.model.spec import ModelSpec

__all__ = [
    "ALPHA_GRID",
    "POLICY_NAMES",
    "VLLM_BLOCK_SIZE",
    "AlphaTuner",
    "BlockLRUEviction",
    "FlopAwareEviction",
    "MarconiCosts",
    "make_marconi_policies",
    "marconi_attn_flops",
    "marconi_kv_bytes_per_token",
    "marconi_mamba_flops",
    "marconi_mlp_flops",
    "marconi_ssm_state_bytes",
    "policy_page_size",
    "vllm_plus_accounting_cache",
]

ALPHA_GRID: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(21))
"""The alphas Marconi's tuning tries: 0, 0.1, ..., 2.0."""

POLICY_NAMES: tuple[str, ...] = ("marconi", "marconi-alpha0", "sglang+", "vllm+")
VLLM_BLOCK_SIZE = 32


# --------------------------------------------------------------------------------------------
# Marconi's simplified per-layer formulas (paper, Section on FLOP-aware eviction), verbatim.
# On the ``marconi-hybrid-7b`` preset they agree with core.model.spec's exact counts on KV bytes,
# on the attention and MLP linear FLOPs and on Mamba2 FLOPs (within 0.1%), and differ on two
# points: the paper's attention term ``4*L^2*d`` is the full L x L square (twice the causal
# count), and its SSM state is about half the exact size (408.75 tokens of KV per checkpoint by
# the paper, 786.6 exact in fp16, 1554.6 with the state in fp32 as engines keep it).
# --------------------------------------------------------------------------------------------


def marconi_attn_flops(seq_len: int, d: int) -> int:
    """Marconi's FLOPs of one attention layer over a sequence of ``seq_len`` tokens:
    ``8*L*d^2 + 4*L^2*d`` (QKVO projections, then scores and values over the full L x L square,
    i.e. without causal halving). ``d`` is the model dimension."""
    L = seq_len
    return 8 * L * d * d + 4 * L * L * d


def marconi_mlp_flops(seq_len: int, d: int) -> int:
    """Marconi's FLOPs of one MLP layer over ``seq_len`` tokens: ``16*L*d^2`` (two d x 4d
    matrices)."""
    return 16 * seq_len * d * d


def marconi_mamba_flops(seq_len: int, d: int, n: int) -> int:
    """Marconi's FLOPs of one Mamba2 layer over ``seq_len`` tokens: ``12*L*d^2 + 16*L*d*n +
    10*L*d`` (``d`` model dimension, ``n`` SSM state dimension)."""
    L = seq_len
    return 12 * L * d * d + 16 * L * d * n + 10 * L * d


def marconi_kv_bytes_per_token(d: int) -> int:
    """Marconi's KV bytes per token per attention layer in fp16: ``2*2*d`` (K and V, 2 bytes)."""
    return 2 * 2 * d


def marconi_ssm_state_bytes(d: int, n: int) -> int:
    """Marconi's bytes of one SSM layer's state in fp16: ``d*n*2 + (2d+2n)*4*2`` (SSM state plus
    conv state with kernel 4 and expand 2), as the paper writes it. Note it counts ``d*n`` state
    values although a Mamba2 layer with expand 2 holds ``2d*n``, and ``d_conv`` conv columns
    where engines keep ``d_conv - 1``; :meth:`core.model.spec.ModelSpec.ssm_state_bytes` gives
    the exact size (~1.9x this for Marconi's 7B hybrid)."""
    return d * n * 2 + (2 * d + 2 * n) * 4 * 2


def _check_count(name: str, value: object, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class MarconiCosts:
    """The paper's FLOP and byte model of a hybrid model, as the FLOP-aware eviction sees it.

    Contract: ``n_attn``/``n_ssm``/``n_mlp`` layers of each kind, model dimension ``d`` and SSM
    state dimension ``n``. Per layer, for a sequence of ``L`` tokens (the ``marconi_*``
    functions above): ``attn(L) = 8*L*d^2 + 4*L^2*d``, ``mlp(L) =
    16*L*d^2``, ``mamba(L) = 12*L*d^2 + 16*L*d*n + 10*L*d``. Bytes (fp16, the paper's): KV per
    token ``n_attn * 2*2*d`` and one checkpoint ``n_ssm * (d*n*2 + (2d+2n)*4*2)``, unless
    ``kv_bytes_per_token`` / ``ssm_state_bytes`` are given (e.g. an engine's exact sizes).
    With integer lengths FLOPs are exact integers (~1e15 for long prompts), as are bytes.

    The node formulas are the note's, as written (:meth:`flops_saved`, :meth:`node_bytes`).
    The authors' ``evict_v2`` differs in three places, which we do not reproduce: its MLP term
    subtracts ``attn(L-l)`` instead of ``mlp(L-l)``; its efficiency divides by the KV of the
    whole prefix ``L`` instead of the node's own ``l`` tokens; and its count of bytes freed by
    a leaf reads a stale loop variable (the last node scored, not the victim). The cache here
    counts freed bytes exactly (:meth:`RadixCache.bytes_freed_by`).
    """

    n_attn: int
    n_ssm: int
    n_mlp: int
    d: int
    n: int
    kv_bytes_per_token: int = field(default=-1)
    ssm_state_bytes: int = field(default=-1)

    def __post_init__(self) -> None:
        for name in ("n_attn", "n_ssm", "n_mlp", "n"):
            _check_count(name, getattr(self, name))
        _check_count("d", self.d, 1)
        if self.n_ssm and not self.n:
            raise ValueError(f"n (SSM state dimension) must be >= 1 with n_ssm={self.n_ssm}")
        # -1 means "the paper's formula" (a frozen dataclass cannot take computed defaults)
        d, n = self.d, self.n
        if self.kv_bytes_per_token == -1:
            object.__setattr__(
                self, "kv_bytes_per_token", self.n_attn * marconi_kv_bytes_per_token(d)
            )
        if self.ssm_state_bytes == -1:
            object.__setattr__(self, "ssm_state_bytes", self.n_ssm * marconi_ssm_state_bytes(d, n))
        _check_count("kv_bytes_per_token", self.kv_bytes_per_token)
        _check_count("ssm_state_bytes", self.ssm_state_bytes)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> MarconiCosts:
        """Layer counts and dimensions of ``spec``, bytes by the paper's formulas.

        ``d`` is the hidden size, ``n`` the Mamba2 state size (0 without SSM layers). Marconi's
        formulas know dense MLPs only, so a mixture-of-experts spec is refused.
        """
        if spec.is_moe:
            raise ValueError(
                f"{spec.name}: Marconi's FLOP formulas cover dense MLPs only, not MoE layers"
            )
        return cls(
            n_attn=spec.n_attention_layers,
            n_ssm=spec.n_ssm_layers,
            n_mlp=spec.n_mlp_layers,
            d=spec.hidden_size,
            n=spec.mamba.d_state if spec.mamba is not None else 0,
        )

    @classmethod
    def paper_7b(cls) -> MarconiCosts:
        """The paper's default 7B Attention-Mamba2 hybrid: 4 attention, 24 SSM, 28 MLP layers,
        d = 4096, n = 128 (= ``from_spec(ModelSpec.from_preset("marconi-hybrid-7b"))``)."""
        return cls(n_attn=4, n_ssm=24, n_mlp=28, d=4096, n=128)

    def with_bytes(self, kv_bytes_per_token: int, ssm_state_bytes: int) -> MarconiCosts:
        """The same FLOP model with other byte sizes (e.g. those an engine's cache uses)."""
        return replace(self, kv_bytes_per_token=kv_bytes_per_token, ssm_state_bytes=ssm_state_bytes)

    def new_cache(
        self,
        *,
        capacity_bytes: int | None = None,
        page_size: int = 1,
        eviction: EvictionPolicy | None = None,
        admission: AdmissionPolicy | None = None,
        clock: Clock | None = None,
    ) -> RadixCache:
        """A :class:`RadixCache` that accounts bytes with exactly these sizes (hybrid when the
        model has SSM layers)."""
        return RadixCache(
            page_size=page_size,
            hybrid=self.n_ssm > 0,
            kv_bytes_per_token=self.kv_bytes_per_token,
            ssm_state_bytes=self.ssm_state_bytes,
            capacity_bytes=capacity_bytes,
            eviction=eviction,
            admission=admission,
            clock=clock,
        )

    # -- formulas -------------------------------------------------------------------------------

    @staticmethod
    def _check_span(L: int, l: int) -> None:  # noqa: E741 - the note's names
        if L < 0 or not 0 <= l <= L:
            raise ValueError(f"need 0 <= l <= L, got L={L}, l={l}")

    def prefix_flops(self, L: int) -> float:
        """FLOPs to prefill ``L`` tokens from scratch, all layers; what a hit of ``L`` tokens
        saves: ``n_ssm*mamba(L) + n_attn*attn(L) + n_mlp*mlp(L)``."""
        self._check_span(L, L)
        return (
            self.n_ssm * marconi_mamba_flops(L, self.d, self.n)
            + self.n_attn * marconi_attn_flops(L, self.d)
            + self.n_mlp * marconi_mlp_flops(L, self.d)
        )

    def flops_saved(self, L: int, l: int) -> float:  # noqa: E741
        """FLOPs a node saves if kept, its prefix ending at ``L`` and its own edge ``l`` tokens:
        ``n_ssm*mamba(l) + n_attn*(attn(L) - attn(L-l)) + n_mlp*(mlp(L) - mlp(L-l))``."""
        self._check_span(L, l)
        d = self.d
        return (
            self.n_ssm * marconi_mamba_flops(l, d, self.n)
            + self.n_attn * (marconi_attn_flops(L, d) - marconi_attn_flops(L - l, d))
            + self.n_mlp * (marconi_mlp_flops(L, d) - marconi_mlp_flops(L - l, d))
        )

    def prefill_flops(self, L: int, cached: int) -> float:
        """FLOPs to prefill tokens ``[cached, L)`` of a prompt of ``L`` tokens whose first
        ``cached`` are reused: ``flops_saved(L, L - cached)`` (= ``prefix_flops(L) -
        prefix_flops(cached)``, the Mamba term being linear)."""
        self._check_span(L, cached)
        return self.flops_saved(L, L - cached)

    def node_bytes(self, l: int, has_checkpoint: bool = True) -> int:  # noqa: E741
        """Bytes a node of ``l`` tokens holds: ``n_ssm*S_ssm`` (if it has a checkpoint) +
        ``n_attn*KV(l)``."""
        if l < 0:
            raise ValueError(f"l must be >= 0, got {l}")
        return (self.ssm_state_bytes if has_checkpoint else 0) + self.kv_bytes_per_token * l

    def efficiency(self, L: int, l: int, has_checkpoint: bool = True) -> float:  # noqa: E741
        """FLOPs saved per byte held: ``flops_saved(L, l) / node_bytes(l)``. A node without a
        checkpoint saves nothing (no hit can end there), so its efficiency is 0."""
        self._check_span(L, l)
        if not has_checkpoint:
            return 0.0
        b = self.node_bytes(l, True)
        return self._flops_saved_poly(L, l) / b if b else 0.0

    @cached_property
    def _poly(self) -> tuple[int, int]:
        # flops_saved(L, l) = l * (A + B * (2L - l)) exactly (integer arithmetic): the mamba,
        # MLP and linear attention terms are A per token, attention's L^2 - (L-l)^2 = l(2L - l)
        d, n = self.d, self.n
        a = (
            self.n_ssm * (12 * d * d + 16 * d * n + 10 * d)
            + self.n_attn * 8 * d * d
            + self.n_mlp * 16 * d * d
        )
        return a, self.n_attn * 4 * d

    def _flops_saved_poly(self, L: int, l: int) -> int:  # noqa: E741
        """:meth:`flops_saved` in closed form (equal for integer lengths; a tenth of the
        cost, for the eviction's scoring loop)."""
        a, b = self._poly
        return l * (a + b * (2 * L - l))


def _minmax(xs: Sequence[float]) -> list[float]:
    """Min-max normalization to [0, 1]; all 1.0 when there are < 2 values or all are equal (as
    the authors' ``_normalize``)."""
    if len(xs) > 1:
        lo, hi = min(xs), max(xs)
        if hi > lo:
            span = hi - lo
            return [(x - lo) / span for x in xs]
    return [1.0] * len(xs)


class FlopAwareEviction(EvictionPolicy):
    """Marconi's FLOP-aware eviction.

    Contract:
    - candidates: leaves and one-child nodes with a checkpoint (``"single_child"``); evicting a
      one-child node frees only its checkpoint and merges its KV into its child.
    - score of a candidate = ``minmax(recency) + alpha * minmax(efficiency)`` over the current
      candidate set, ``recency = 1 / max(now - last_access, min_age)`` (``min_age`` stands in
      for a zero age: a node touched at ``now`` counts as one tick old; the cache-level replay
      uses a logical clock where one tick is one operation) and ``efficiency =``
      :meth:`MarconiCosts.efficiency` of the node (prefix length ``node.depth``, edge length
      ``node.num_tokens``). The lowest score is evicted first; ties go to the earlier candidate
      in tree order (as the authors' scan).
    - :meth:`select` returns one victim, so the cache re-scores after every eviction (the
      normalization depends on the whole set, as in the authors' loop).
    - recency refresh (as the authors' ``evict_policy_version`` 2): a match refreshes only the
      deepest matched node; an insertion stamps only the nodes it creates.
    - the cache's byte sizes must equal ``costs``' (else :class:`ValueError` at the first
      eviction): build it with :meth:`MarconiCosts.new_cache` or :meth:`MarconiCosts.with_bytes`.
    - ``alpha`` may be changed between evictions (:class:`AlphaTuner` does, once).
    """

    candidates = "single_child"
    refresh_path = False
    refresh_on_insert = False

    def __init__(self, costs: MarconiCosts, alpha: float = 0.0, *, min_age: float = 1.0):
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        if not (isinstance(min_age, (int, float)) and math.isfinite(min_age) and min_age > 0):
            raise ValueError(f"min_age must be a finite number > 0, got {min_age!r}")
        if costs.kv_bytes_per_token == 0 and costs.ssm_state_bytes == 0:
            raise ValueError(f"FlopAwareEviction needs nodes that hold bytes; {costs} counts none")
        self.costs = costs
        self.alpha = float(alpha)
        self.min_age = float(min_age)

    def check_cache(self, cache: RadixCache) -> None:
        """Raise :class:`ValueError` unless ``cache`` counts bytes as ``costs`` does."""
        c = self.costs
        if (cache.kv_bytes_per_token, cache.ssm_state_bytes) != (
            c.kv_bytes_per_token,
            c.ssm_state_bytes,
        ):
            raise ValueError(
                f"FlopAwareEviction's costs count {c.kv_bytes_per_token} KV bytes per token and "
                f"{c.ssm_state_bytes} bytes per checkpoint, but the cache counts "
                f"{cache.kv_bytes_per_token} and {cache.ssm_state_bytes}: build the cache with "
                "MarconiCosts.new_cache() or pass matching sizes via MarconiCosts.with_bytes()"
            )

    def scores(self, candidates: Sequence[RadixNode], now: float) -> list[float]:
        """Each candidate's score (lower is evicted first), normalized over ``candidates``."""
        floor = self.min_age
        ages = [now - node.last_access for node in candidates]
        recency = [1.0 / age if age > floor else 1.0 / floor for age in ages]
        if self.alpha == 0.0:
            return _minmax(recency)
        # MarconiCosts.efficiency inlined: this runs over every candidate once per victim
        c = self.costs
        (pa, pb), s_ssm, kv = c._poly, c.ssm_state_bytes, c.kv_bytes_per_token
        eff = [
            0.0
            if node.checkpoint is None
            else (ln := len(node.key)) * (pa + pb * (2 * node.depth - ln)) / (s_ssm + kv * ln)
            for node in candidates
        ]
        a = self.alpha
        return [r + a * e for r, e in zip(_minmax(recency), _minmax(eff), strict=True)]

    def select(
        self, candidates: Sequence[RadixNode], now: float, cache: RadixCache
    ) -> Sequence[RadixNode]:
        if not candidates:
            return []
        self.check_cache(cache)
        s = self.scores(candidates, now)
        return [candidates[s.index(min(s))]]  # the first minimum: tree order, as the authors'

    def __repr__(self) -> str:
        return f"FlopAwareEviction(alpha={self.alpha}, min_age={self.min_age})"


class BlockLRUEviction(LRUEviction):
    """vLLM+'s eviction: LRU over blocks, as the authors' ``radix_cache_vllm.py`` (a tree of
    one node per block, each with a state; an LRU heap of leaf blocks; a match and an insertion
    refresh every block on their path).

    Contract: the cache must have ``page_size == block_size`` (else :class:`ValueError` at the
    first eviction). Candidates are leaves, least recently used first (ties: the older node);
    a match and an insertion refresh their whole path. Two cache layouts give the same LRU over
    blocks:

    - *slot-exact* (engines): a hybrid cache whose admission checkpoints every block boundary
      (:class:`CheckpointEveryK`, ``k = block_size``), so every node is one block (its KV and
      the state after it); evicting a leaf block frees both and may expose its parent block.
    - *accounting* (the cache-level replay, :func:`vllm_plus_accounting_cache`): a non-hybrid
      cache whose per-token bytes include a block's state share (every block boundary holds a
      state, so a hit is the whole matched prefix); a run of blocks cached together is one
      node, and ``trim_leaves`` evicts an LRU leaf's tail block by block. All blocks of a run
      share their timestamp (a match ending inside a run splits it), so the order is the same,
      at a cost per node instead of per block.
    """

    trim_leaves = True

    def __init__(self, block_size: int = VLLM_BLOCK_SIZE):
        _check_count("block_size", block_size, 1)
        super().__init__("leaves", refresh_path=True)
        self.block_size = block_size

    def key(self, node: RadixNode, now: float, cache: RadixCache) -> float:
        if cache.page_size != self.block_size:
            raise ValueError(
                f"BlockLRUEviction(block_size={self.block_size}) needs a RadixCache with "
                f"page_size={self.block_size}, got page_size={cache.page_size}"
            )
        return node.last_access

    def __repr__(self) -> str:
        return f"BlockLRUEviction(block_size={self.block_size})"


def make_marconi_policies(
    name: str,
    costs: MarconiCosts | None = None,
    *,
    alpha: float = 0.0,
    block_size: int = VLLM_BLOCK_SIZE,
    min_age: float = 1.0,
) -> tuple[AdmissionPolicy, EvictionPolicy]:
    """``(admission, eviction)`` of one of :data:`POLICY_NAMES`.

    - ``"marconi"``: :class:`CheckpointAtBranchesAndLeaves` + :class:`FlopAwareEviction`
      starting at ``alpha`` (drivers attach an :class:`AlphaTuner` to tune it once);
    - ``"marconi-alpha0"``: the same with alpha fixed at 0 (recency only, Marconi's candidates);
    - ``"sglang+"``: :class:`CheckpointAtBranchesAndLeaves` + LRU over leaves, path refreshed;
    - ``"vllm+"``: :class:`CheckpointEveryK` (``block_size``) + :class:`BlockLRUEviction`; run it
      on a cache with ``page_size = block_size`` (:func:`policy_page_size`).

    ``costs`` (default: :meth:`MarconiCosts.paper_7b`) only matters to the Marconi policies.
    """
    if name in ("marconi", "marconi-alpha0"):
        ev = FlopAwareEviction(
            costs or MarconiCosts.paper_7b(),
            0.0 if name == "marconi-alpha0" else alpha,
            min_age=min_age,
        )
        return CheckpointAtBranchesAndLeaves(), ev
    if name == "sglang+":
        return CheckpointAtBranchesAndLeaves(), LRUEviction("leaves", refresh_path=True)
    if name == "vllm+":
        return CheckpointEveryK(block_size), BlockLRUEviction(block_size)
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")


def vllm_plus_accounting_cache(
    costs: MarconiCosts,
    *,
    capacity_bytes: int | None = None,
    block_size: int = VLLM_BLOCK_SIZE,
    eviction: BlockLRUEviction | None = None,
) -> RadixCache | None:
    """vLLM+'s cache in the *accounting* layout of :class:`BlockLRUEviction`: pages of
    ``block_size`` tokens, no checkpoint slots, ``kv_bytes_per_token = costs.kv_bytes_per_token
    + costs.ssm_state_bytes / block_size`` (a block's bytes are its KV plus one state). None
    when the state does not split into whole bytes per token (use the slot-exact layout)."""
    if costs.ssm_state_bytes % block_size:
        return None
    return RadixCache(
        page_size=block_size,
        hybrid=False,
        kv_bytes_per_token=costs.kv_bytes_per_token + costs.ssm_state_bytes // block_size,
        capacity_bytes=capacity_bytes,
        eviction=eviction if eviction is not None else BlockLRUEviction(block_size),
    )


def policy_page_size(name: str, *, block_size: int = VLLM_BLOCK_SIZE) -> int:
    """The cache page size a policy of :data:`POLICY_NAMES` runs with: ``block_size`` for
    ``"vllm+"``, 1 (token-level, as Marconi's simulator) for the others."""
    if name not in POLICY_NAMES:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
    return block_size if name == "vllm+" else 1


# -- alpha tuning ---------------------------------------------------------------------------------


@dataclass
class _WindowRequest:
    prompt: Sequence[int]
    output: Sequence[int]
    match_now: float
    insert_now: float


class AlphaTuner:
    """Marconi's one-time tuning of alpha by replay.

    Contract (the paper's procedure):
    - the driver calls :meth:`observe` once per finished request, after the request's
      sequence was inserted into ``cache`` (the cache whose eviction is ``policy``);
    - at the first call that finds the cache has evicted something (attach the tuner to a
      cache that has not evicted yet), the tuner notes the number of requests seen so far,
      ``n0`` (that one included), and snapshots the tree (a clone with its locks dropped);
    - it then records the next ``window_factor * n0`` requests (5 by default; the paper uses
      15 for the LMSys-like trace) and, at the last one, replays that window from the snapshot
      once per alpha in ``alphas`` (a fresh :class:`FlopAwareEviction` each, same costs and
      ``min_age``) with the cache-level driver of :mod:`.replay`; the alpha whose replay
      saved the most prefill FLOPs (sum of ``costs.prefix_flops(hit)``) is set on ``policy``
      (ties: the earlier in ``alphas``). Tuning happens once; later calls do nothing.
    - the replay uses ``capacity_bytes`` (default: the snapshot's; an engine's cache has none:
      pass the bytes its KV blocks and state slots hold). Each request is replayed at the
      times the driver gave to :meth:`observe` (``now``), or, without them, at the cache-level
      replay's logical times (request ``i``, 0-based: match at ``2i``, insert at ``2i + 1``), so
      replaying the window with the alpha in use reproduces what the driver saw.

    Deviations from the authors' code (``config_tuner.py``), which snapshots the empty tree at
    the first request and replays every request up to ``window_factor * n0`` in all, scoring
    the last 500 requests of the replayed history: we follow the paper's description (snapshot
    at the first eviction, the next window only, scored over that window).
    """

    def __init__(
        self,
        policy: FlopAwareEviction,
        *,
        window_factor: int = 5,
        alphas: Sequence[float] = ALPHA_GRID,
        capacity_bytes: int | None = None,
    ):
        if not isinstance(policy, FlopAwareEviction):
            raise ValueError(f"AlphaTuner tunes a FlopAwareEviction, got {policy!r}")
        _check_count("window_factor", window_factor, 1)
        alphas = tuple(float(a) for a in alphas)
        if not alphas or any(not math.isfinite(a) or a < 0 for a in alphas):
            raise ValueError(
                f"alphas must be a non-empty list of finite numbers >= 0, got {alphas!r}"
            )
        if capacity_bytes is not None:
            _check_count("capacity_bytes", capacity_bytes)
        self.policy = policy
        self.window_factor = window_factor
        self.alphas = alphas
        self.capacity_bytes = capacity_bytes
        self.n_seen = 0
        self.n0: int | None = None  # requests seen at the first eviction
        self.snapshot: RadixCache | None = None
        self.window: list[_WindowRequest] = []
        self.scores: dict[float, float] = {}  # alpha -> FLOPs saved over the window's replay
        self.tuned_alpha: float | None = None

    @property
    def done(self) -> bool:
        return self.tuned_alpha is not None

    @property
    def window_len(self) -> int | None:
        """Requests in the tuning window (known after the first eviction)."""
        return None if self.n0 is None else self.window_factor * self.n0

    def observe(
        self,
        cache: RadixCache,
        prompt_ids: Sequence[int],
        output_ids: Sequence[int],
        now: float | None = None,
        *,
        match_now: float | None = None,
    ) -> float | None:
        """Record one finished request; returns the tuned alpha on the call that tunes, else
        None. ``now`` is when it was inserted and ``match_now`` when it was matched (default:
        ``now``; both None: the logical times of the class contract). ``prompt_ids`` and
        ``output_ids`` must stay unchanged until tuning (they are kept, not copied)."""
        if self.done:
            return None
        i = self.n_seen
        self.n_seen += 1
        if self.snapshot is None:
            if not (cache.stats.evicted_tokens or cache.stats.evicted_checkpoints):
                return None
            cap = self.capacity_bytes if self.capacity_bytes is not None else cache.capacity_bytes
            if cap is None:
                raise ValueError(
                    "AlphaTuner needs capacity_bytes: the cache has none (an engine's cache is "
                    "bounded by its allocators); pass AlphaTuner(capacity_bytes=...)"
                )
            self.capacity_bytes = cap
            self.n0 = self.n_seen
            self.snapshot = cache.clone(unlocked=True)
            return None
        if now is None and match_now is None:
            t_match, t_insert = 2.0 * i, 2.0 * i + 1
        else:
            t_insert = float(now if now is not None else match_now)  # type: ignore[arg-type]
            t_match = float(match_now) if match_now is not None else t_insert
        self.window.append(_WindowRequest(prompt_ids, output_ids, t_match, t_insert))
        if len(self.window) < self.window_factor * (self.n0 or 0):
            return None
        return self._tune()

    def replay_window(self, alpha: float) -> float:
        """FLOPs saved by replaying the recorded window from the snapshot with ``alpha``."""
        from .replay import CacheReplayer  # replay imports this module

        if self.snapshot is None:
            raise ValueError("no snapshot yet: the cache has not evicted anything")
        ev = FlopAwareEviction(self.policy.costs, alpha, min_age=self.policy.min_age)
        cache = self.snapshot.clone(eviction=ev)
        cache.capacity_bytes = self.capacity_bytes
        rep = CacheReplayer(cache, first_value=1 << 62)  # clear of every value in the snapshot
        costs = self.policy.costs
        saved = 0  # exact: FLOP counts are integers
        for w in self.window:
            hit, _ = rep.serve(w.prompt, w.output, match_now=w.match_now, insert_now=w.insert_now)
            saved += costs.prefix_flops(hit)
        return saved

    def _tune(self) -> float:
        self.scores = {a: self.replay_window(a) for a in self.alphas}
        best = max(self.alphas, key=self.scores.__getitem__)  # first maximum: the earlier alpha
        self.policy.alpha = best
        self.tuned_alpha = best
        self.snapshot, self.window = None, []  # free the memory
        return best

    def __repr__(self) -> str:
        return (
            f"AlphaTuner(n_seen={self.n_seen}, n0={self.n0}, window={len(self.window)}/"
            f"{self.window_len}, tuned_alpha={self.tuned_alpha})"
        )
