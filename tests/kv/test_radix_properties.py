"""Property tests of RadixCache driven the way an engine drives it.

:class:`RadixHarness` plays the engine: requests match, lock, fork checkpoints, allocate KV
and state slots from real allocators (evicting when short), capture the checkpoints the
admission policy asks for, insert and unlock; others abort; external locks come and go;
evictions and clones happen. :meth:`RadixHarness.check` asserts, after every step:

- ownership: every KV / state slot handed out is in the tree or held by a running request,
  never both, and every other slot is free (no leak; double frees raise in the allocators);
- content: each value holds the KV of exactly the token prefix it sits under, each
  checkpoint the state of exactly its node's prefix (the tree equals what was inserted);
- locks: every node's lock count equals the locks held on it or below (never negative), and
  no locked node is ever evicted;
- bytes: total bytes = tokens * kv_bytes + checkpoints * ssm_bytes, recomputed from the tree.

Two drivers: a hypothesis state machine (short runs, shrinks failures) and a seeded soak
(long runs over every configuration, reaches deep states such as repeated merges).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from core.kv import (
    CheckpointAtBranchesAndLeaves,
    CheckpointAtLeaves,
    CheckpointEveryK,
    EvictionPolicy,
    LRUEviction,
    RadixCache,
    SlotAllocator,
)

KV_BYTES, SSM_BYTES = 1, 5
BASES = [(), (0, 1, 2, 0), (0, 1, 2, 0, 1, 1), (2, 2), (1,)]
EVICT_WHAT = ["num_tokens", "num_checkpoints", "num_bytes"]


class SortedLRU(EvictionPolicy):
    """LRU through the generic ``select`` path (no heap)."""

    def __init__(self, candidates, refresh_path):
        self.candidates = candidates
        self.refresh_path = refresh_path

    def select(self, candidates, now, cache):
        return sorted(candidates, key=lambda n: (n.last_access, n.node_id))


def shape(cache):
    return sorted(
        (cache.node_tokens(n), n.value, n.checkpoint, n.lock_ref, n.last_access)
        for n in cache.iter_nodes()
    )


class RadixHarness:
    def __init__(
        self, page, hybrid, kind, keyed, refresh, admission, capacity, note=lambda s: None
    ):
        self.note = note
        self.kv = SlotAllocator(48, name="kv")
        self.states = SlotAllocator(14, name="state")
        self.kv_content: dict[int, tuple] = {}
        self.st_content: dict[int, tuple] = {}
        policy = LRUEviction(kind, refresh_path=refresh) if keyed else SortedLRU(kind, refresh)
        adm = {
            "leaves": CheckpointAtLeaves(),
            "branch": CheckpointAtBranchesAndLeaves(),
            "every2": CheckpointEveryK(2 * page),
        }[admission]
        self.kind, self.refresh, self.capacity = kind, refresh, capacity
        self.cache = RadixCache(
            page_size=page,
            hybrid=hybrid,
            kv_bytes_per_token=KV_BYTES,
            ssm_state_bytes=SSM_BYTES,
            capacity_bytes=capacity,
            eviction=policy,
            admission=adm,
            free_kv=self._free_kv,
            free_checkpoints=self._free_states,
            copy_checkpoint=self._copy_state,
        )
        self.running: dict[int, dict] = {}
        self.ext_locks: list = []
        self.finished: list[tuple] = []
        self.next_rid = 0
        self.prompt_tokens = 0

    # -- allocator plumbing (what an engine would do) -------------------------------------------

    def _free_kv(self, values):
        self.kv.free(values)
        for v in values:
            del self.kv_content[v]

    def _free_states(self, slots):
        self.states.free(slots)
        for s in slots:
            del self.st_content[s]

    def _copy_state(self, slot):
        new = self.states.alloc_one()
        self.st_content[new] = self.st_content[slot]
        return new

    def _ensure(self, n_kv, n_st):
        short = n_kv - self.kv.num_free
        if short > 0:
            self.cache.evict(num_tokens=short)
        short = n_st - self.states.num_free
        if short > 0:
            self.cache.evict(num_checkpoints=short)
        return self.kv.num_free >= n_kv and self.states.num_free >= n_st

    # -- operations -----------------------------------------------------------------------------

    def start(self, base, tail, out):
        c = self.cache
        prompt = list(base) + list(tail) or [0]
        full = prompt + list(out)
        m = c.match_prefix(prompt[:-1])
        self.prompt_tokens += len(prompt) - 1
        assert m.hit_len <= m.matched_len <= len(prompt) - 1
        assert m.last_node.depth == m.matched_len and m.hit_node.depth == m.hit_len
        for i, v in enumerate(m.values):
            assert self.kv_content[v] == tuple(prompt[: i + 1])
        if c.hybrid:
            assert (m.checkpoint is None) == (m.hit_len == 0)
            if m.checkpoint is not None:
                assert self.st_content[m.checkpoint] == tuple(prompt[: m.hit_len])
        else:
            assert m.hit_len == m.matched_len and m.checkpoint is None
        self.note(f"hit={'yes' if m.hit_len else 'no'}, branch={'yes' if m.branch_len else 'no'}")
        c.lock(m.hit_node)
        stops = c.checkpoint_positions(prompt, m)
        stops += c.checkpoint_positions(full, m, start=len(prompt))  # during decode
        assert all(m.hit_len < p <= len(full) for p in stops)
        n_st = (1 + len(stops)) if c.hybrid else 0
        if not self._ensure(len(full) - m.hit_len, n_st):
            self.note("start: no room even after eviction")
            c.unlock(m.hit_node)
            return
        live = None
        if c.hybrid:
            if m.checkpoint is not None:
                live = c.fork_checkpoint(m)
                assert live != m.checkpoint
                assert self.st_content[live] == tuple(prompt[: m.hit_len])
                self.note("forked a cached SSM state")
            else:
                live = self.states.alloc_one()
            self.st_content[live] = tuple(full)  # the state after processing everything
        own = self.kv.alloc(len(full) - m.hit_len)
        for i, v in zip(range(m.hit_len, len(full)), own, strict=True):
            self.kv_content[v] = tuple(full[: i + 1])
        captured = {}
        for p in stops:
            s = self.states.alloc_one()
            self.st_content[s] = tuple(full[:p])
            captured[p] = s
        self.running[self.next_rid] = dict(full=full, m=m, own=own, captured=captured, live=live)
        self.next_rid += 1

    def finish(self, rid, fit=False):
        c = self.cache
        r = self.running.pop(rid)
        full, m = r["full"], r["m"]
        ckpts = dict(r["captured"])
        if c.admit_leaf(full) and len(full) not in ckpts:  # else already captured there
            ckpts[len(full)] = r["live"]
        res = c.insert(full, list(m.hit_values) + r["own"], checkpoints=ckpts or None)
        n = len(full) - len(full) % c.page_size
        assert res.prefix_len + res.inserted_len == n and res.last_node.depth == n
        if res.unused_checkpoints:
            self.note("insert returned unused checkpoints")
        if res.evicted is not None and res.evicted.nodes_removed:
            self.note("insert evicted for capacity")
        self._free_kv(res.unused_values)
        self._free_states(res.unused_checkpoints)
        if r["live"] is not None and r["live"] not in ckpts.values():
            self._free_states([r["live"]])
        if self.capacity is not None:  # enforced at insert, as far as locks allow
            assert c.total_bytes <= self.capacity or c.evictable_bytes == 0
        c.unlock(m.hit_node)
        self.finished.append(tuple(full))
        if self.capacity is not None and fit:  # shrink right after unlocking
            c.fit_capacity()
            assert c.total_bytes <= self.capacity or c.evictable_bytes == 0

    def abort(self, rid):
        r = self.running.pop(rid)
        self._free_kv(r["own"])
        self._free_states(
            list(r["captured"].values()) + ([r["live"]] if r["live"] is not None else [])
        )
        self.cache.unlock(r["m"].hit_node)

    def evict(self, what, n):
        before = self.cache.total_bytes
        res = self.cache.evict(**{what: n})
        assert before - self.cache.total_bytes == res.num_bytes
        assert res.num_bytes == res.num_tokens * KV_BYTES + len(res.checkpoints) * SSM_BYTES
        if res.nodes_merged:
            self.note("evict: merged a one-child node into its child")

    def external_lock(self, tokens):
        m = self.cache.match_prefix(tokens, record=False)
        self.cache.lock(m.last_node)
        self.ext_locks.append(m.last_node)

    def external_unlock(self, i):
        self.cache.unlock(self.ext_locks.pop(i))

    def clone_is_independent(self, n):
        c = self.cache
        before = shape(c)
        d = c.clone()
        d.check_integrity()
        assert shape(d) == before
        d.evict(num_tokens=n, num_checkpoints=n)
        d.insert([7, 7, 7], [1000, 1001, 1002])
        d.check_integrity()
        assert shape(c) == before

    def keyed_and_select_paths_agree(self, n):
        c = self.cache
        a = c.clone(eviction=LRUEviction(self.kind, refresh_path=self.refresh))
        b = c.clone(eviction=SortedLRU(self.kind, self.refresh))
        ra = a.evict(num_tokens=n, now=1e9)
        rb = b.evict(num_tokens=n, now=1e9)
        assert (ra.values, ra.checkpoints) == (rb.values, rb.checkpoints)
        assert shape(a) == shape(b)

    # -- invariants -----------------------------------------------------------------------------

    def check(self):
        c = self.cache
        c.check_integrity()
        tree_vals, tree_ck = [], []
        for node in c.iter_nodes():
            toks = c.node_tokens(node)
            for i, v in enumerate(node.value):
                assert self.kv_content[v] == toks[: node.start + i + 1]
            tree_vals.extend(node.value)
            if node.checkpoint is not None:
                assert self.st_content[node.checkpoint] == toks
                tree_ck.append(node.checkpoint)
        assert c.total_bytes == len(tree_vals) * KV_BYTES + len(tree_ck) * SSM_BYTES
        assert c.num_tokens == len(tree_vals) and c.num_checkpoints == len(tree_ck)
        # ownership: tree + running requests == handed out, no overlap
        req_vals = [v for r in self.running.values() for v in r["own"]]
        req_st = [s for r in self.running.values() for s in r["captured"].values()]
        req_st += [r["live"] for r in self.running.values() if r["live"] is not None]
        for held, alloc, content in (
            (tree_vals + req_vals, self.kv, self.kv_content),
            (tree_ck + req_st, self.states, self.st_content),
        ):
            assert len(set(held)) == len(held)
            assert set(held) == {s for s in range(alloc.num_slots) if not alloc.is_free(s)}
            assert set(held) == set(content)
        # locks: exact counts from the handles held
        expected: Counter = Counter()
        for node in [r["m"].hit_node for r in self.running.values()] + self.ext_locks:
            assert node.alive, "a locked node was evicted"
            while node is not c.root:
                expected[node.node_id] += 1
                node = node.parent
        for node in c.iter_nodes():
            assert node.lock_ref == expected[node.node_id] >= 0
        assert c.stats.prompt_tokens == self.prompt_tokens

    def close(self):
        c = self.cache
        for rid in list(self.running):
            self.abort(rid)
        for node in self.ext_locks:
            c.unlock(node)
        self.ext_locks = []
        c.reset()
        assert (
            self.kv.num_free == self.kv.num_slots and self.states.num_free == self.states.num_slots
        )
        assert not self.kv_content and not self.st_content


# -- hypothesis driver -------------------------------------------------------------------------


class RadixMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.h: RadixHarness | None = None  # built by the initialize rule, before any rule

    @initialize(
        page=st.sampled_from([1, 1, 2, 3]),
        hybrid=st.booleans(),
        kind=st.sampled_from(["leaves", "single_child"]),
        keyed=st.booleans(),
        refresh=st.booleans(),
        admission=st.sampled_from(["leaves", "branch", "every2"]),
        capacity=st.sampled_from([None, None, 30]),
    )
    def setup(self, **config):
        self.h = RadixHarness(**config, note=event)

    @rule(
        data=st.data(),
        tail=st.lists(st.integers(0, 2), max_size=6),
        out=st.lists(st.integers(0, 2), max_size=4),
    )
    def start(self, data, tail, out):
        base = data.draw(st.sampled_from(BASES + self.h.finished[-4:]))  # or a next turn
        self.h.start(base, tail, out)

    @precondition(lambda self: self.h.running)
    @rule(data=st.data(), fit=st.booleans())
    def finish(self, data, fit):
        self.h.finish(data.draw(st.sampled_from(sorted(self.h.running))), fit)

    @precondition(lambda self: self.h.running)
    @rule(data=st.data())
    def abort(self, data):
        self.h.abort(data.draw(st.sampled_from(sorted(self.h.running))))

    @rule(what=st.sampled_from(EVICT_WHAT), n=st.integers(0, 20))
    def evict(self, what, n):
        self.h.evict(what, n)

    @rule(base=st.sampled_from(BASES), tail=st.lists(st.integers(0, 2), max_size=4))
    def external_lock(self, base, tail):
        self.h.external_lock(list(base) + tail)

    @precondition(lambda self: self.h.ext_locks)
    @rule(data=st.data())
    def external_unlock(self, data):
        self.h.external_unlock(data.draw(st.integers(0, len(self.h.ext_locks) - 1)))

    @rule(n=st.integers(1, 40))
    def clone_is_independent(self, n):
        self.h.clone_is_independent(n)

    @rule(n=st.integers(1, 40))
    def keyed_and_select_paths_agree(self, n):
        self.h.keyed_and_select_paths_agree(n)

    @invariant()
    def consistent(self):
        if self.h is not None:
            self.h.check()

    def teardown(self):
        if self.h is not None:
            self.h.close()


TestRadixMachine = RadixMachine.TestCase
TestRadixMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# -- seeded soak driver ------------------------------------------------------------------------


def _soak(seed: int, steps: int) -> Counter:
    rng = random.Random(seed)
    notes: Counter = Counter()
    h = RadixHarness(
        page=rng.choice([1, 1, 2, 3]),
        hybrid=seed % 2 == 0 or rng.random() < 0.5,
        kind=rng.choice(["leaves", "single_child"]),
        keyed=rng.random() < 0.5,
        refresh=rng.random() < 0.5,
        admission=rng.choice(["leaves", "branch", "every2"]),
        capacity=rng.choice([None, 30]),
        note=lambda s: notes.update([s]),
    )

    def seq(n):
        return [rng.randint(0, 2) for _ in range(rng.randint(0, n))]

    for _ in range(steps):
        op = rng.random()
        if op < 0.35 or not h.running:
            base = rng.choice(BASES + h.finished[-4:])
            h.start(base, seq(5), seq(4))
        elif op < 0.65:
            h.finish(rng.choice(sorted(h.running)), fit=rng.random() < 0.5)
        elif op < 0.72:
            h.abort(rng.choice(sorted(h.running)))
        elif op < 0.82:
            h.evict(rng.choice(EVICT_WHAT), rng.randint(0, 15))
        elif op < 0.88:
            h.external_lock(list(rng.choice(BASES)) + seq(3))
        elif op < 0.94 and h.ext_locks:
            h.external_unlock(rng.randrange(len(h.ext_locks)))
        elif op < 0.97:
            h.clone_is_independent(rng.randint(1, 40))
        else:
            h.keyed_and_select_paths_agree(rng.randint(1, 40))
        h.check()
    h.close()
    return notes


@pytest.mark.parametrize("seed", range(16))
def test_soak(seed):
    notes = _soak(seed, 500)
    assert notes["hit=yes, branch=no"] + notes["hit=yes, branch=yes"] > 0  # the soak does hit


def test_soak_reaches_the_deep_paths():
    """Across the seeds, every interesting path is taken (guards the soak's usefulness)."""
    total: Counter = Counter()
    for seed in range(12):
        total += _soak(seed, 120)
    for what in (
        "forked a cached SSM state",
        "evict: merged a one-child node into its child",
        "insert evicted for capacity",
        "insert returned unused checkpoints",
        "hit=yes, branch=yes",
        "hit=no, branch=yes",
    ):
        assert total[what] > 0, what
