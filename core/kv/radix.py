"""A token-level radix prefix cache with optional SSM-state checkpoints (hybrid models).

The tree (SGLang's RadixAttention, Marconi's hybrid tree) maps token prefixes to opaque integer
*values* (normally KV slot indices) and, on hybrid models, nodes to SSM-state *checkpoints*; it
never touches a tensor. Callers may rely on: ownership (after ``insert`` each value is owned by
the tree, equal to the tree's, or listed in ``InsertResult.unused_values``; evicted values reach
``free_kv`` exactly once; the same for checkpoints); locked nodes (``lock`` up to the root) are
never evicted, unlocked match results are valid until the next mutating call; a resumed SSM
state is a copy (:meth:`RadixCache.fork_checkpoint`); hybrid hits stop at the deepest
checkpoint; edges are multiples of ``page_size``; ``total_bytes`` is exact and ``capacity_bytes``
is enforced unless locks prevent it; time comes from ``now`` or the injected ``clock``, never
the wall clock.

The engine's call sequence and each rule in full: docs/core/kv.md.
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from core.kv.clock import Clock, LogicalClock, ManualClock
from core.kv.errors import KVCacheError, LockError, StaleHandleError
from core.kv.policies import (
    CANDIDATE_KINDS,
    AdmissionPolicy,
    CheckpointAtLeaves,
    EvictionPolicy,
    KeyedEvictionPolicy,
    LRUEviction,
)

FreeCallback = Callable[[list[int]], None]


class RadixNode:
    """One node: the edge from its parent (token ids + one value per token) and its metadata.

    ``depth`` is the prefix length at the node's end (the root has depth 0). ``checkpoint`` is
    the SSM-state slot for the state after ``depth`` tokens, or ``None``. ``lock_ref`` counts
    locks held on this node or any descendant. ``key`` and ``value`` are tuples and never
    mutated in place (clones share them).

    ``meta`` is free for policies and extensions (per-node scores, per-replica counters): the
    cache never reads it; a split gives the new upper node a shallow copy, a merge keeps the
    child's, a clone copies it shallowly.
    """

    __slots__ = (
        "node_id",
        "key",
        "value",
        "children",
        "parent",
        "depth",
        "lock_ref",
        "last_access",
        "hit_count",
        "checkpoint",
        "version",
        "alive",
        "meta",
    )

    def __init__(
        self,
        node_id: int,
        key: tuple[int, ...] = (),
        value: tuple[int, ...] = (),
        parent: RadixNode | None = None,
        depth: int = 0,
        last_access: float = 0.0,
    ):
        self.node_id = node_id
        self.key = key
        self.value = value
        self.children: dict[object, RadixNode] = {}
        self.parent = parent
        self.depth = depth
        self.lock_ref = 0
        self.last_access = last_access
        self.hit_count = 0
        self.checkpoint: int | None = None
        self.version = 0  # bumped whenever the node's edge or candidacy changes
        self.alive = True
        self.meta: dict | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens on this node's own edge."""
        return len(self.key)

    @property
    def start(self) -> int:
        """Prefix length where this node's edge starts (its parent's depth)."""
        return self.depth - len(self.key)

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def __repr__(self) -> str:
        return (
            f"RadixNode(id={self.node_id}, span=[{self.start}, {self.depth}), "
            f"children={len(self.children)}, lock={self.lock_ref}, ckpt={self.checkpoint}, "
            f"t={self.last_access})"
        )


@dataclass(frozen=True)
class MatchResult:
    """What :meth:`RadixCache.match_prefix` found.

    - ``matched_len``: tokens of the query present in the tree (KV exists for all of them);
      ``last_node`` ends exactly there (the root when 0): a match ending inside an edge split it.
    - ``values``: the tree's values for tokens ``[0, matched_len)``.
    - ``hit_len``/``hit_node``: the usable hit. Attention-only: equal to the match. Hybrid: the
      deepest node on the path holding a checkpoint (root and 0 if none); ``checkpoint`` is its
      state slot (read-only: resume from :meth:`RadixCache.fork_checkpoint`).
    - ``branch_len`` (hybrid only): ``matched_len`` when the match ends at a branch point
      (the last node has children, e.g. after a split) that lacks a checkpoint beyond the hit,
      i.e. where an admission policy may ask the engine to split its prefill and capture the
      state; otherwise ``None``.
    """

    matched_len: int
    last_node: RadixNode
    values: tuple[int, ...]
    hit_len: int
    hit_node: RadixNode
    checkpoint: int | None = None
    branch_len: int | None = None

    @property
    def hit_values(self) -> tuple[int, ...]:
        """The values the request reuses: those of tokens ``[0, hit_len)``."""
        return self.values[: self.hit_len]


