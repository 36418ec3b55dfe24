"""RadixCache on hand-built trees: match/insert/split, locks, eviction (leaf and one-child),
checkpoints and admission, copy-on-write, pages, byte accounting, stats, clones."""

from __future__ import annotations

import pytest

from core.kv import (
    CheckpointAtBranchesAndLeaves,
    CheckpointAtLeaves,
    CheckpointEveryK,
    EvictionPolicy,
    KVCacheError,
    LockError,
    LRUEviction,
    ManualClock,
    RadixCache,
    SlotAllocator,
    StaleHandleError,
)


def vals(tokens, base=100):
    """Distinct values for a token list (position-based, offset by base)."""
    return [base + i for i in range(len(tokens))]


def shape(cache: RadixCache):
    """Canonical dump: (full prefix, values, checkpoint, lock_ref, last_access, hit_count)."""
    return sorted(
        (cache.node_tokens(n), n.value, n.checkpoint, n.lock_ref, n.last_access, n.hit_count)
        for n in cache.iter_nodes()
    )


# -- match / insert / split --------------------------------------------------------------------


def test_insert_then_match_returns_values_and_splits_inside_an_edge():
    c = RadixCache()
    r = c.insert([1, 2, 3, 4, 5], [10, 11, 12, 13, 14], now=1)
    assert (r.prefix_len, r.inserted_len, r.unused_values) == (0, 5, [])
    assert c.num_nodes == 1 and c.num_tokens == 5
    m = c.match_prefix([1, 2, 3, 9], now=2)
    assert m.matched_len == 3 and m.hit_len == 3 and m.values == (10, 11, 12)
    assert m.last_node is m.hit_node and m.last_node.depth == 3
    assert c.num_nodes == 2  # the edge [1..5] split into [1,2,3] + [4,5]
    assert [n.key for n in c.iter_nodes()] == [(1, 2, 3), (4, 5)]
    assert c.match_prefix([7], now=3).matched_len == 0
    assert c.match_prefix([1, 2, 3, 4, 5, 6], now=4).values == (10, 11, 12, 13, 14)
    c.check_integrity()


def test_insert_shares_prefix_and_returns_duplicate_values():
    c = RadixCache()
    c.insert([1, 2, 3, 4], [10, 11, 12, 13], now=1)
    # a request reused [1, 2] (same values), recomputed 3 (new value 52), then diverged
    r = c.insert([1, 2, 3, 7, 8], [10, 11, 52, 53, 54], now=2)
    assert r.prefix_len == 3 and r.inserted_len == 2
    assert r.unused_values == [52]  # the tree keeps its own value for token 3
    m = c.match_prefix([1, 2, 3, 7, 8], now=3)
    assert m.values == (10, 11, 12, 53, 54)
    assert sorted(n.key for n in c.iter_nodes()) == [(1, 2, 3), (4,), (7, 8)]
    assert c.num_tokens == 6
    # inserting something already cached takes nothing
    r = c.insert([1, 2], [10, 11], now=4)
    assert (r.prefix_len, r.inserted_len, r.unused_values) == (2, 0, [])
    with pytest.raises(ValueError):
        c.insert([1, 2], [1])
    c.check_integrity()


def test_peek_changes_nothing():
    c = RadixCache(hybrid=True)
    c.insert([1, 2, 3, 4], vals([1, 2, 3, 4]), now=1, checkpoints={2: 0})
    before = shape(c)
    assert c.peek([1, 2, 3, 9]) == (3, 2)
    assert shape(c) == before and c.stats.requests == 0


def test_page_size_truncates_matches_and_inserts():
    c = RadixCache(page_size=4)
    toks = list(range(10))
    r = c.insert(toks, vals(toks), now=1)
    assert r.inserted_len == 8 and r.unused_values == [108, 109]  # the partial page
    assert c.num_tokens == 8
    m = c.match_prefix([0, 1, 2, 3, 4, 5, 99], now=2)
    assert m.matched_len == 4  # 6 tokens match, only one whole page counts
    assert [n.key for n in c.iter_nodes()] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert c.match_prefix([0, 1, 2], now=3).matched_len == 0
    r = c.insert([0, 1, 2, 3, 4, 5, 9, 9], vals(range(8), 200), now=4)
    assert r.prefix_len == 4 and r.unused_values == [200, 201, 202, 203]
    assert sorted(n.key for n in c.iter_nodes()) == [(0, 1, 2, 3), (4, 5, 6, 7), (4, 5, 9, 9)]
    c.check_integrity()


