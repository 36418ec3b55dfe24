"""A fleet-wide token radix tree: a global router's model of every replica's prefix cache.

Preble's global scheduler keeps one radix tree over the prompts of the whole fleet. Each node
records which replicas (in the router's *model*) cache it, how many in-flight requests use it
on each replica, and when each replica last touched it. The model is never read from the
replicas: the router inserts a prompt's path for the replica it routes to, releases it when
the request finishes, and evicts from a replica's model in LRU order whenever the replica's
token capacity would be exceeded, mirroring the replica's own LRU radix cache.

Windowed statistics (Preble's sliding "histogram") are kept per *request group*: the requests
whose :meth:`GlobalPrefixTree.important_node` is the same node. A group counts its requests,
hit tokens and prompt tokens over the last ``window_s`` seconds; each event expires
``window_s`` after it happened. The tree also keeps each replica's windowed hit and prompt
tokens (its recent prefix-hit ratio).

Invariants (checked by :meth:`GlobalPrefixTree.check`):

- holders are prefix-closed: a replica holding a node holds all its ancestors;
- ``used[r]`` is exactly the sum of segment lengths of the nodes replica ``r`` holds;
- a node referenced on a replica (``refs[r] > 0``) is held by it and is never evicted from it;
- after every mutating call ``used[r] <= capacity[r]`` unless every node ``r`` could evict is
  referenced (a replica over-committed by running requests, as a real one can be).

Times are whatever the caller passes (the simulator's virtual clock); the tree reads no clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass


class WindowStats:
    """Windowed statistics of one request group (requests sharing an important node).

    ``count``, ``hit_tokens`` and ``prompt_tokens`` sum the group's requests still inside the
    window. ``pinned`` belongs to the router: a replica set its rebalancing assigned this group
    to (None: no override); it is dropped with the group when the window empties. A group
    merged into another (after a split moved its important node) forwards to it.
    """

    __slots__ = ("node", "count", "hit_tokens", "prompt_tokens", "pinned", "forward")

    def __init__(self, node: PrefixNode) -> None:
        self.node: PrefixNode | None = node
        self.count = 0
        self.hit_tokens = 0
        self.prompt_tokens = 0
        self.pinned: frozenset[int] | None = None
        self.forward: WindowStats | None = None

    @property
    def miss_rate(self) -> float:
        """1 - hit tokens / prompt tokens over the window (1.0 with no prompt tokens)."""
        return 1.0 - self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 1.0

    def resolve(self) -> WindowStats:
        """The live group this one was merged into (itself if never merged)."""
        s = self
        while s.forward is not None:
            s = s.forward
        return s


class PrefixNode:
    """One edge of the tree: ``segment`` holds prompt positions ``[start, start + len)``.

    Per replica ``r``: ``r in holders`` (the router's model of its cache), ``refs[r]``
    (in-flight requests using the node there), ``last_access[r]`` and ``held_children[r]``
    (children ``r`` holds; 0 makes a held node one of ``r``'s LRU eviction candidates).
    ``stats`` is the node's request group when it is an important node with requests in the
    window. ``uid`` orders nodes created earlier first (deterministic LRU tie-break).
    """

    __slots__ = (
        "uid",
        "segment",
        "start",
        "parent",
        "children",
        "holders",
        "refs",
        "last_access",
        "held_children",
        "stats",
    )

    def __init__(
        self,
        uid: int,
        segment: tuple[int, ...],
        start: int,
        parent: PrefixNode | None,
        num_replicas: int,
    ) -> None:
        self.uid = uid
        self.segment = segment
        self.start = start
        self.parent = parent
        self.children: dict[int, PrefixNode] = {}
        self.holders: set[int] = set()
        self.refs = [0] * num_replicas
        self.last_access = [float("-inf")] * num_replicas
        self.held_children = [0] * num_replicas
        self.stats: WindowStats | None = None

    @property
    def end(self) -> int:
        return self.start + len(self.segment)

    @property
    def is_important(self) -> bool:
        """Its own segment is longer than all its ancestors' segments together."""
        return len(self.segment) > self.start

    def __repr__(self) -> str:
        return (
            f"PrefixNode(uid={self.uid}, tokens=[{self.start}, {self.end}), "
            f"holders={sorted(self.holders)}, refs={self.refs})"
        )


@dataclass(frozen=True)
class PrefixMatch:
    """What the tree knows of a prompt, without changing anything.

    ``length``: tokens of the prompt on a path of the tree (held by some replica or not);
    ``cached[r]``: tokens of the prompt replica ``r`` holds (its modelled prefix-cache hit);
    ``path``: the nodes the prompt runs through, root excluded (the last may match partly).
    """

    length: int
    cached: tuple[int, ...]
    path: tuple[PrefixNode, ...]

    @property
    def best(self) -> int:
        """The longest prefix any replica caches."""
        return max(self.cached, default=0)


def _common_prefix(segment: tuple[int, ...], tokens: tuple[int, ...], pos: int) -> int:
    n = min(len(segment), len(tokens) - pos)
    if tokens[pos : pos + n] == segment[:n]:
        return n
    k = 0
    while segment[k] == tokens[pos + k]:
        k += 1
    return k


class GlobalPrefixTree:
    """The router's token radix tree over all replicas' prompts; see the module doc.

    ``capacity_tokens``: prompt tokens each replica's cache can hold (one int for all, or one
    per replica). ``window_s``: the statistics window (Preble: 3 minutes).
    """

    def __init__(
        self, num_replicas: int, capacity_tokens: int | Sequence[int], window_s: float = 180.0
    ) -> None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        caps = (
            [int(capacity_tokens)] * num_replicas
            if isinstance(capacity_tokens, int)
            else [int(c) for c in capacity_tokens]
        )
        if len(caps) != num_replicas or any(c < 0 for c in caps):
            raise ValueError(
                f"capacity_tokens must be >= 0, one per replica ({num_replicas}); "
                f"got {capacity_tokens!r}"
            )
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.num_replicas = num_replicas
        self.capacity = caps
        self.window_s = float(window_s)
        self._uids = itertools.count()
        self.root = PrefixNode(next(self._uids), (), 0, None, num_replicas)
        self.used = [0] * num_replicas
        self._leaves: list[set[PrefixNode]] = [set() for _ in range(num_replicas)]
        # window events: (time, group, replica, hit tokens, prompt tokens), oldest first
        self._events: deque[tuple[float, WindowStats, int, int, int]] = deque()
        self._groups: dict[WindowStats, None] = {}  # live groups, in creation order
        self.replica_hit_tokens = [0] * num_replicas
        self.replica_prompt_tokens = [0] * num_replicas

    # -- lookups ----------------------------------------------------------------------------

    def match(self, token_ids: Sequence[int]) -> PrefixMatch:
        """The longest path of ``token_ids`` in the tree and each replica's cached length."""
        tokens = tuple(token_ids)
        cached = [0] * self.num_replicas
        path: list[PrefixNode] = []
        node, pos = self.root, 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                break
            k = _common_prefix(child.segment, tokens, pos)
            path.append(child)
            for r in child.holders:  # holders are prefix-closed, so this sums a prefix
                cached[r] += k
            pos += k
            if k < len(child.segment):
                break
            node = child
        return PrefixMatch(pos, tuple(cached), tuple(path))

    def important_node(self, node: PrefixNode) -> PrefixNode:
        """The nearest ancestor-or-self whose segment is longer than all its ancestors' together
        (the root for the root)."""
        v = node
        while v.parent is not None and not v.is_important:
            v = v.parent
        return v

    def path_to(self, node: PrefixNode) -> list[PrefixNode]:
        """The nodes from the root's child down to ``node``."""
        out = []
        while node.parent is not None:
            out.append(node)
            node = node.parent
        out.reverse()
        return out

    def nodes(self) -> Iterator[PrefixNode]:
        """Every node but the root, parents before children."""
        stack = list(self.root.children.values())
        while stack:
            v = stack.pop()
            yield v
            stack.extend(v.children.values())

    def groups(self) -> list[WindowStats]:
        """Live request groups (requests in the window), oldest group first."""
        return list(self._groups)

    def replica_hit_ratio(self, replica: int) -> float | None:
        """Windowed hit tokens / prompt tokens of the requests routed to ``replica`` (None when
        it got none in the window)."""
        p = self.replica_prompt_tokens[replica]
        return self.replica_hit_tokens[replica] / p if p else None

    # -- placement --------------------------------------------------------------------------

    def insert(
        self, token_ids: Sequence[int], replica: int, now: float, *, ref: bool = True
    ) -> PrefixNode:
        """Model ``replica`` caching the prompt: create its path (splitting nodes where it
        diverges), mark it held and touched at ``now``, add one reference on ``replica`` to each
        node when ``ref``, then evict ``replica``'s LRU unreferenced leaves past its capacity.
        Returns the node where the prompt ends (the root for an empty prompt); pass it to
        :meth:`release`. It stays the prompt's last node whatever later inserts split."""
        tokens = tuple(token_ids)
        node, pos = self.root, 0
        path: list[PrefixNode] = []
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                child = PrefixNode(next(self._uids), tokens[pos:], pos, node, self.num_replicas)
                node.children[tokens[pos]] = child
            else:
                k = _common_prefix(child.segment, tokens, pos)
                if k < len(child.segment):
                    child = self._split(child, k)
            path.append(child)
            pos = child.end
            node = child
        for v in path:
            self._hold(v, replica, now)
            if ref:
                v.refs[replica] += 1
        self._fit(replica)
        return node

    def release(self, node: PrefixNode, replica: int) -> None:
        """Drop one reference on ``replica`` from ``node`` and its ancestors (a request that
        :meth:`insert` placed there finished); they become evictable again."""
        path = self.path_to(node)
        if any(v.refs[replica] <= 0 for v in path):
            raise ValueError(f"release on replica {replica} of {node!r}: not referenced there")
        for v in path:
            v.refs[replica] -= 1
        self._fit(replica)

    def eviction_victims(
        self, replica: int, num_tokens: int, protect: Iterable[PrefixNode] = ()
    ) -> list[PrefixNode]:
        """The nodes an LRU eviction of at least ``num_tokens`` tokens from ``replica``'s model
        would remove, in order, without removing them: least recently used unreferenced leaves
        of what ``replica`` holds first, a parent once its held children are gone. Nodes in
        ``protect`` (e.g. a prompt about to be placed there) and referenced ones are kept; the
        list frees fewer tokens when nothing else can go."""
        if num_tokens <= 0:
            return []
        keep = set(protect)
        heap = [
            (v.last_access[replica], v.uid, v)
            for v in self._leaves[replica]
            if v.refs[replica] == 0 and v not in keep
        ]
        heapq.heapify(heap)
        gone_children: dict[PrefixNode, int] = {}
        victims: list[PrefixNode] = []
        freed = 0
        while heap and freed < num_tokens:
            _, _, v = heapq.heappop(heap)
            victims.append(v)
            freed += len(v.segment)
            p = v.parent
            assert p is not None
            if p is self.root:
                continue
            gone = gone_children[p] = gone_children.get(p, 0) + 1
            if gone == p.held_children[replica] and p.refs[replica] == 0 and p not in keep:
                heapq.heappush(heap, (p.last_access[replica], p.uid, p))
        return victims

    def evict(self, replica: int, num_tokens: int) -> list[PrefixNode]:
        """Remove at least ``num_tokens`` tokens (if it can) from ``replica``'s model in LRU
        order (see :meth:`eviction_victims`); the nodes removed."""
        victims = self.eviction_victims(replica, num_tokens)
        for v in victims:
            self._unhold(v, replica)
        for v in victims:
            self._prune(v)
        return victims

    # -- windowed statistics ----------------------------------------------------------------

    def record(
        self, node: PrefixNode, replica: int, hit_tokens: int, prompt_tokens: int, now: float
    ) -> WindowStats:
        """Count a request whose prompt ends at ``node``, routed to ``replica`` with
        ``hit_tokens`` of its ``prompt_tokens`` cached, in its important node's group."""
        v = self.important_node(node)
        g = v.stats
        if g is None:
            g = v.stats = WindowStats(v)
            self._groups[g] = None
        g.count += 1
        g.hit_tokens += hit_tokens
        g.prompt_tokens += prompt_tokens
        self.replica_hit_tokens[replica] += hit_tokens
        self.replica_prompt_tokens[replica] += prompt_tokens
        self._events.append((now, g, replica, hit_tokens, prompt_tokens))
        return g

    def expire(self, now: float) -> None:
        """Forget events older than ``now - window_s``; a group left empty goes (with its
        pin), and its node too if nothing else keeps it."""
        horizon = now - self.window_s
        events = self._events
        while events and events[0][0] < horizon:
            _, g0, replica, hit, prompt = events.popleft()
            g = g0.resolve()
            g.count -= 1
            g.hit_tokens -= hit
            g.prompt_tokens -= prompt
            self.replica_hit_tokens[replica] -= hit
            self.replica_prompt_tokens[replica] -= prompt
            if g.count == 0:
                del self._groups[g]
                node = g.node
                g.node = None
                if node is not None:
                    node.stats = None
                    self._prune(node)

    # -- invariants -------------------------------------------------------------------------

    def check(self) -> None:
        """Raise AssertionError if an invariant of the module doc does not hold (for tests)."""
        used = [0] * self.num_replicas
        leaves: list[set[PrefixNode]] = [set() for _ in range(self.num_replicas)]
        for v in self.nodes():
            p = v.parent
            assert p is not None and p.children.get(v.segment[0]) is v and len(v.segment) > 0
            assert v.start == p.end
            for r in range(self.num_replicas):
                held_kids = sum(r in c.holders for c in v.children.values())
                assert v.held_children[r] == held_kids, (v, r)
                assert v.refs[r] >= 0, (v, r)
                if v.refs[r] > 0:
                    assert r in v.holders, (v, r)
                if r in v.holders:
                    assert p is self.root or r in p.holders, (v, r)
                    used[r] += len(v.segment)
                    if held_kids == 0:
                        leaves[r].add(v)
            if v.stats is not None:
                assert v.stats.node is v and v.is_important and v.stats in self._groups
        assert used == self.used, (used, self.used)
        assert leaves == self._leaves
        for r in range(self.num_replicas):
            if self.used[r] > self.capacity[r]:
                assert all(v.refs[r] > 0 for v in self._leaves[r]), r

    # -- internals --------------------------------------------------------------------------

    def _split(self, child: PrefixNode, k: int) -> PrefixNode:
        """Cut ``child`` after ``k`` tokens; the new upper node takes its place (and copies its
        holders, references and access times), ``child`` keeps the rest."""
        parent = child.parent
        assert parent is not None and 0 < k < len(child.segment)
        upper = PrefixNode(
            next(self._uids), child.segment[:k], child.start, parent, self.num_replicas
        )
        parent.children[upper.segment[0]] = upper
        child.segment = child.segment[k:]
        child.start += k
        child.parent = upper
        upper.children[child.segment[0]] = child
        upper.holders = set(child.holders)
        upper.refs = list(child.refs)
        upper.last_access = list(child.last_access)
        for r in child.holders:
            upper.held_children[r] = 1
        if child.stats is not None and not child.is_important:
            # the group now shares a shorter important node higher up (Preble renames it)
            self._move_group(child, self.important_node(upper))
        return upper

    def _move_group(self, src: PrefixNode, dst: PrefixNode) -> None:
        g = src.stats
        assert g is not None
        src.stats = None
        into = dst.stats
        if into is None:
            dst.stats, g.node = g, dst
            return
        into.count += g.count
        into.hit_tokens += g.hit_tokens
        into.prompt_tokens += g.prompt_tokens
        if into.pinned is None:
            into.pinned = g.pinned
        g.forward, g.node = into, None
        del self._groups[g]

    def _hold(self, v: PrefixNode, replica: int, now: float) -> None:
        v.last_access[replica] = now
        if replica in v.holders:
            return
        v.holders.add(replica)
        self.used[replica] += len(v.segment)
        p = v.parent
        assert p is not None
        if p is not self.root:
            p.held_children[replica] += 1
            self._leaves[replica].discard(p)
        if v.held_children[replica] == 0:
            self._leaves[replica].add(v)

    def _unhold(self, v: PrefixNode, replica: int) -> None:
        assert v.refs[replica] == 0 and v.held_children[replica] == 0
        v.holders.discard(replica)
        self.used[replica] -= len(v.segment)
        self._leaves[replica].discard(v)
        p = v.parent
        assert p is not None
        if p is not self.root:
            p.held_children[replica] -= 1
            if p.held_children[replica] == 0:
                self._leaves[replica].add(p)

    def _fit(self, replica: int) -> None:
        over = self.used[replica] - self.capacity[replica]
        if over > 0:
            self.evict(replica, over)

    def _prune(self, v: PrefixNode) -> None:
        """Delete ``v`` and then its ancestors while nothing keeps them (no holder, child or
        live group)."""
        while v.parent is not None and not v.holders and not v.children and v.stats is None:
            p = v.parent
            del p.children[v.segment[0]]
            v.parent = None
            v = p