@dataclass
class EvictResult:
    """What an eviction freed (already handed to the free callbacks, if set)."""

    values: list[int] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    num_bytes: int = 0
    nodes_removed: int = 0  # leaves deleted + one-child nodes merged into their child
    nodes_merged: int = 0  # of which one-child nodes merged (only their checkpoint freed)
    nodes_trimmed: int = 0  # leaves cut short, not removed (``trim_leaves`` policies)

    @property
    def num_tokens(self) -> int:
        return len(self.values)

    def extend(self, other: EvictResult) -> None:
        self.values.extend(other.values)
        self.checkpoints.extend(other.checkpoints)
        self.num_bytes += other.num_bytes
        self.nodes_removed += other.nodes_removed
        self.nodes_merged += other.nodes_merged
        self.nodes_trimmed += other.nodes_trimmed


@dataclass(frozen=True)
class InsertResult:
    """What :meth:`RadixCache.insert` did; the caller frees the ``unused_*`` lists."""

    prefix_len: int  # tokens of the (page-truncated) sequence already cached before the call
    inserted_len: int  # tokens whose values the tree took ownership of
    last_node: RadixNode  # node ending at the truncated sequence's end
    unused_values: list[int]
    unused_checkpoints: list[int]
    inserted_checkpoints: int = 0
    evicted: EvictResult | None = None  # capacity eviction done by this call