# -- locks ------------------------------------------------------------------------------------


def test_lock_counts_along_the_path_and_blocks_eviction():
    c = RadixCache()
    c.insert([1, 2, 3, 4], vals([1, 2, 3, 4]), now=1)
    m = c.match_prefix([1, 2, 9], now=2)  # splits: [1,2] -> [3,4]
    c.insert([1, 2, 5], [100, 101, 200], now=3)
    leaf = c.match_prefix([1, 2, 3, 4], now=4).last_node
    c.lock(leaf)
    c.lock(m.last_node)
    assert m.last_node.lock_ref == 2 and leaf.lock_ref == 1
    assert c.protected_tokens == 4
    ev = c.evict(num_tokens=100, now=5)
    assert ev.values == [200]  # only the unlocked leaf went
    assert leaf.alive and m.last_node.alive
    c.unlock(leaf)
    c.unlock(m.last_node)
    with pytest.raises(LockError):
        c.unlock(m.last_node)
    assert m.last_node.lock_ref == 0 and c.protected_tokens == 0
    ev = c.evict(num_tokens=100, now=6)
    assert sorted(ev.values) == [100, 101, 102, 103] and c.num_tokens == 0
    with pytest.raises(LockError):
        c.lock(leaf)  # evicted
    c.check_integrity()


def test_split_of_a_locked_node_keeps_its_lock():
    c = RadixCache()
    c.insert([1, 2, 3, 4], vals([1, 2, 3, 4]), now=1)
    leaf = c.match_prefix([1, 2, 3, 4], now=2).last_node
    c.lock(leaf)
    upper = c.match_prefix([1, 2], now=3).last_node  # splits the locked edge
    assert upper.lock_ref == 1 and leaf.lock_ref == 1 and c.protected_tokens == 4
    c.unlock(leaf)
    assert upper.lock_ref == 0 and c.protected_tokens == 0
    c.check_integrity()


# -- eviction ---------------------------------------------------------------------------------


def test_lru_evicts_least_recent_leaf_and_exposes_parents_in_order():
    c = RadixCache(kv_bytes_per_token=2)
    c.insert([1, 2, 3, 4], [10, 11, 12, 13], now=1)
    c.insert([1, 2, 5, 6], [10, 11, 15, 16], now=2)  # [1,2] refreshed to t=2
    c.insert([7, 8], [17, 18], now=3)
    ev = c.evict(num_tokens=1, now=4)
    assert ev.values == [12, 13] and ev.num_bytes == 4  # a whole leaf goes
    ev = c.evict(num_tokens=3, now=5)
    # [5,6] (t=2), then its parent [1,2] (t=2, exposed) before [7,8] (t=3)
    assert ev.values == [15, 16, 10, 11]
    assert c.match_prefix([7, 8], now=6).matched_len == 2
    assert c.evict(now=7).values == []  # nothing asked, nothing evicted
    assert c.stats.evicted_tokens == 6 and c.stats.evicted_nodes == 3
    c.check_integrity()


def test_match_refreshes_recency():
    c = RadixCache()
    c.insert([1], [10], now=1)
    c.insert([2], [20], now=2)
    c.match_prefix([1], now=3)
    assert c.evict(num_tokens=1, now=4).values == [20]


