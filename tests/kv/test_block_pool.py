"""BlockPool: hashing, ref counts, LRU free queue, revival, errors, and a stateful model check."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from core.kv import (
    BlockPool,
    DoubleFreeError,
    FreeBlockQueue,
    KVBlock,
    KVCacheError,
    OutOfBlocksError,
    hash_block_tokens,
    hash_token_blocks,
)

# -- hashing ---------------------------------------------------------------------------------


def test_hash_is_a_chain_over_parent_and_tokens():
    a = hash_block_tokens(None, [1, 2, 3, 4])
    assert isinstance(a, bytes) and len(a) == 32
    assert a == hash_block_tokens(None, (1, 2, 3, 4))
    assert a != hash_block_tokens(None, [1, 2, 3, 5])
    b = hash_block_tokens(a, [5, 6, 7, 8])
    assert b != hash_block_tokens(None, [5, 6, 7, 8])  # same tokens, other prefix
    assert b != hash_block_tokens(hash_block_tokens(None, [9, 9, 9, 9]), [5, 6, 7, 8])
    assert hash_block_tokens(None, [1, 2], b"lora-a") != hash_block_tokens(None, [1, 2])
    with pytest.raises(ValueError):
        hash_block_tokens(None, [2**64])


def test_hash_token_blocks_skips_the_partial_block():
    toks = list(range(10))
    hs = hash_token_blocks(toks, 4)
    assert len(hs) == 2
    assert hs[0] == hash_block_tokens(None, toks[:4])
    assert hs[1] == hash_block_tokens(hs[0], toks[4:8])
    assert hash_token_blocks(toks[:3], 4) == []


def test_hash_is_stable_across_processes():
    code = (
        "from core.kv import hash_block_tokens as h; print(h(h(None, [1, 2, 3]), [4, 5, 6]).hex())"
    )
    outs = set()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        )
        outs.add(out.stdout.strip())
    local = hash_block_tokens(hash_block_tokens(None, [1, 2, 3]), [4, 5, 6]).hex()
    assert outs == {local}


# -- free queue ------------------------------------------------------------------------------


def test_free_queue_removes_from_the_middle():
    blocks = [KVBlock(i) for i in range(5)]
    q = FreeBlockQueue(blocks)
    q.remove(blocks[2])
    assert [b.block_id for b in q] == [0, 1, 3, 4] and len(q) == 4
    assert not blocks[2].in_free_queue
    q.appendleft(blocks[2])
    assert [b.block_id for b in q] == [2, 0, 1, 3, 4]
    assert q.popleft() is blocks[2]
    with pytest.raises(KVCacheError):
        q.remove(blocks[2])
    with pytest.raises(KVCacheError):
        q.append(blocks[0])  # already queued
    for _ in range(4):
        q.popleft()
    with pytest.raises(OutOfBlocksError):
        q.popleft()


# -- pool --------------------------------------------------------------------------------------


def _cached(pool: BlockPool, blocks: list[KVBlock], tag: int) -> list[bytes]:
    hs = []
    parent = None
    for i, b in enumerate(blocks):
        parent = hash_block_tokens(parent, [tag, i])
        assert pool.cache_block(b, parent)
        hs.append(parent)
    return hs


def test_allocate_and_free_count_blocks_and_bytes():
    pool = BlockPool(8, 4, kv_bytes_per_token=10)
    assert pool.block_bytes == 40 and pool.free_bytes == 320 and pool.usage == 0
    got = pool.allocate(3)
    assert [b.ref_cnt for b in got] == [1, 1, 1]
    assert pool.num_free_blocks == 5 and pool.num_used_blocks == 3
    assert pool.used_bytes == 120 and pool.usage == pytest.approx(3 / 8)
    pool.free(got)
    assert pool.num_free_blocks == 8 and pool.stats.allocated == 3 and pool.stats.freed == 3
    pool.check_integrity()


def test_over_allocation_raises_and_changes_nothing():
    pool = BlockPool(4, 2)
    pool.allocate(3)
    with pytest.raises(OutOfBlocksError):
        pool.allocate(2)
    assert pool.num_free_blocks == 1
    with pytest.raises(ValueError):
        pool.allocate(-1)
    pool.check_integrity()


def test_double_free_raises_and_changes_nothing():
    pool = BlockPool(4, 2)
    a, b = pool.allocate(2)
    pool.free([a])
    with pytest.raises(DoubleFreeError):
        pool.free([b, a])
    assert b.ref_cnt == 1  # b untouched by the failed call
    with pytest.raises(DoubleFreeError):
        pool.free([b, b])  # held once, freed twice in one call
    assert b.ref_cnt == 1
    pool.free([b])
    pool.check_integrity()


def test_free_puts_tails_first_and_unhashed_blocks_at_the_head():
    pool = BlockPool(6, 2)
    seq = pool.allocate(3)  # blocks 0, 1, 2
    _cached(pool, seq, tag=1)
    scratch = pool.allocate(1)  # block 3, never hashed
    pool.free(seq)
    pool.free(scratch)
    # head: unhashed 3, then the never-used 4, 5, then the cached sequence tail-first: 2, 1, 0
    assert [b.block_id for b in pool.free_queue] == [3, 4, 5, 2, 1, 0]


def test_lru_evicts_the_least_recently_freed_sequence_first():
    pool = BlockPool(4, 2)
    a = pool.allocate(2)
    ha = _cached(pool, a, tag=1)
    b = pool.allocate(2)
    hb = _cached(pool, b, tag=2)
    pool.free(a)  # a freed first: evicted first
    pool.free(b)
    pool.allocate(1)  # evicts a's tail block
    assert pool.get_cached_block(ha[1]) is None and pool.get_cached_block(ha[0]) is a[0]
    assert pool.stats.evicted == 1
    pool.allocate(1)
    assert pool.get_cached_block(ha[0]) is None
    assert all(pool.get_cached_block(h) is not None for h in hb)
    pool.check_integrity()


def test_touch_revives_a_freed_cached_block_until_it_is_reallocated():
    pool = BlockPool(3, 2)
    blocks = pool.allocate(2)
    hs = _cached(pool, blocks, tag=7)
    pool.free(blocks)
    hit = [pool.get_cached_block(h) for h in hs]
    assert hit == blocks
    pool.touch(hit)
    assert [b.ref_cnt for b in blocks] == [1, 1] and pool.num_free_blocks == 1
    assert pool.stats.revived == 2
    pool.touch(hit[:1])  # a second holder of a held block
    assert blocks[0].ref_cnt == 2 and pool.stats.revived == 2
    pool.free(blocks + blocks[:1])
    pool.allocate(3)  # everything reallocated: hashes evicted
    assert pool.num_cached_blocks == 0 and all(pool.get_cached_block(h) is None for h in hs)
    pool.check_integrity()


def test_touch_of_a_free_unhashed_block_is_refused():
    pool = BlockPool(2, 2)
    with pytest.raises(KVCacheError):
        pool.touch([pool.blocks[0]])
    assert pool.num_free_blocks == 2


def test_cache_block_keeps_one_block_per_hash():
    pool = BlockPool(4, 2)
    a, b = pool.allocate(2)
    h = hash_block_tokens(None, [1, 2])
    assert pool.cache_block(a, h)
    assert pool.cache_block(a, h)  # idempotent
    assert not pool.cache_block(b, h)  # duplicate content stays unhashed
    assert b.block_hash is None and pool.get_cached_block(h) is a
    with pytest.raises(KVCacheError):
        pool.cache_block(a, hash_block_tokens(None, [3, 4]))
    pool.free([a, b])
    with pytest.raises(KVCacheError):
        pool.cache_block(a, h)  # free blocks cannot be (re)registered
    off = BlockPool(2, 2, enable_caching=False)
    (c,) = off.allocate(1)
    assert not off.cache_block(c, h) and off.num_cached_blocks == 0


def test_reset_prefix_cache_only_when_idle():
    pool = BlockPool(2, 2)
    blocks = pool.allocate(2)
    _cached(pool, blocks, tag=1)
    assert not pool.reset_prefix_cache()
    pool.free(blocks)
    assert pool.reset_prefix_cache() and pool.num_cached_blocks == 0
    pool.check_integrity()


# -- stateful model check --------------------------------------------------------------------


class BlockPoolMachine(RuleBasedStateMachine):
    """The pool against a plain-list model of its free queue, ref counts and hash table."""

    N = 8

    def __init__(self):
        super().__init__()
        self.pool = BlockPool(self.N, 2, kv_bytes_per_token=3)
        self.queue = list(range(self.N))  # model free queue, head first
        self.refs = [0] * self.N
        self.hash_of: dict[int, bytes] = {}
        self.holds: list[list[int]] = []  # each "request" holds a list of block ids, in order
        self.next_tag = 0

    @rule(n=st.integers(0, 5))
    def allocate(self, n):
        if n > len(self.queue):
            with pytest.raises(OutOfBlocksError):
                self.pool.allocate(n)
            return
        got = [b.block_id for b in self.pool.allocate(n)]
        expected, self.queue = self.queue[:n], self.queue[n:]
        assert got == expected
        for bid in got:
            self.refs[bid] = 1
            self.hash_of.pop(bid, None)
        self.holds.append(got)

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def free(self, data):
        i = data.draw(st.integers(0, len(self.holds) - 1))
        ids = self.holds.pop(i)
        self.pool.free([self.pool.blocks[b] for b in ids])
        for bid in reversed(ids):
            self.refs[bid] -= 1
            if self.refs[bid] == 0:
                if bid in self.hash_of:
                    self.queue.append(bid)
                else:
                    self.queue.insert(0, bid)

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def double_free(self, data):
        ids = data.draw(st.sampled_from(self.holds))
        if not ids:
            return
        bid = ids[0]
        with pytest.raises(DoubleFreeError):
            self.pool.free([self.pool.blocks[bid]] * (self.refs[bid] + 1))

    @precondition(lambda self: any(self.holds))
    @rule(data=st.data())
    def cache(self, data):
        ids = data.draw(st.sampled_from([h for h in self.holds if h]))
        bid = data.draw(st.sampled_from(ids))
        reuse = self.hash_of and data.draw(st.booleans())
        if reuse:  # a hash some block already holds
            h = self.hash_of[data.draw(st.sampled_from(sorted(self.hash_of)))]
        else:
            self.next_tag += 1
            h = hash_block_tokens(None, [self.next_tag])
        block = self.pool.blocks[bid]
        if bid in self.hash_of and self.hash_of[bid] != h:
            with pytest.raises(KVCacheError):
                self.pool.cache_block(block, h)
            return
        ok = self.pool.cache_block(block, h)
        assert ok == (self.hash_of.get(bid) == h or h not in self.hash_of.values())
        if ok:
            self.hash_of[bid] = h

    @precondition(lambda self: self.hash_of)
    @rule(data=st.data())
    def hit(self, data):
        bid = data.draw(st.sampled_from(sorted(self.hash_of)))
        b = self.pool.get_cached_block(self.hash_of[bid])
        assert b is not None and b.block_id == bid
        self.pool.touch([b])
        if self.refs[bid] == 0:
            self.queue.remove(bid)
        self.refs[bid] += 1
        self.holds.append([bid])

    @invariant()
    def matches_model(self):
        self.pool.check_integrity()
        assert [b.block_id for b in self.pool.free_queue] == self.queue
        assert [b.ref_cnt for b in self.pool.blocks] == self.refs
        assert {b.block_id: b.block_hash for b in self.pool.blocks if b.block_hash} == self.hash_of
        held = sum(len(h) for h in self.holds)
        assert sum(self.refs) == held  # every hold accounted, none leaked
        assert self.pool.used_bytes == (self.N - len(self.queue)) * 6

    def teardown(self):
        for ids in self.holds:
            self.pool.free([self.pool.blocks[b] for b in ids])
        assert self.pool.num_free_blocks == self.N
        self.pool.check_integrity()


TestBlockPoolMachine = BlockPoolMachine.TestCase
TestBlockPoolMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
