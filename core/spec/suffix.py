"""Suffix-tree drafting (SuffixDecoding's idea): continue the context along the most frequent
path of a tree of earlier token sequences."""

from __future__ import annotations

from collections.abc import Sequence

from .drafter import Draft, Drafter, DraftRequest


class _Node:
    __slots__ = ("children", "count")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.count = 0


class SuffixTree:
    """Every substring of up to ``max_depth`` tokens of the sequences added, with how often it
    occurred (a depth-bounded suffix trie). :meth:`extend` adds tokens to a sequence one at a
    time in O(``max_depth``) each, so a request's own tokens can be indexed as they come.

    :meth:`match` finds the longest suffix of a context that occurs in the tree;
    :meth:`speculate` walks from there along the most frequent child while its share of its
    parent's count stays at least ``min_prob``.
    """

    def __init__(self, max_depth: int = 24) -> None:
        if max_depth < 2:
            raise ValueError(f"max_depth must be >= 2, got {max_depth}")
        self.max_depth = max_depth
        self.root = _Node()
        self._open: dict[int, list[_Node]] = {}  # per sequence: nodes of substrings still growing

    def add(self, tokens: Sequence[int]) -> None:
        """Index a whole sequence."""
        key = -1
        self._open[key] = []
        self.extend(key, tokens)
        self._open.pop(key, None)

    def extend(self, seq: int, tokens: Sequence[int]) -> None:
        """Append ``tokens`` to sequence ``seq`` (a new one if unseen): each substring ending
        at a new token, up to ``max_depth`` long, is counted once more."""
        live = self._open.setdefault(seq, [])
        for tok in tokens:
            grown: list[_Node] = []
            for node in [*live, self.root]:
                child = node.children.get(tok)
                if child is None:
                    child = node.children[tok] = _Node()
                child.count += 1
                grown.append(child)
            # a node at depth max_depth grows no further; live nodes are ordered deepest first
            live = grown[-(self.max_depth - 1) :] if len(grown) >= self.max_depth else grown
            self._open[seq] = live

    def close(self, seq: int) -> None:
        """Stop growing sequence ``seq`` (its counts stay)."""
        self._open.pop(seq, None)

    def match(self, context: Sequence[int]) -> tuple[_Node | None, int]:
        """The node of the longest suffix of ``context`` (up to ``max_depth - 1`` tokens, so
        that something can follow) present in the tree, and its length; ``(None, 0)`` if none."""
        top = min(len(context), self.max_depth - 1)
        for n in range(top, 0, -1):
            node: _Node | None = self.root
            for tok in context[len(context) - n :]:
                node = node.children.get(tok) if node is not None else None
                if node is None:
                    break
            if node is not None and node.children:
                return node, n
        return None, 0

    def speculate(
        self, context: Sequence[int], k: int, min_prob: float = 0.1
    ) -> tuple[list[int], int, float]:
        """Up to ``k`` tokens continuing ``context``: ``(tokens, match_length, score)``, score
        the sum of the path's estimated probabilities (the expected accepted tokens)."""
        node, matched = self.match(context)
        out: list[int] = []
        score, prob = 0.0, 1.0
        while node is not None and node.children and len(out) < k:
            # most frequent child; ties to the smaller id, so proposals are deterministic
            tok, child = max(node.children.items(), key=lambda kv: (kv[1].count, -kv[0]))
            total = sum(c.count for c in node.children.values())
            prob *= child.count / total
            if prob < min_prob:
                break
            out.append(tok)
            score += prob
            node = child
        return out, matched, score


class SuffixDrafter(Drafter):
    """The ``"suffix"`` method: two suffix trees, one over earlier requests' outputs (the
    corpus: :meth:`observe`d outputs plus ``corpus`` given up front) and one per request over
    its own prompt and output; the proposal with the higher score wins. Deterministic (``q``
    one-hot)."""

    name = "suffix"

    def __init__(
        self,
        max_depth: int = 24,
        min_token_prob: float = 0.1,
        corpus: Sequence[Sequence[int]] = (),
    ) -> None:
        self.max_depth = max_depth
        self.min_prob = min_token_prob
        self.global_tree = SuffixTree(max_depth)
        for seq in corpus:
            self.global_tree.add(seq)
        self._local: dict[str, tuple[SuffixTree, int]] = {}  # id -> (tree, tokens indexed)

    def _local_tree(self, req: DraftRequest) -> SuffixTree:
        tree, seen = self._local.get(req.request_id, (None, 0))
        if tree is None or seen > len(req.token_ids):
            tree, seen = SuffixTree(self.max_depth), 0
        tree.extend(0, req.token_ids[seen:])
        self._local[req.request_id] = (tree, len(req.token_ids))
        return tree

    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]:
        drafts = []
        for r in requests:
            local = self._local_tree(r)
            if r.num_drafts <= 0:
                drafts.append(Draft([]))
                continue
            # the local tree indexes the context itself: match on it minus its last token's
            # own occurrence is implicit (a substring seen once at the end has no children)
            g = self.global_tree.speculate(r.token_ids, r.num_drafts, self.min_prob)
            loc = local.speculate(r.token_ids, r.num_drafts, self.min_prob)
            best = max((g, loc), key=lambda p: (p[2], p[1]))
            drafts.append(Draft(best[0]))
        return drafts

    def observe(self, prompt_token_ids: Sequence[int], output_token_ids: Sequence[int]) -> None:
        self.global_tree.add(output_token_ids)

    def release(self, request_id: str) -> None:
        self._local.pop(request_id, None)