def test_leaf_and_one_child_eviction_free_the_right_things():
    freed_kv, freed_ck = [], []
    c = RadixCache(
        hybrid=True,
        kv_bytes_per_token=2,
        ssm_state_bytes=50,
        eviction=LRUEviction("single_child", refresh_path=False),
        free_kv=freed_kv.extend,
        free_checkpoints=freed_ck.extend,
    )
    c.insert([1, 2, 3, 4], [10, 11, 12, 13], now=1, checkpoints={2: 900, 4: 901})
    assert c.num_nodes == 2 and c.num_checkpoints == 2
    assert c.total_bytes == 4 * 2 + 2 * 50
    m = c.match_prefix([1, 2, 3, 4], now=5)  # refreshes only the deepest node
    assert m.hit_len == 4 and m.checkpoint == 901
    upper = c.match_prefix([1, 2], now=5, record=False).last_node
    upper.last_access = 1.0  # make sure [1,2] is the older one
    # the one-child node [1,2] is older: evicting it frees only its checkpoint
    ev = c.evict(num_checkpoints=1, now=6)
    assert ev.checkpoints == [900] and ev.values == [] and ev.num_bytes == 50
    assert freed_ck == [900] and freed_kv == []
    assert c.num_tokens == 4 and c.num_nodes == 1 and c.total_bytes == 8 + 50
    (node,) = c.iter_nodes()
    assert node.key == (1, 2, 3, 4) and node.value == (10, 11, 12, 13) and node.checkpoint == 901
    assert not upper.alive
    assert c.match_prefix([1, 2, 3, 4], now=7).values == (10, 11, 12, 13)
    # now a leaf: evicting it frees its KV and its checkpoint
    ev = c.evict(num_tokens=1, now=8)
    assert ev.values == [10, 11, 12, 13] and ev.checkpoints == [901] and ev.num_bytes == 58
    assert c.total_bytes == 0 and freed_kv == [10, 11, 12, 13]
    c.check_integrity()


def test_one_child_nodes_without_checkpoint_are_not_candidates():
    c = RadixCache(hybrid=True, eviction=LRUEviction("single_child"))
    c.insert([1, 2, 3, 4], vals([1, 2, 3, 4]), now=1, checkpoints={4: 7})
    c.match_prefix([1, 2], now=2)  # split: [1,2] has one child and no checkpoint
    assert [n.key for n in c.evictable_nodes()] == [(3, 4)]
    assert c.bytes_freed_by(c.root.children[1]) == 0


def test_custom_policy_gets_unlocked_candidates_and_can_stop():
    seen = []

    class LongestFirst(EvictionPolicy):
        def select(self, candidates, now, cache):
            seen.append(sorted(n.key for n in candidates))
            return sorted(candidates, key=lambda n: -len(n.key))

    class Refuse(EvictionPolicy):
        def select(self, candidates, now, cache):
            return []

    c = RadixCache(eviction=LongestFirst())
    c.insert([1, 2, 3], [1, 2, 3], now=1)
    c.insert([4], [4], now=2)
    c.insert([5, 6], [5, 6], now=3)
    c.lock(c.match_prefix([4], now=4).last_node)
    ev = c.evict(num_tokens=1, now=5)
    assert ev.values == [1, 2, 3]
    assert seen == [[(1, 2, 3), (5, 6)]]  # the locked leaf [4] is never offered
    r = c.clone(eviction=Refuse())
    assert r.evict(num_tokens=1, now=6).values == [] and r.num_tokens == 3


def test_keyed_and_select_paths_agree_with_exposure():
    class SortedLRU(EvictionPolicy):  # LRU through the generic select path
        def select(self, candidates, now, cache):
            return sorted(candidates, key=lambda n: (n.last_access, n.node_id))

    c = RadixCache()
    c.insert([1, 2, 3, 4], [10, 11, 12, 13], now=1)
    c.insert([1, 2, 5, 6], [10, 11, 15, 16], now=2)
    c.insert([7, 8], [17, 18], now=3)
    c.insert([1, 9], [10, 19], now=4)
    c.insert([7, 8, 1], [17, 18, 21], now=5)
    d = c.clone(eviction=SortedLRU())
    assert c.evict(num_tokens=100, now=6).values == d.evict(num_tokens=100, now=6).values


# -- hybrid: checkpoints, admission, copy-on-write ---------------------------------------------


