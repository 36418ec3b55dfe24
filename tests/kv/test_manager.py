"""KVCacheManager: prefix hits, slot allocation, slot mapping, stats, swapping, stateful check."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from core.kv import KVCacheError, KVCacheManager, OutOfBlocksError, StaleHandleError

BS = 4


def admit(kv: KVCacheManager, rid: str, prompt: list[int]):
    hit = kv.get_computed_blocks(prompt)
    new = kv.allocate_slots(rid, len(prompt) - hit.num_tokens, hit, token_ids=prompt)
    return hit, new


def test_prefix_hit_reuses_full_blocks_and_counts_hits():
    kv = KVCacheManager(16, BS, kv_bytes_per_token=2)
    prompt = list(range(14))  # 3 full blocks + 2 tokens
    hit, new = admit(kv, "a", prompt)
    assert hit.num_tokens == 0 and len(new) == 4
    assert kv.num_tokens("a") == 14 and kv.num_free_blocks == 12
    assert kv.used_bytes == 4 * BS * 2
    kv.free("a")
    hit, new = admit(kv, "b", prompt + [99])
    assert hit.num_tokens == 12 and hit.num_query_tokens == 15
    assert [b.block_id for b in new] == [3]  # the partial block is recomputed
    assert kv.block_ids("b")[:3] == hit.block_ids
    assert kv.stats.requests == 2 and kv.stats.query_tokens == 29 and kv.stats.hit_tokens == 12
    assert kv.stats.hit_rate == pytest.approx(12 / 29)
    kv.check_integrity()


def test_hit_never_covers_the_whole_prompt():
    kv = KVCacheManager(8, BS)
    prompt = list(range(8))  # exactly two blocks
    admit(kv, "a", prompt)
    hit = kv.get_computed_blocks(prompt)
    assert hit.num_tokens == 4  # the last block holds the token that must produce logits
    assert kv.get_computed_blocks(prompt + [1]).num_tokens == 8
    assert kv.get_computed_blocks([]).num_tokens == 0


def test_shared_blocks_are_ref_counted_between_running_requests():
    kv = KVCacheManager(8, BS)
    prompt = list(range(9))
    admit(kv, "a", prompt)
    hit, _ = admit(kv, "b", prompt)
    assert hit.num_tokens == 8
    assert [b.ref_cnt for b in kv.get_blocks("a")] == [2, 2, 1]
    kv.free("a")
    assert [b.ref_cnt for b in kv.get_blocks("b")] == [1, 1, 1]
    kv.check_integrity()


def test_out_of_blocks_returns_none_and_changes_nothing():
    kv = KVCacheManager(4, BS)
    admit(kv, "a", list(range(10)))  # 3 blocks
    assert kv.allocate_slots("b", 8) is None
    assert not kv.has_request("b") and kv.num_free_blocks == 1
    assert kv.allocate_slots("a", 2) == []  # 12 tokens still fit in 3 blocks
    assert [b.block_id for b in kv.allocate_slots("a", 4)] == [3]
    assert kv.num_tokens("a") == 16 and kv.num_free_blocks == 0
    assert kv.allocate_slots("a", 1) is None
    assert kv.num_tokens("a") == 16
    kv.check_integrity()


def test_revived_free_blocks_count_against_free_space():
    kv = KVCacheManager(4, BS)
    prompt = list(range(13))  # 4 blocks
    admit(kv, "a", prompt)
    kv.free("a")
    hit = kv.get_computed_blocks(prompt)
    assert hit.num_tokens == 12
    # 3 cached free blocks revived + 1 new = 4 = all; one more token would need a 5th block
    assert kv.allocate_slots("b", 5, hit, token_ids=prompt + [0, 0, 0, 0]) is None
    new = kv.allocate_slots("b", 1, hit, token_ids=prompt)
    assert len(new) == 1 and kv.num_free_blocks == 0
    kv.check_integrity()


def test_stale_computed_blocks_are_rejected():
    kv = KVCacheManager(3, BS)
    prompt = list(range(9))
    admit(kv, "a", prompt)
    kv.free("a")
    hit = kv.get_computed_blocks(prompt)
    assert hit.num_tokens == 8
    kv.allocate_slots("x", 12)  # reallocates every block, evicting the hashes
    kv.free("x")
    with pytest.raises(StaleHandleError):
        kv.allocate_slots("b", 1, hit, token_ids=prompt)
    assert not kv.has_request("b")


def test_decode_tokens_fill_blocks_that_later_requests_hit():
    kv = KVCacheManager(8, BS)
    seq = [5, 6, 7]
    admit(kv, "a", seq)
    for t in [8, 9, 10, 11, 12]:  # each decode step feeds the last sampled token
        seq.append(t)
        assert kv.allocate_slots("a", 1, token_ids=seq) is not None
    assert kv.num_tokens("a") == 8 and len(kv.block_ids("a")) == 2
    kv.free("a")
    hit = kv.get_computed_blocks(seq + [13])
    assert hit.num_tokens == 8


def test_slot_mapping():
    kv = KVCacheManager(8, BS)
    kv.allocate_slots("a", 3)
    kv.allocate_slots("b", 6)
    kv.allocate_slots("a", 3)
    ids = kv.block_ids("a")
    assert ids == [0, 3]  # "b" took blocks 1 and 2 in between
    assert kv.slot_mapping("a") == [0, 1, 2, 3, 12, 13]
    assert kv.slot_mapping("a", 3, 5) == [3, 12]
    with pytest.raises(IndexError):
        kv.slot_mapping("a", 0, 7)


def test_prefix_caching_off_never_hits():
    kv = KVCacheManager(8, BS, enable_prefix_caching=False)
    prompt = list(range(9))
    admit(kv, "a", prompt)
    kv.free("a")
    assert kv.get_computed_blocks(prompt).num_tokens == 0
    assert kv.pool.num_cached_blocks == 0


def test_misuse_errors():
    kv = KVCacheManager(8, BS)
    admit(kv, "a", list(range(6)))
    hit = kv.get_computed_blocks(list(range(6)))
    with pytest.raises(KVCacheError):
        kv.allocate_slots("a", 1, hit)  # computed blocks only at admission
    with pytest.raises(ValueError):
        kv.allocate_slots("a", -1)
    kv.free("a")
    with pytest.raises(KVCacheError):
        kv.free("a")


def test_usage_and_reset():
    kv = KVCacheManager(4, BS)
    admit(kv, "a", list(range(8)))
    assert kv.usage == 0.5
    assert not kv.reset_prefix_cache()
    kv.free("a")
    assert kv.reset_prefix_cache() and kv.get_computed_blocks(list(range(9))).num_tokens == 0


def test_swap_out_and_in_moves_blocks_and_recaches_hashes():
    kv = KVCacheManager(6, BS, num_host_blocks=4, kv_bytes_per_token=1)
    prompt = list(range(10))
    admit(kv, "a", prompt)
    dev = kv.block_ids("a")
    out = kv.swap_out("a")
    assert list(out) == dev and sorted(out.values()) == [0, 1, 2]
    assert kv.is_swapped("a") and kv.block_ids("a") == [] and kv.num_free_blocks == 6
    assert kv.host.num_free_blocks == 1 and kv.host.used_bytes == 12
    with pytest.raises(KVCacheError):
        kv.slot_mapping("a")
    with pytest.raises(KVCacheError):
        kv.allocate_slots("a", 1)
    kv.allocate_slots("x", 24)  # take every device block: the cached copies are evicted
    assert kv.swap_in("a") is None and kv.is_swapped("a")
    kv.free("x")
    back = kv.swap_in("a")
    assert list(back) == list(out.values())
    assert kv.block_ids("a") == list(back.values()) and kv.num_tokens("a") == 10
    assert kv.host.num_free_blocks == 4
    hit = kv.get_computed_blocks(prompt)
    assert hit.num_tokens == 8 and hit.block_ids == kv.block_ids("a")[:2]
    kv.check_integrity()


def test_swap_capacity_errors_and_free_while_swapped():
    kv = KVCacheManager(8, BS, num_host_blocks=2)
    admit(kv, "a", list(range(10)))
    assert not kv.can_swap_out("a")
    with pytest.raises(OutOfBlocksError):
        kv.swap_out("a")
    assert not kv.is_swapped("a") and len(kv.block_ids("a")) == 3
    admit(kv, "b", [1, 2, 3])
    kv.swap_out("b")
    with pytest.raises(KVCacheError):
        kv.swap_out("b")
    kv.free("b")  # releases its host blocks
    assert kv.host.num_free_blocks == 2
    kv.check_integrity()


# -- stateful model check --------------------------------------------------------------------


class ManagerMachine(RuleBasedStateMachine):
    """Requests with shared prefixes run through admission, chunked prefill, decode, swap, free.

    The model "writes" each computed token into its slot (``content[slot] = (token, prefix)``)
    when the slot is allocated, copies contents on swaps, and checks that every request always
    reads its own tokens through its block table: a wrong hash, a block reused while held, or
    a swap to the wrong place breaks that.
    """

    def __init__(self):
        super().__init__()
        self.kv = KVCacheManager(10, BS, num_host_blocks=6, kv_bytes_per_token=2)
        self.content: dict[int, tuple] = {}  # device slot -> (position, token prefix)
        self.host_content: dict[int, tuple] = {}
        self.reqs: dict[str, list[int]] = {}  # rid -> all token ids known so far
        self.target: dict[str, int] = {}  # rid -> prompt length (prefill end)
        self.n = 0
        self.query = self.hits = 0
        self.seen: list[tuple] = []

    def _write(self, rid: str, start: int, end: int):
        toks = self.reqs[rid]
        for pos, slot in zip(range(start, end), self.kv.slot_mapping(rid, start, end), strict=True):
            self.content[slot] = tuple(toks[: pos + 1])

    def _running(self):
        return sorted(r for r in self.reqs if not self.kv.is_swapped(r))

    @rule(
        data=st.data(),
        # equal second blocks after different first blocks: a hash that is not chained breaks
        prefix=st.sampled_from(
            [(), (1, 2, 3, 4), (1, 2, 3, 4, 5, 6, 7, 8), (9, 9, 9, 9, 5, 6, 7, 8)]
        ),
        tail=st.lists(st.integers(0, 3), min_size=0, max_size=7),
        chunk=st.integers(1, 12),
    )
    def admit(self, data, prefix, tail, chunk):
        if self.seen and data.draw(st.booleans()):  # an earlier sequence, exactly or extended
            prefix = data.draw(st.sampled_from(self.seen[-6:]))
        prompt = list(prefix) + tail or [0]
        self.seen.append(tuple(prompt))
        rid = f"r{self.n}"
        self.n += 1
        hit = self.kv.get_computed_blocks(prompt)
        assert hit.num_tokens % BS == 0 and hit.num_tokens < len(prompt)
        # a hit must hold exactly this prompt's tokens
        for i, b in enumerate(hit.blocks):
            for off in range(BS):
                pos = i * BS + off
                assert self.content[b.block_id * BS + off] == tuple(prompt[: pos + 1])
        num_new = min(chunk, len(prompt) - hit.num_tokens)
        new = self.kv.allocate_slots(rid, num_new, hit, token_ids=prompt)
        if new is None:
            assert not self.kv.has_request(rid)
            return
        self.reqs[rid] = prompt
        self.target[rid] = len(prompt)
        self.query += len(prompt)
        self.hits += hit.num_tokens
        self._write(rid, hit.num_tokens, hit.num_tokens + num_new)

    @precondition(lambda self: self._running())
    @rule(data=st.data(), chunk=st.integers(1, 6), token=st.integers(0, 3))
    def step(self, data, chunk, token):
        rid = data.draw(st.sampled_from(self._running()))
        done = self.kv.num_tokens(rid)
        if done < self.target[rid]:  # chunked prefill
            num_new = min(chunk, self.target[rid] - done)
        else:  # decode: the sampled token becomes the next input
            self.reqs[rid].append(token)
            self.target[rid] += 1
            num_new = 1
        before = self.kv.block_ids(rid)
        new = self.kv.allocate_slots(rid, num_new, token_ids=self.reqs[rid])
        if new is None:
            assert self.kv.block_ids(rid) == before and self.kv.num_tokens(rid) == done
            return
        assert self.kv.block_ids(rid) == before + [b.block_id for b in new]
        self._write(rid, done, done + num_new)

    @precondition(lambda self: self.reqs)
    @rule(data=st.data())
    def free(self, data):
        rid = data.draw(st.sampled_from(sorted(self.reqs)))
        self.seen.append(tuple(self.reqs[rid]))
        self.kv.free(rid)
        del self.reqs[rid], self.target[rid]

    @precondition(lambda self: self._running())
    @rule(data=st.data())
    def swap_out(self, data):
        rid = data.draw(st.sampled_from(self._running()))
        if not self.kv.can_swap_out(rid):
            with pytest.raises(OutOfBlocksError):
                self.kv.swap_out(rid)
            return
        for d, h in self.kv.swap_out(rid).items():
            for off in range(BS):
                if d * BS + off in self.content:
                    self.host_content[h * BS + off] = self.content[d * BS + off]

    @precondition(lambda self: any(self.kv.is_swapped(r) for r in self.reqs))
    @rule(data=st.data())
    def swap_in(self, data):
        rid = data.draw(st.sampled_from(sorted(r for r in self.reqs if self.kv.is_swapped(r))))
        back = self.kv.swap_in(rid)
        if back is None:
            return
        for h, d in back.items():
            for off in range(BS):
                if h * BS + off in self.host_content:
                    self.content[d * BS + off] = self.host_content[h * BS + off]

    @invariant()
    def every_request_reads_its_own_tokens(self):
        self.kv.check_integrity()
        for rid in self._running():
            n = self.kv.num_tokens(rid)
            toks = self.reqs[rid]
            for pos, slot in enumerate(self.kv.slot_mapping(rid, 0, min(n, len(toks)))):
                assert self.content.get(slot) == tuple(toks[: pos + 1]), (rid, pos)

    @invariant()
    def accounting(self):
        kv = self.kv
        assert kv.stats.query_tokens == self.query and kv.stats.hit_tokens == self.hits
        assert kv.num_free_blocks + kv.pool.num_used_blocks == kv.num_blocks
        assert kv.used_bytes == kv.pool.num_used_blocks * BS * 2

    def teardown(self):
        for rid in list(self.reqs):
            self.kv.free(rid)
        assert self.kv.num_free_blocks == self.kv.num_blocks
        assert self.kv.host.num_free_blocks == self.kv.host.num_blocks
        self.kv.check_integrity()


TestManagerMachine = ManagerMachine.TestCase
TestManagerMachine.settings = settings(max_examples=200, stateful_step_count=35, deadline=None)