@dataclass
class RadixCacheStats:
    """Counters since construction (copied by :meth:`RadixCache.clone`)."""

    requests: int = 0  # recorded matches
    prompt_tokens: int = 0  # tokens queried by recorded matches
    hit_tokens: int = 0  # usable hit tokens (hit_len)
    matched_tokens: int = 0  # tokens matched in the tree (matched_len >= hit_len)
    inserted_tokens: int = 0
    inserted_checkpoints: int = 0
    evicted_tokens: int = 0
    evicted_checkpoints: int = 0
    evicted_nodes: int = 0  # leaves removed + one-child nodes merged
    merged_nodes: int = 0  # one-child nodes merged into their child (Marconi's rule)
    trimmed_nodes: int = 0  # leaves whose tail pages alone were evicted (``trim_leaves``)
    checkpoint_forks: int = 0

    @property
    def token_hit_rate(self) -> float:
        """Hit tokens / prompt tokens over recorded matches (0 before any)."""
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class RadixCache:
    """Radix tree of cached prefixes with KV values per token and SSM checkpoints per node.

    Args:
        page_size: 1 = token-level (SGLang, Marconi); k > 1 = edges, matches and inserts in
            multiples of k tokens (vLLM-like blocks).
        hybrid: the model has SSM layers: hits stop at checkpoints, inserts accept them.
        kv_bytes_per_token: bytes of one token's KV over all attention layers.
        ssm_state_bytes: bytes of one checkpoint (all SSM layers' states).
        capacity_bytes: if set, ``insert`` evicts to stay within it (a simulator-style
            cache); leave ``None`` when an allocator drives eviction (an engine).
        eviction: an :class:`EvictionPolicy` (default :class:`LRUEviction` over leaves).
        admission: an :class:`AdmissionPolicy` (default :class:`CheckpointAtLeaves`).
        free_kv / free_checkpoints: called with the lists of values / state slots the cache
            evicts.
        copy_checkpoint: ``slot -> new slot`` holding a copy of the state (copy-on-write).
        clock: zero-argument callable read when ``now`` is omitted.
    """

    def __init__(
        self,
        *,
        page_size: int = 1,
        hybrid: bool = False,
        kv_bytes_per_token: int = 0,
        ssm_state_bytes: int = 0,
        capacity_bytes: int | None = None,
        eviction: EvictionPolicy | None = None,
        admission: AdmissionPolicy | None = None,
        free_kv: FreeCallback | None = None,
        free_checkpoints: FreeCallback | None = None,
        copy_checkpoint: Callable[[int], int] | None = None,
        clock: Clock | None = None,
    ):
        if page_size <= 0:
            raise ValueError(f"page_size must be positive, got {page_size}")
        if kv_bytes_per_token < 0 or ssm_state_bytes < 0:
            raise ValueError("byte sizes must be >= 0")
        if capacity_bytes is not None and capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.page_size = page_size
        self.hybrid = hybrid
        self.kv_bytes_per_token = kv_bytes_per_token
        self.ssm_state_bytes = ssm_state_bytes
        self.capacity_bytes = capacity_bytes
        self.eviction: EvictionPolicy = eviction if eviction is not None else LRUEviction()
        if self.eviction.candidates not in CANDIDATE_KINDS:
            raise ValueError(f"eviction.candidates must be one of {CANDIDATE_KINDS}")
        self.admission: AdmissionPolicy = (
            admission if admission is not None else CheckpointAtLeaves()
        )
        self.free_kv = free_kv
        self.free_checkpoints = free_checkpoints
        self.copy_checkpoint = copy_checkpoint
        self.clock: Clock = clock if clock is not None else LogicalClock()
        self.stats = RadixCacheStats()
        self._next_id = 1
        self.root = RadixNode(0)
        self._num_nodes = 0
        self._num_tokens = 0
        self._num_checkpoints = 0
        self._protected_tokens = 0
        self._protected_checkpoints = 0

    # -- sizes ----------------------------------------------------------------------------------

    @property
    def num_nodes(self) -> int:
        """Nodes in the tree, the root excluded."""
        return self._num_nodes

    @property
    def num_tokens(self) -> int:
        """Cached tokens (values held)."""
        return self._num_tokens

    @property
    def num_checkpoints(self) -> int:
        return self._num_checkpoints

    @property
    def total_bytes(self) -> int:
        return (
            self._num_tokens * self.kv_bytes_per_token
            + self._num_checkpoints * self.ssm_state_bytes
        )

    @property
    def protected_tokens(self) -> int:
        """Tokens on locked nodes."""
        return self._protected_tokens

    @property
    def protected_checkpoints(self) -> int:
        return self._protected_checkpoints

    @property
    def protected_bytes(self) -> int:
        return (
            self._protected_tokens * self.kv_bytes_per_token
            + self._protected_checkpoints * self.ssm_state_bytes
        )

    @property
    def evictable_bytes(self) -> int:
        """Bytes on unlocked nodes: all of it can be evicted (descendants of locks are unlocked)."""
        return self.total_bytes - self.protected_bytes

    def bytes_freed_by(self, node: RadixNode) -> int:
        """Bytes evicting ``node`` would free now: all of a leaf, only the checkpoint otherwise."""
        ck = self.ssm_state_bytes if node.checkpoint is not None else 0
        return ck + (len(node.key) * self.kv_bytes_per_token if not node.children else 0)

    # -- helpers --------------------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return float(self.clock()) if now is None else float(now)

    def _ckey(self, seq: Sequence[int], pos: int = 0) -> object:
        return seq[pos] if self.page_size == 1 else tuple(seq[pos : pos + self.page_size])

    def _aligned(self, token_ids: Sequence[int]) -> tuple[int, ...]:
        t = tuple(token_ids)
        extra = len(t) % self.page_size
        return t[: len(t) - extra] if extra else t

    def _common_len(self, key: tuple[int, ...], tokens: tuple[int, ...], pos: int) -> int:
        n = min(len(key), len(tokens) - pos)
        if key[:n] == tokens[pos : pos + n]:
            k = n
        else:
            k = 0
            while key[k] == tokens[pos + k]:
                k += 1
        return k - k % self.page_size

    def _new_node(self, key, value, parent: RadixNode, depth: int, now: float) -> RadixNode:
        node = RadixNode(self._next_id, key, value, parent, depth, now)
        self._next_id += 1
        self._num_nodes += 1
        return node

    def _walk(self, tokens: tuple[int, ...]) -> tuple[list[RadixNode], int, RadixNode | None, int]:
        """Fully matched nodes, matched length, and the partially matched child (+ its k)."""
        path: list[RadixNode] = []
        node, pos, n = self.root, 0, len(tokens)
        while pos < n:
            child = node.children.get(self._ckey(tokens, pos))
            if child is None:
                break
            k = self._common_len(child.key, tokens, pos)
            if k < len(child.key):
                return path, pos, (child if k > 0 else None), k
            path.append(child)
            pos += k
            node = child
        return path, pos, None, 0

    def _split(self, child: RadixNode, k: int) -> RadixNode:
        """Cut ``child``'s edge after ``k`` tokens; the new upper node is returned."""
        assert 0 < k < len(child.key) and k % self.page_size == 0
        parent = child.parent
        assert parent is not None
        upper = self._new_node(
            child.key[:k], child.value[:k], parent, parent.depth + k, child.last_access
        )
        upper.lock_ref = child.lock_ref
        upper.hit_count = child.hit_count
        upper.meta = dict(child.meta) if child.meta is not None else None
        child.key = child.key[k:]
        child.value = child.value[k:]
        child.parent = upper
        child.version += 1
        upper.children[self._ckey(child.key)] = child
        parent.children[self._ckey(upper.key)] = upper
        return upper

    def _deepest_checkpoint(self, path: list[RadixNode]) -> RadixNode:
        for node in reversed(path):
            if node.checkpoint is not None:
                return node
        return self.root

    # -- lookup ---------------------------------------------------------------------------------

    def peek(self, token_ids: Sequence[int]) -> tuple[int, int]:
        """``(matched_len, hit_len)`` for ``token_ids`` without changing anything (no split,
        no timestamps, no stats): for routers that compare caches."""
        tokens = self._aligned(token_ids)
        path, pos, partial, k = self._walk(tokens)
        matched = pos + (k if partial is not None else 0)
        if not self.hybrid:
            return matched, matched
        return matched, self._deepest_checkpoint(path).depth

    def match_prefix(
        self, token_ids: Sequence[int], now: float | None = None, *, record: bool = True
    ) -> MatchResult:
        """Longest cached prefix of ``token_ids`` (page-truncated); see :class:`MatchResult`.

        Splits the edge the match ends in, refreshes ``last_access`` (per the eviction policy's
        ``refresh_path``), bumps ``hit_count`` of the nodes the hit uses, and, if ``record``,
        adds the query to the hit-rate stats. Engines pass ``prompt[:-1]`` (one token must be
        computed for logits); a hit-rate-only simulator may pass the whole prompt.
        """
        now = self._now(now)
        tokens = self._aligned(token_ids)
        path, pos, partial, k = self._walk(tokens)
        if partial is not None:
            path.append(self._split(partial, k))
            pos += k
        last = path[-1] if path else self.root
        hit_node = self._deepest_checkpoint(path) if self.hybrid else last
        hit_len = hit_node.depth
        for node in path if self.eviction.refresh_path else path[-1:]:
            node.last_access = now
        values: list[int] = []
        for node in path:
            values.extend(node.value)
            if node.depth <= hit_len:
                node.hit_count += 1
        branch = pos if self.hybrid and pos > hit_len and last.children else None
        if record:
            s = self.stats
            s.requests += 1
            s.prompt_tokens += len(token_ids)
            s.hit_tokens += hit_len
            s.matched_tokens += pos
        return MatchResult(pos, last, tuple(values), hit_len, hit_node, hit_node.checkpoint, branch)

    # -- admission ------------------------------------------------------------------------------

    def checkpoint_positions(
        self, token_ids: Sequence[int], match: MatchResult, *, start: int | None = None
    ) -> list[int]:
        """Where the engine must capture SSM states (the admission policy's answer; [] if not
        hybrid). Prefill chunks should end at these positions."""
        if not self.hybrid:
            return []
        return sorted(set(self.admission.positions_to_checkpoint(token_ids, match, start=start)))

    def admit_leaf(self, token_ids: Sequence[int]) -> bool:
        """Whether the finished sequence's final state should be offered to :meth:`insert`."""
        return self.hybrid and self.admission.admit_leaf(token_ids)

    def fork_checkpoint(self, match: MatchResult) -> int:
        """A private copy of the hit's SSM state for a request to update in place.

        Calls ``copy_checkpoint(match.checkpoint)`` and returns the new slot; the cached slot
        is never handed out for writing. Raises if the match has no checkpoint, if it went
        stale (the node was evicted), or if no ``copy_checkpoint`` callback is set.
        """
        if match.checkpoint is None:
            raise KVCacheError("the match has no SSM checkpoint to fork")
        node = match.hit_node
        if not node.alive or node.checkpoint != match.checkpoint:
            raise StaleHandleError("the matched checkpoint was evicted; match again")
        if self.copy_checkpoint is None:
            raise KVCacheError("fork_checkpoint needs a copy_checkpoint callback")
        new = self.copy_checkpoint(match.checkpoint)
        if new == match.checkpoint:
            raise KVCacheError("copy_checkpoint returned the cached slot itself")
        self.stats.checkpoint_forks += 1
        return new

    # -- insertion ------------------------------------------------------------------------------

    def insert(
        self,
        token_ids: Sequence[int],
        values: Sequence[int],
        now: float | None = None,
        *,
        checkpoints: Mapping[int, int] | None = None,
    ) -> InsertResult:
        """Cache ``token_ids`` with one value per token, plus ``{position: state_slot}`` checkpoints.

        The sequence is truncated to a multiple of ``page_size``. Tokens already cached keep
        the tree's values; a passed value that differs from the tree's is returned unused, as
        are the truncated tail's values. A checkpoint lands on the node ending at its position
        (splitting an edge if needed) unless that node already has one, or the position lies
        in the truncated tail or off a page boundary: then it is returned unused.
        """
        tokens = tuple(token_ids)
        vals = tuple(values)
        if len(tokens) != len(vals):
            raise ValueError(f"{len(tokens)} tokens but {len(vals)} values")
        ckpts = sorted((checkpoints or {}).items())
        if ckpts:
            if not self.hybrid:
                raise ValueError("checkpoints given to a cache that is not hybrid")
            slots = [s for _, s in ckpts]
            if len(set(slots)) != len(slots):
                raise ValueError(f"a checkpoint slot is given twice: {slots}")
            bad = [p for p, _ in ckpts if not 0 < p <= len(tokens)]
            if bad:
                raise ValueError(f"checkpoint positions {bad} outside 1..{len(tokens)}")
        now = self._now(now)
        n = len(tokens) - len(tokens) % self.page_size
        unused = list(vals[n:])

        node, pos, path = self.root, 0, []
        while pos < n:
            child = node.children.get(self._ckey(tokens, pos))
            if child is None:
                break
            k = self._common_len(child.key, tokens, pos)
            mine, theirs = vals[pos : pos + k], child.value[:k]
            if mine != theirs:
                unused.extend(v for v, t in zip(mine, theirs, strict=True) if v != t)
            if k < len(child.key):
                child = self._split(child, k)
            path.append(child)
            pos += k
            node = child
        prefix_len = pos
        pending: set[RadixNode] = set()
        if pos < n:
            # The new edge is cut at the checkpoint positions inside it right away, without
            # re-slicing its tail at every cut (quadratic for vLLM+'s checkpoint per block).
            # The result is the same as one new leaf split once per position in the loop
            # below: the upper parts take their ids there, in that order ("pending").
            starts = [pos, *(p for p, _ in ckpts if pos < p < n and p % self.page_size == 0)]
            ends = [*starts[1:], n]
            parent = node
            for a, b in zip(starts, ends, strict=True):
                if b == n:
                    seg = self._new_node(tokens[a:b], vals[a:b], parent, b, now)
                else:
                    seg = RadixNode(-1, tokens[a:b], vals[a:b], parent, b, now)
                    self._num_nodes += 1
                    pending.add(seg)
                parent.children[self._ckey(seg.key)] = seg
                path.append(seg)
                parent = seg
            self._num_tokens += n - pos
        if getattr(self.eviction, "refresh_on_insert", True):  # else only the new nodes carry now
            for hit in path:
                hit.last_access = now

        unused_ck: list[int] = []
        added = 0
        i = 0
        for p, slot in ckpts:
            if p > n or p % self.page_size:
                unused_ck.append(slot)
                continue
            while path[i].depth < p:
                i += 1
            target = path[i]
            if target.depth != p:
                target = self._split(target, p - target.start)
                path.insert(i, target)
            elif target in pending:  # a cut made above: it takes its id now, as a split would
                pending.discard(target)
                target.node_id = self._next_id
                self._next_id += 1
            if target.checkpoint is None:
                target.checkpoint = slot
                self._num_checkpoints += 1
                if target.lock_ref:
                    self._protected_checkpoints += 1
                added += 1
            elif target.checkpoint != slot:
                unused_ck.append(slot)

        self.stats.inserted_tokens += n - prefix_len
        self.stats.inserted_checkpoints += added
        last = path[-1] if path else self.root
        evicted = self.fit_capacity(now, protect=last)
        return InsertResult(prefix_len, n - prefix_len, last, unused, unused_ck, added, evicted)

    def fit_capacity(
        self, now: float | None = None, *, protect: RadixNode | None = None
    ) -> EvictResult | None:
        """Evict until ``total_bytes <= capacity_bytes`` if possible; None if already within.

        ``insert`` calls it with ``protect`` = the inserted sequence's node, which is evicted
        only if evicting everything else does not suffice. Locked nodes are never evicted, so
        the cache may stay over capacity while they are locked; call this again after
        unlocking to shrink it at once (otherwise the next insert does).
        """
        cap = self.capacity_bytes
        if cap is None or self.total_bytes <= cap:
            return None
        now = self._now(now)
        res = EvictResult()
        if protect is not None and protect.alive:
            self.lock(protect)
            try:
                res.extend(self.evict(num_bytes=self.total_bytes - cap, now=now))
            finally:
                self.unlock(protect)
        if self.total_bytes > cap:
            res.extend(self.evict(num_bytes=self.total_bytes - cap, now=now))
        return res

    # -- locks ----------------------------------------------------------------------------------

    def lock(self, node: RadixNode) -> None:
        """Protect ``node`` and its ancestors from eviction (one more lock on each)."""
        if not node.alive:
            raise LockError(f"cannot lock {node}: it was evicted")
        while node is not self.root:
            if node.lock_ref == 0:
                self._protected_tokens += len(node.key)
                self._protected_checkpoints += node.checkpoint is not None
            node.lock_ref += 1
            assert node.parent is not None
            node = node.parent

    def unlock(self, node: RadixNode) -> None:
        """Undo one :meth:`lock` of ``node``; :class:`LockError` (no change) if not locked."""
        if not node.alive:
            raise LockError(f"cannot unlock {node}: it was evicted")
        n: RadixNode | None = node
        while n is not None and n is not self.root:
            if n.lock_ref <= 0:
                raise LockError(f"unlock of {node} would make {n}'s lock count negative")
            n = n.parent
        while node is not self.root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._protected_tokens -= len(node.key)
                self._protected_checkpoints -= node.checkpoint is not None
            assert node.parent is not None
            node = node.parent

    # -- eviction -------------------------------------------------------------------------------

    def is_evictable(self, node: RadixNode, kind: str | None = None) -> bool:
        """Whether ``node`` is an eviction candidate of ``kind`` (default: the policy's)."""
        if node is self.root or not node.alive or node.lock_ref > 0:
            return False
        nc = len(node.children)
        if nc == 0:
            return True
        kind = kind or self.eviction.candidates
        return kind == "single_child" and nc == 1 and node.checkpoint is not None

    def evictable_nodes(self, kind: str | None = None) -> list[RadixNode]:
        """Current candidates of ``kind`` (default: the policy's), in tree order."""
        single = (kind or self.eviction.candidates) == "single_child"
        # is_evictable inlined over iter_nodes' pre-order walk: this runs once per eviction round
        out: list[RadixNode] = []
        stack = list(reversed(self.root.children.values()))
        while stack:
            node = stack.pop()
            ch = node.children
            if not ch:
                if not node.lock_ref:
                    out.append(node)
                continue
            if single and not node.lock_ref and len(ch) == 1 and node.checkpoint is not None:
                out.append(node)
            stack.extend(reversed(ch.values()))
        return out

    def evict(
        self,
        *,
        num_tokens: int = 0,
        num_bytes: int = 0,
        num_checkpoints: int = 0,
        now: float | None = None,
    ) -> EvictResult:
        """Evict until at least ``num_tokens`` values, ``num_checkpoints`` checkpoints and
        ``num_bytes`` bytes are freed (all targets met), or nothing evictable is left.

        The eviction policy picks the victims; the cache frees them: a leaf gives back its
        values and checkpoint, a one-child node (``"single_child"`` policies) its checkpoint,
        its values merging into its child (which keeps the newer ``last_access`` and the larger
        ``hit_count``). With a ``trim_leaves`` policy, a chosen leaf without a checkpoint
        gives back only as many whole pages from its tail as the remaining targets need (it
        stays, a shorter leaf, with its ``last_access``). Freed values and checkpoints go to the
        callbacks and the result. Evicting nothing (all targets 0) is a no-op.
        """
        now = self._now(now)
        res = EvictResult()

        def done() -> bool:
            return (
                len(res.values) >= num_tokens
                and len(res.checkpoints) >= num_checkpoints
                and res.num_bytes >= num_bytes
            )

        if done():
            return res
        policy, kind = self.eviction, self.eviction.candidates
        trim = getattr(policy, "trim_leaves", False)

        def trim_len(node: RadixNode) -> int:
            """Tokens to cut from a trimmable leaf's tail (a page multiple), 0 = evict it all."""
            if (
                node.children
                or node.checkpoint is not None
                or len(res.checkpoints) < num_checkpoints
            ):
                return 0
            page, tok_short, byte_short = (
                self.page_size,
                num_tokens - len(res.values),
                num_bytes - res.num_bytes,
            )
            pages = -(-max(tok_short, 0) // page)
            if byte_short > 0:
                if not self.kv_bytes_per_token:
                    return 0
                pages = max(pages, -(-byte_short // (page * self.kv_bytes_per_token)))
            k = pages * page
            return k if k < len(node.key) else 0

        if isinstance(policy, KeyedEvictionPolicy):
            heap = [
                (policy.key(n, now, self), n.node_id, n.version, n)
                for n in self.evictable_nodes(kind)
            ]
            heapq.heapify(heap)
            while heap and not done():
                _, _, version, node = heapq.heappop(heap)
                if version != node.version or not self.is_evictable(node, kind):
                    continue
                k = trim_len(node) if trim else 0
                if k:
                    self._trim_leaf(node, k, res)  # still a candidate, now shorter
                    heapq.heappush(
                        heap, (policy.key(node, now, self), node.node_id, node.version, node)
                    )
                    continue
                exposed = self._evict_node(node, res)
                if exposed is not None and self.is_evictable(exposed, kind):
                    exposed.version += 1
                    heapq.heappush(
                        heap,
                        (policy.key(exposed, now, self), exposed.node_id, exposed.version, exposed),
                    )
        else:
            # The candidate list is scanned once, then kept in tree order as victims go (the
            # scan dominates the cost of policies that re-select after every victim).
            candidates = self.evictable_nodes(kind)
            while not done():
                if not candidates:
                    break
                progressed = False
                for node in policy.select(list(candidates), now, self):
                    if done():
                        break
                    if not self.is_evictable(node, kind):
                        continue
                    progressed = True
                    k = trim_len(node) if trim else 0
                    if k:
                        self._trim_leaf(node, k, res)
                        break  # the candidate changed: ask the policy again
                    idx = candidates.index(node)
                    del candidates[idx]
                    exposed = self._evict_node(node, res)
                    if exposed is not None and self.is_evictable(exposed, kind):
                        self._place_exposed(candidates, exposed, idx, kind)
                        break  # the candidate set changed: ask the policy again
                if not progressed:
                    break
        s = self.stats
        s.evicted_tokens += len(res.values)
        s.evicted_checkpoints += len(res.checkpoints)
        s.evicted_nodes += res.nodes_removed
        s.merged_nodes += res.nodes_merged
        s.trimmed_nodes += res.nodes_trimmed
        if res.values and self.free_kv is not None:
            self.free_kv(list(res.values))
        if res.checkpoints and self.free_checkpoints is not None:
            self.free_checkpoints(list(res.checkpoints))
        return res

    def _evict_node(self, node: RadixNode, res: EvictResult) -> RadixNode | None:
        """Remove a leaf or merge a one-child node; returns the node whose candidacy changed."""
        parent = node.parent
        assert parent is not None and node.lock_ref == 0
        if node.checkpoint is not None:
            res.checkpoints.append(node.checkpoint)
            res.num_bytes += self.ssm_state_bytes
            self._num_checkpoints -= 1
            node.checkpoint = None
        if not node.children:
            res.values.extend(node.value)
            res.num_bytes += len(node.value) * self.kv_bytes_per_token
            self._num_tokens -= len(node.key)
            del parent.children[self._ckey(node.key)]
            self._detach(node)
            res.nodes_removed += 1
            return parent if parent is not self.root else None
        (child,) = node.children.values()
        child.key = node.key + child.key
        child.value = node.value + child.value
        child.parent = parent
        child.last_access = max(child.last_access, node.last_access)
        child.hit_count = max(child.hit_count, node.hit_count)
        child.version += 1
        parent.children[self._ckey(child.key)] = child
        self._detach(node)
        res.nodes_removed += 1
        res.nodes_merged += 1
        return child

    def _place_exposed(
        self, candidates: list[RadixNode], node: RadixNode, idx: int, kind: str
    ) -> None:
        """Keep ``candidates`` (tree order) exact after an eviction at ``idx`` exposed ``node``.

        A merged child keeps its candidacy, and a parent that already was a candidate keeps its
        place. A parent that just became one (its child at ``idx`` was removed) goes before the
        candidates of its remaining subtree, which are contiguous in tree order, or at ``idx``.
        """
        if node in candidates:  # identity: RadixNode has no __eq__
            return
        pos = idx
        for child in node.children.values():  # at most one remains
            stack = [child]
            while stack:  # the first candidate of the child's subtree in pre-order
                n = stack.pop()
                if self.is_evictable(n, kind):
                    pos = min(pos, candidates.index(n))
                    break
                stack.extend(reversed(n.children.values()))
        candidates.insert(pos, node)

    def _trim_leaf(self, node: RadixNode, k: int, res: EvictResult) -> None:
        """Evict the last ``k`` tokens (whole pages) of a leaf without a checkpoint."""
        assert not node.children and node.checkpoint is None and 0 < k < len(node.key)
        assert k % self.page_size == 0 and node.lock_ref == 0
        res.values.extend(node.value[-k:])
        res.num_bytes += k * self.kv_bytes_per_token
        res.nodes_trimmed += 1
        node.key = node.key[:-k]  # its first page, the parent's key for it, is kept
        node.value = node.value[:-k]
        node.depth -= k
        node.version += 1
        self._num_tokens -= k

    def _detach(self, node: RadixNode) -> None:
        node.parent = None
        node.children = {}
        node.alive = False
        node.version += 1
        self._num_nodes -= 1

    def reset(self) -> EvictResult:
        """Evict everything (the callbacks receive it all); :class:`LockError` if anything is locked."""
        if (
            self._protected_tokens
            or self._protected_checkpoints
            or any(c.lock_ref for c in self.root.children.values())
        ):
            raise LockError("cannot reset a radix cache with locked nodes")
        res = EvictResult()
        for node in list(self.iter_nodes()):
            res.values.extend(node.value)
            if node.checkpoint is not None:
                res.checkpoints.append(node.checkpoint)
            node.alive = False
            node.parent = None
            node.version += 1
        res.num_bytes = self.total_bytes
        res.nodes_removed = self._num_nodes
        self.root.children = {}
        self._num_nodes = self._num_tokens = self._num_checkpoints = 0
        if res.values and self.free_kv is not None:
            self.free_kv(list(res.values))
        if res.checkpoints and self.free_checkpoints is not None:
            self.free_checkpoints(list(res.checkpoints))
        return res

    # -- inspection -----------------------------------------------------------------------------

    def iter_nodes(self) -> Iterator[RadixNode]:
        """Every node but the root, parents before children, children in insertion order."""
        stack = list(reversed(self.root.children.values()))
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children.values()))

    def node_tokens(self, node: RadixNode) -> tuple[int, ...]:
        """The full token prefix ending at ``node``."""
        parts = []
        while node is not self.root and node is not None:
            parts.append(node.key)
            node = node.parent  # type: ignore[assignment]
        return tuple(t for part in reversed(parts) for t in part)

    def node_values(self, node: RadixNode) -> tuple[int, ...]:
        """The values of the full prefix ending at ``node``."""
        parts = []
        while node is not self.root and node is not None:
            parts.append(node.value)
            node = node.parent  # type: ignore[assignment]
        return tuple(v for part in reversed(parts) for v in part)

    def clone(
        self,
        *,
        eviction: EvictionPolicy | None = None,
        admission: AdmissionPolicy | None = None,
        clock: Clock | None = None,
        keep_callbacks: bool = False,
        unlocked: bool = False,
    ) -> RadixCache:
        """An independent deep copy of the tree, counters and stats (Marconi's snapshot).

        Node ids, timestamps, locks and checkpoints are kept. The copy gets deep copies of the
        policies (or the given ones: replay a window with several alphas), a copy of a
        :class:`LogicalClock`/:class:`ManualClock` (any other clock is shared), and no
        callbacks unless ``keep_callbacks`` (a replay must not free the engine's slots).
        ``unlocked`` drops every lock in the copy (a replay from an engine's snapshot: the
        in-flight requests holding those locks never finish there). Iterative, so deep trees
        are fine.
        """
        if clock is None:
            clock = (
                copy.copy(self.clock)
                if isinstance(self.clock, (LogicalClock, ManualClock))
                else self.clock
            )
        other = RadixCache(
            page_size=self.page_size,
            hybrid=self.hybrid,
            kv_bytes_per_token=self.kv_bytes_per_token,
            ssm_state_bytes=self.ssm_state_bytes,
            capacity_bytes=self.capacity_bytes,
            eviction=eviction if eviction is not None else copy.deepcopy(self.eviction),
            admission=admission if admission is not None else copy.deepcopy(self.admission),
            free_kv=self.free_kv if keep_callbacks else None,
            free_checkpoints=self.free_checkpoints if keep_callbacks else None,
            copy_checkpoint=self.copy_checkpoint if keep_callbacks else None,
            clock=clock,
        )
        stack = [(self.root, other.root)]
        while stack:
            src, dst = stack.pop()
            for ck, c in src.children.items():
                d = RadixNode(c.node_id, c.key, c.value, dst, c.depth, c.last_access)
                d.lock_ref = 0 if unlocked else c.lock_ref
                d.hit_count, d.checkpoint = c.hit_count, c.checkpoint
                d.meta = dict(c.meta) if c.meta is not None else None
                dst.children[ck] = d
                stack.append((c, d))
        other._next_id = self._next_id
        other._num_nodes = self._num_nodes
        other._num_tokens = self._num_tokens
        other._num_checkpoints = self._num_checkpoints
        other._protected_tokens = 0 if unlocked else self._protected_tokens
        other._protected_checkpoints = 0 if unlocked else self._protected_checkpoints
        other.stats = replace(self.stats)
        return other

    def check_integrity(self) -> None:
        """Raise AssertionError unless the tree and every counter are consistent."""
        assert self.root.parent is None and not self.root.key and self.root.checkpoint is None
        tokens = ckpts = nodes = prot_t = prot_c = 0
        seen_values: set[int] = set()
        seen_ckpts: set[int] = set()
        stack = [self.root]
        while stack:
            node = stack.pop()
            child_locks = 0
            for ck, c in node.children.items():
                assert c.alive and c.parent is node, c
                assert c.key and len(c.key) == len(c.value), c
                assert len(c.key) % self.page_size == 0, c
                assert ck == self._ckey(c.key), c
                assert c.depth == node.depth + len(c.key), c
                assert c.lock_ref >= 0, c
                child_locks += c.lock_ref
                nodes += 1
                tokens += len(c.key)
                assert seen_values.isdisjoint(c.value), f"value held twice: {c}"
                seen_values.update(c.value)
                assert len(seen_values) == tokens, f"value repeated within {c}"
                if c.checkpoint is not None:
                    assert self.hybrid, c
                    assert c.checkpoint not in seen_ckpts, f"checkpoint held twice: {c}"
                    seen_ckpts.add(c.checkpoint)
                    ckpts += 1
                if c.lock_ref:
                    prot_t += len(c.key)
                    prot_c += c.checkpoint is not None
                stack.append(c)
            if node is not self.root:
                assert node.lock_ref >= child_locks, f"lock count below its children's: {node}"
        assert nodes == self._num_nodes, (nodes, self._num_nodes)
        assert tokens == self._num_tokens, (tokens, self._num_tokens)
        assert ckpts == self._num_checkpoints, (ckpts, self._num_checkpoints)
        assert prot_t == self._protected_tokens, (prot_t, self._protected_tokens)
        assert prot_c == self._protected_checkpoints, (prot_c, self._protected_checkpoints)

    def __repr__(self) -> str:
        return (
            f"RadixCache(nodes={self._num_nodes}, tokens={self._num_tokens}, "
            f"checkpoints={self._num_checkpoints}, bytes={self.total_bytes}, "
            f"page_size={self.page_size}, hybrid={self.hybrid}, eviction={self.eviction!r})"
        )