def test_hybrid_hit_stops_at_the_deepest_checkpoint():
    c = RadixCache(hybrid=True)
    seq = list(range(1, 11))
    c.insert(seq, vals(seq), now=1, checkpoints={4: 50, 7: 51})
    m = c.match_prefix(seq[:9], now=2)
    assert m.matched_len == 9 and m.hit_len == 7 and m.checkpoint == 51
    assert m.hit_values == tuple(vals(seq)[:7])
    assert m.hit_node.depth == 7 and m.last_node.depth == 9
    m = c.match_prefix([1, 2, 3, 4, 5], now=3)
    assert m.hit_len == 4 and m.checkpoint == 50
    assert c.match_prefix([1, 2, 3], now=4).hit_len == 0
    assert c.stats.hit_tokens == 11 and c.stats.matched_tokens == 17


def test_branch_point_split_marconi_scenario():
    """System prompt S shared by two users: the second request finds the branch point inside
    the first sequence's edge; the engine splits prefill there, the state is cached, and the
    third request hits S."""
    c = RadixCache(hybrid=True, admission=CheckpointAtBranchesAndLeaves())
    S = [1, 2, 3, 4, 5, 6]
    first = S + [7, 8, 9]
    c.insert(first, vals(first), now=1, checkpoints={len(first): 60})
    second = S + [20, 21]
    m = c.match_prefix(second[:-1], now=2)
    assert m.matched_len == len(S) and m.hit_len == 0 and m.branch_len == len(S)
    assert m.last_node.depth == len(S) and len(m.last_node.children) == 1  # split happened
    stops = c.checkpoint_positions(second, m)
    assert stops == [len(S)]  # end a prefill chunk after S, capture the state
    assert c.admit_leaf(second + [30])
    out = second + [30]
    r = c.insert(out, vals(out, 200), now=3, checkpoints={len(S): 61, len(out): 62})
    assert r.unused_checkpoints == [] and r.inserted_checkpoints == 2
    assert r.unused_values == vals(S, 200)  # recomputed KV of S was duplicate
    third = S + [40, 41]
    m = c.match_prefix(third[:-1], now=4)
    assert m.hit_len == len(S) and m.checkpoint == 61 and m.branch_len is None
    c.check_integrity()


def test_admission_policies_positions():
    c = RadixCache(hybrid=True)
    seq = list(range(1, 21))
    c.insert(seq[:12], vals(seq[:12]), now=1, checkpoints={4: 1})
    m = c.match_prefix([1, 2, 3, 4, 5, 6, 99], now=2)  # hit 4, branch at 6
    assert (m.hit_len, m.matched_len, m.branch_len) == (4, 6, 6)
    prompt = [1, 2, 3, 4, 5, 6, 99, 98, 97, 96, 95]
    assert CheckpointAtLeaves().positions_to_checkpoint(prompt, m) == []
    assert CheckpointAtBranchesAndLeaves().positions_to_checkpoint(prompt, m) == [6]
    assert CheckpointAtBranchesAndLeaves().positions_to_checkpoint(prompt, m, start=6) == []
    assert CheckpointEveryK(4).positions_to_checkpoint(prompt, m) == [8]
    assert CheckpointEveryK(2).positions_to_checkpoint(prompt, m) == [6, 8, 10]
    # during decode: only the new positions
    assert CheckpointEveryK(4).positions_to_checkpoint(prompt + [1], m, start=11) == [12]
    assert CheckpointEveryK(4).admit_leaf(list(range(8)))
    assert not CheckpointEveryK(4).admit_leaf(list(range(9)))
    assert CheckpointAtLeaves().admit_leaf([1]) and not CheckpointAtLeaves().admit_leaf([])
    with pytest.raises(ValueError):
        CheckpointEveryK(0)
    plain = RadixCache()
    assert plain.checkpoint_positions(prompt, m) == [] and not plain.admit_leaf(prompt)


