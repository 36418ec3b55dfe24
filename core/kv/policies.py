"""Eviction and admission policies for :class:`~core.kv.radix.RadixCache`.

Two small interfaces, each with its contract in the docstring, so that papers plug in their own
policy without touching the tree:

- :class:`EvictionPolicy` chooses *which* evictable nodes go; the cache decides *when*
  (``evict`` targets, capacity) and applies the choice (freeing values, merging nodes).
  Defaults: :class:`LRUEviction` over leaves (SGLang), or over nodes with at most one child.
  Marconi's FLOP-aware policy is an ``EvictionPolicy`` with ``candidates = "single_child"``.
- :class:`AdmissionPolicy` chooses which prefix positions get an SSM-state checkpoint in a
  hybrid (attention + SSM) model: :class:`CheckpointAtLeaves`,
  :class:`CheckpointAtBranchesAndLeaves` (Marconi) and :class:`CheckpointEveryK` (vLLM+).

Policies never read the wall clock: ``now`` is passed in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from core.kv.radix import MatchResult, RadixCache, RadixNode

CandidateKind = Literal["leaves", "single_child"]
CANDIDATE_KINDS: tuple[str, ...] = ("leaves", "single_child")


class EvictionPolicy(ABC):
    """Chooses victims among the radix cache's evictable nodes.

    Contract:
    - ``candidates`` (class or instance attribute) says which nodes the cache offers, always
      excluding the root and locked nodes (``lock_ref > 0``):
        * ``"leaves"``: nodes without children. Evicting one frees its KV values and its
          checkpoint, and removes it.
        * ``"single_child"``: leaves, plus nodes with exactly one child that hold an SSM
          checkpoint. Evicting such a node frees only its checkpoint; its KV values merge into
          its child (Marconi's rule). One-child nodes without a checkpoint free nothing and are
          never offered.
    - :meth:`select` receives the current candidates (a fresh list; deterministic order) and
      ``now``, and returns the ones to evict in order, first evicted first. It must not modify
      the cache. The cache evicts from the front while its target is unmet, skips returned
      nodes that are no longer candidates, and calls ``select`` again with a fresh candidate
      list whenever an eviction creates or changes a candidate (a parent becomes a leaf, a
      child absorbs a merged node), so the order stays exact even for policies whose scores
      depend on the whole candidate set (Marconi's min-max normalization). Returning one node
      gives exact one-at-a-time re-scoring; returning none stops the eviction.
    - ``refresh_path`` tells the cache how a match refreshes ``last_access``: ``True``
      refreshes every node on the matched path (SGLang), ``False`` only the deepest matched
      node (Marconi).
    - ``refresh_on_insert`` tells the cache how an insertion refreshes it: ``True`` (default)
      refreshes every node on the inserted path; ``False`` only stamps the nodes the insertion
      creates (Marconi: a conversation's older turns keep the time of their last use as the
      deepest match, so their checkpoints age and become eviction candidates).
    - ``trim_leaves`` (default ``False``): when ``True``, a chosen leaf without a checkpoint
      may be evicted in part: whole pages from its tail, as few as the cache's target needs
      (the leaf stays, shorter, with its ``last_access``). When all pages of a leaf share one
      timestamp, this is LRU over pages (vLLM's blocks) at the cost of one node.
    """

    candidates: CandidateKind = "leaves"
    refresh_path: bool = True
    refresh_on_insert: bool = True
    trim_leaves: bool = False

    @abstractmethod
    def select(
        self, candidates: Sequence[RadixNode], now: float, cache: RadixCache
    ) -> Sequence[RadixNode]:
        """Victims among ``candidates``, first evicted first (see the class contract)."""


class KeyedEvictionPolicy(EvictionPolicy):
    """An eviction policy that scores each node alone: lowest :meth:`key` is evicted first.

    A node's key may depend on the node, ``now`` and cache-wide constants, but not on the other
    candidates. The cache then keeps candidates in a heap and pushes newly exposed ones as it
    goes (SGLang's loop), O(log n) per victim instead of a full re-selection. Ties break by
    ``node_id`` (older nodes first), so the order is deterministic.
    """

    @abstractmethod
    def key(self, node: RadixNode, now: float, cache: RadixCache) -> float:
        """The node's eviction priority: lower is evicted first."""

    def select(
        self, candidates: Sequence[RadixNode], now: float, cache: RadixCache
    ) -> Sequence[RadixNode]:
        return sorted(candidates, key=lambda n: (self.key(n, now, cache), n.node_id))


class LRUEviction(KeyedEvictionPolicy):
    """Least recently used first.

    Args:
        candidates: ``"leaves"`` (SGLang, and Marconi's SGLang+ baseline) or ``"single_child"``
            (Marconi's candidate set with its ``alpha = 0``, recency only).
        refresh_path: see :class:`EvictionPolicy`; ``True`` (SGLang) by default.
    """

    def __init__(self, candidates: CandidateKind = "leaves", *, refresh_path: bool = True):
        if candidates not in CANDIDATE_KINDS:
            raise ValueError(f"candidates must be one of {CANDIDATE_KINDS}, got {candidates!r}")
        self.candidates = candidates
        self.refresh_path = refresh_path

    def key(self, node: RadixNode, now: float, cache: RadixCache) -> float:
        return node.last_access

    def __repr__(self) -> str:
        return f"LRUEviction(candidates={self.candidates!r}, refresh_path={self.refresh_path})"


class AdmissionPolicy(ABC):
    """Decides which prefix positions of a hybrid model's sequence get an SSM checkpoint.

    A *position* ``p`` names the SSM state after the first ``p`` tokens. The cache can only
    hold states the engine captured, so admission happens in two places:

    - :meth:`positions_to_checkpoint` (``token_ids``, the request's ``match``, ``start``):
      the sorted positions ``p`` with ``start < p <= len(token_ids)`` at which the engine must
      capture the state while it processes ``token_ids[start:]``; ``start`` defaults to
      ``match.hit_len`` (where its computation starts). The engine ends a prefill chunk at
      each such position (Marconi's branch-point split). Engines call it with the prompt
      before prefill, and may call it again during decode with the grown sequence and
      ``start`` = tokens already processed (for policies that checkpoint generated tokens).
    - :meth:`admit_leaf` (``token_ids``: the finished sequence, prompt + output): whether the
      state after the whole sequence (free to capture: it is the request's live state) is
      offered to the cache. The leaf position may also be one that
      :meth:`positions_to_checkpoint` returned (e.g. :class:`CheckpointEveryK` on an aligned
      length): the engine offers one state for it, not two.

    The engine passes the captured states to :meth:`RadixCache.insert` as
    ``checkpoints={position: state_slot}``; the cache keeps at most one per node and returns
    the rest as unused. Positions that are not multiples of the cache's ``page_size`` cannot be
    cached (the tree only ends nodes on page boundaries).
    """

    @abstractmethod
    def positions_to_checkpoint(
        self, token_ids: Sequence[int], match: MatchResult, *, start: int | None = None
    ) -> list[int]:
        """Positions in ``(start, len(token_ids)]`` whose state the engine must capture."""

    @abstractmethod
    def admit_leaf(self, token_ids: Sequence[int]) -> bool:
        """Whether the state after the finished sequence ``token_ids`` is cached."""

    @staticmethod
    def _window(token_ids: Sequence[int], match: MatchResult, start: int | None) -> tuple[int, int]:
        return (match.hit_len if start is None else start), len(token_ids)


class CheckpointAtLeaves(AdmissionPolicy):
    """Admit only the state at the end of each finished sequence (for its next turn)."""

    def positions_to_checkpoint(
        self, token_ids: Sequence[int], match: MatchResult, *, start: int | None = None
    ) -> list[int]:
        return []

    def admit_leaf(self, token_ids: Sequence[int]) -> bool:
        return len(token_ids) > 0

    def __repr__(self) -> str:
        return "CheckpointAtLeaves()"


class CheckpointAtBranchesAndLeaves(AdmissionPolicy):
    """Marconi's admission: the finished sequence's leaf, plus the branch point found at match.

    When the match ends where the request will branch off a cached sequence and that point has
    no checkpoint (``match.branch_len``), the engine splits its prefill there and the state is
    cached, so later requests sharing that prefix (a system prompt) hit it.
    """

    def positions_to_checkpoint(
        self, token_ids: Sequence[int], match: MatchResult, *, start: int | None = None
    ) -> list[int]:
        lo, hi = self._window(token_ids, match, start)
        b = match.branch_len
        return [b] if b is not None and lo < b <= hi else []

    def admit_leaf(self, token_ids: Sequence[int]) -> bool:
        return len(token_ids) > 0

    def __repr__(self) -> str:
        return "CheckpointAtBranchesAndLeaves()"


class CheckpointEveryK(AdmissionPolicy):
    """A checkpoint every ``k`` tokens (positions k, 2k, ...), block-aligned like vLLM+.

    The finished sequence's leaf is admitted only when its length is a multiple of ``k``.
    Use a ``k`` that is a multiple of the cache's ``page_size``.
    """

    def __init__(self, k: int):
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        self.k = k

    def positions_to_checkpoint(
        self, token_ids: Sequence[int], match: MatchResult, *, start: int | None = None
    ) -> list[int]:
        lo, hi = self._window(token_ids, match, start)
        first = (lo // self.k + 1) * self.k
        return list(range(first, hi + 1, self.k))

    def admit_leaf(self, token_ids: Sequence[int]) -> bool:
        return len(token_ids) > 0 and len(token_ids) % self.k == 0

    def __repr__(self) -> str:
        return f"CheckpointEveryK({self.k})"