def test_fork_checkpoint_is_copy_on_write():
    states = SlotAllocator(8, name="state")
    content = {}

    def copy(slot):
        new = states.alloc_one()
        content[new] = content[slot]
        return new

    c = RadixCache(hybrid=True, copy_checkpoint=copy, free_checkpoints=states.free)
    slot = states.alloc_one()
    content[slot] = "state after [1,2,3]"
    c.insert([1, 2, 3], [10, 11, 12], now=1, checkpoints={3: slot})
    m = c.match_prefix([1, 2, 3, 4], now=2)
    mine = c.fork_checkpoint(m)
    assert mine != slot and content[mine] == content[slot]
    assert m.hit_node.checkpoint == slot and c.stats.checkpoint_forks == 1
    content[mine] = "updated in place by the request"
    assert content[slot] == "state after [1,2,3]"
    with pytest.raises(KVCacheError):
        c.fork_checkpoint(c.match_prefix([9], now=3))  # nothing to fork
    c.evict(num_tokens=3, now=4)
    with pytest.raises(StaleHandleError):
        c.fork_checkpoint(m)
    assert states.num_used == 1  # the request's own copy; the cached one went back
    bad = RadixCache(hybrid=True, copy_checkpoint=lambda s: s)
    bad.insert([1], [1], now=1, checkpoints={1: 5})
    with pytest.raises(KVCacheError):
        bad.fork_checkpoint(bad.match_prefix([1], now=2))
    none = RadixCache(hybrid=True)
    none.insert([1], [1], now=1, checkpoints={1: 5})
    with pytest.raises(KVCacheError):
        none.fork_checkpoint(none.match_prefix([1], now=2))


def test_insert_checkpoint_rules():
    c = RadixCache(hybrid=True, page_size=2)
    r = c.insert([1, 2, 3, 4, 5], vals(range(5)), now=1, checkpoints={2: 10, 3: 11, 5: 12})
    # 3 is off a page boundary, 5 is in the truncated tail
    assert r.unused_checkpoints == [11, 12] and r.inserted_checkpoints == 1
    r = c.insert([1, 2, 3, 4], vals(range(4)), now=2, checkpoints={2: 13, 4: 14})
    assert r.unused_checkpoints == [13] and r.inserted_checkpoints == 1  # 2 already had one
    r = c.insert([1, 2], vals(range(2)), now=3, checkpoints={2: 10})  # the tree's own slot
    assert r.unused_checkpoints == [] and r.inserted_checkpoints == 0
    assert c.num_checkpoints == 2
    with pytest.raises(ValueError):
        c.insert([1, 2], [0, 1], checkpoints={0: 1})
    with pytest.raises(ValueError):
        c.insert([1, 2], [0, 1], checkpoints={3: 1})
    with pytest.raises(ValueError):
        c.insert([1, 2], [0, 1], checkpoints={1: 1, 2: 1})
    with pytest.raises(ValueError):
        RadixCache().insert([1], [1], checkpoints={1: 1})
    c.check_integrity()


def test_every_k_checkpoints_build_a_deep_chain_quickly():
    c = RadixCache(hybrid=True, ssm_state_bytes=3, kv_bytes_per_token=1)
    seq = list(range(3000))
    r = c.insert(seq, vals(seq), now=1, checkpoints={p: p for p in range(1, 3001)})
    assert r.inserted_checkpoints == 3000 and c.num_nodes == 3000
    assert c.total_bytes == 3000 + 3000 * 3
    d = c.clone()  # iterative: no recursion limit
    d.check_integrity()
    assert d.match_prefix(seq[:1234], now=2).hit_len == 1234


# -- accounting, capacity, stats, clones ------------------------------------------------------


def test_byte_accounting_and_capacity_eviction():
    freed = []
    c = RadixCache(kv_bytes_per_token=10, capacity_bytes=100, free_kv=freed.extend)
    c.insert([1, 2, 3, 4], [1, 2, 3, 4], now=1)
    c.insert([5, 6, 7, 8], [5, 6, 7, 8], now=2)
    assert c.total_bytes == 80
    r = c.insert([9, 10, 11], [9, 10, 11], now=3)  # 110 bytes > 100: the oldest leaf goes
    assert r.evicted is not None and r.evicted.values == [1, 2, 3, 4] and freed == [1, 2, 3, 4]
    assert c.total_bytes == 70
    r = c.insert(list(range(20, 32)), list(range(20, 32)), now=4)  # larger than the cache
    assert c.total_bytes <= 100 and c.match_prefix([20], now=5).matched_len == 0
    c.check_integrity()


def test_capacity_respects_locks():
    c = RadixCache(kv_bytes_per_token=1, capacity_bytes=4)
    c.insert([1, 2, 3], [1, 2, 3], now=1)
    c.lock(c.match_prefix([1, 2, 3], now=2).last_node)
    r = c.insert([4, 5, 6], [4, 5, 6], now=3)
    assert r.evicted.values == [4, 5, 6] and c.total_bytes == 3


def test_hit_rate_counters():
    c = RadixCache()
    c.insert([1, 2, 3, 4], vals(range(4)), now=1)
    c.match_prefix([1, 2, 3, 4, 5, 6, 7, 8], now=2)
    c.match_prefix([1, 2, 9, 9], now=3)
    c.match_prefix([1, 2, 3, 4], now=4, record=False)
    s = c.stats
    assert (s.requests, s.prompt_tokens, s.hit_tokens) == (2, 12, 6)
    assert s.token_hit_rate == pytest.approx(0.5)
    assert s.inserted_tokens == 4


def test_clone_is_independent_both_ways():
    freed = []
    clock = ManualClock(10)
    c = RadixCache(hybrid=True, free_kv=freed.extend, clock=clock)
    c.insert([1, 2, 3, 4], [1, 2, 3, 4], checkpoints={2: 7, 4: 8})
    c.insert([1, 2, 5], [1, 2, 5])
    c.lock(c.match_prefix([1, 2, 5]).last_node)
    before, stats = shape(c), c.stats
    d = c.clone()
    assert shape(d) == before and d.stats == stats and d.stats is not c.stats
    assert d.eviction is not c.eviction and d.clock is not c.clock
    d.insert([9, 9], [90, 91])
    d.match_prefix([1, 2, 3])
    d.evict(num_tokens=100)
    d.unlock(d.match_prefix([1, 2, 5], record=False).last_node)
    d.evict(num_tokens=100)
    assert d.num_tokens == 0 and freed == []  # the clone has no callbacks
    assert shape(c) == before and c.stats == stats
    d.check_integrity()
    e = c.clone()
    c.unlock(c.match_prefix([1, 2, 5], record=False).last_node)
    c.evict(num_tokens=100)
    assert shape(e) == before
    e.check_integrity()
    c.check_integrity()


def test_logical_clock_is_the_default_and_deterministic():
    a, b = RadixCache(), RadixCache()
    for cache in (a, b):
        cache.insert([1, 2], [1, 2])
        cache.match_prefix([1])
        cache.insert([3], [3])
    assert shape(a) == shape(b)
    assert [n.last_access for n in a.iter_nodes()] == [1.0, 0.0, 2.0]


def test_reset_frees_everything_unless_locked():
    freed = []
    c = RadixCache(hybrid=True, free_kv=freed.extend)
    c.insert([1, 2], [1, 2], now=1, checkpoints={2: 3})
    node = c.match_prefix([1, 2], now=2).last_node
    c.lock(node)
    with pytest.raises(LockError):
        c.reset()
    c.unlock(node)
    r = c.reset()
    assert r.values == [1, 2] and r.checkpoints == [3] and freed == [1, 2]
    assert c.num_nodes == c.total_bytes == 0 and not node.alive
    c.check_integrity()


def test_meta_is_carried_by_split_and_clone():
    c = RadixCache()
    c.insert([1, 2, 3, 4], [1, 2, 3, 4], now=1)
    (leaf,) = c.iter_nodes()
    leaf.meta = {"score": 3}
    upper = c.match_prefix([1, 2], now=2).last_node
    assert upper.meta == {"score": 3} and upper.meta is not leaf.meta
    d = c.clone()
    dl = d.match_prefix([1, 2, 3, 4], record=False, now=3).last_node
    dl.meta["score"] = 9
    assert leaf.meta == {"score": 3}
