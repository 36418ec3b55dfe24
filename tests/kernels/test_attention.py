"""Paged attention over varlen batches equals plain causal attention over the same tokens,
for every attention backend available on this machine."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from core.kernels import (
    PagedAttentionMetadata,
    TorchPagedAttention,
    attention_backends,
    get_attention_backend,
    group_by_length,
    paged_attention,
    register_attention_backend,
)
from core.kernels import attention as attn_mod

BACKENDS = attention_backends("cpu")


def dense_attention(q, k, v, window=None):
    """Causal attention of one whole sequence in float64: q [L, H, D], k/v [L, Hkv, D]."""
    n, h, d = q.shape
    group = h // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    pos = torch.arange(n)
    mask = pos[None, :] <= pos[:, None]
    if window is not None:
        mask &= pos[None, :] > pos[:, None] - window
    out = F.scaled_dot_product_attention(
        q.double().transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask
    )
    return out.transpose(0, 1)


def run_case(
    specs, heads, kv_heads, head_dim=16, block_size=4, window=None, seed=0, backend="torch"
):
    """specs: per sequence (cached tokens, new tokens). The cached part is written into the
    cache beforehand; the new part goes through paged_attention. Returns max abs error."""
    gen = torch.Generator().manual_seed(seed)
    need = sum(-(-(c + n) // block_size) for c, n in specs)
    num_blocks = need + 3
    k_cache = torch.zeros(num_blocks, block_size, kv_heads, head_dim)
    v_cache = torch.zeros_like(k_cache)
    free = list(range(num_blocks))
    random.Random(seed).shuffle(free)
    seqs, tables = [], []
    for cached, new in specs:
        total = cached + new
        q = torch.randn(total, heads, head_dim, generator=gen)
        k = torch.randn(total, kv_heads, head_dim, generator=gen)
        v = torch.randn(total, kv_heads, head_dim, generator=gen)
        table = [free.pop() for _ in range(-(-total // block_size))]
        slots = torch.tensor(
            [table[p // block_size] * block_size + p % block_size for p in range(total)]
        )
        k_cache.view(-1, kv_heads, head_dim)[slots[:cached]] = k[:cached]
        v_cache.view(-1, kv_heads, head_dim)[slots[:cached]] = v[:cached]
        seqs.append((q, k, v, slots, cached))
        tables.append(table)
    width = max(len(t) for t in tables)
    block_tables = torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int32)
    out = paged_attention(
        torch.cat([q[c:] for q, _, _, _, c in seqs]),
        torch.cat([k[c:] for _, k, _, _, c in seqs]),
        torch.cat([v[c:] for _, _, v, _, c in seqs]),
        k_cache,
        v_cache,
        query_start_loc=torch.tensor(
            [0] + [sum(n for _, n in specs[: i + 1]) for i in range(len(specs))], dtype=torch.int32
        ),
        seq_lens=torch.tensor([c + n for c, n in specs], dtype=torch.int32),
        block_tables=block_tables,
        slot_mapping=torch.cat([s[c:] for _, _, _, s, c in seqs]),
        sliding_window=window,
        backend=backend,
    )
    ref = torch.cat([dense_attention(q, k, v, window)[c:] for q, k, v, _, c in seqs])
    # every token's K/V ended up in its slot
    for _, k, _, slots, _ in seqs:
        assert torch.equal(k_cache.view(-1, kv_heads, head_dim)[slots], k)
    return (out.double() - ref).abs().max().item()


MIXED = [(0, 7), (5, 1), (9, 4), (0, 1), (12, 1), (3, 1), (16, 5)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (4, 1)])
def test_mixed_batch_matches_dense(backend, block_size, heads, kv_heads):
    assert run_case(MIXED, heads, kv_heads, block_size=block_size, backend=backend) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [1, 3, 8])
def test_sliding_window(backend, window):
    assert run_case(MIXED, 8, 2, block_size=4, window=window, backend=backend) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_only_and_prefill_only_batches(backend):
    assert run_case([(7, 1), (1, 1), (30, 1)], 4, 2, backend=backend) < 1e-5
    assert run_case([(0, 9), (4, 6)], 4, 2, backend=backend) < 1e-5


@settings(max_examples=25, deadline=None)
@given(
    specs=st.lists(st.tuples(st.integers(0, 20), st.integers(1, 6)), min_size=1, max_size=5),
    block_size=st.sampled_from([1, 2, 4, 16]),
    group=st.sampled_from([1, 2, 4]),
    window=st.sampled_from([None, 2, 5]),
    seed=st.integers(0, 1000),
)
def test_random_batches_match_dense(specs, block_size, group, window, seed):
    assert run_case(specs, 4, 4 // group, block_size=block_size, window=window, seed=seed) < 1e-5


def test_decode_rows_are_batched_not_looped():
    meta = PagedAttentionMetadata.build(
        torch.tensor([0, 1, 2, 3, 7], dtype=torch.int32),
        torch.tensor([5, 9, 1, 4], dtype=torch.int32),
        torch.tensor([[0, 1, -1], [2, 3, 4], [5, -1, -1], [6, -1, -1]], dtype=torch.int32),
        torch.tensor([4, 8, 0, 24, 25, 26, -1]),
        block_size=4,
    )
    # one padded, block-wise gather for all decode rows (shortest context first): 3 blocks of
    # the longest context, padding reads block 0
    [group] = meta.decode_groups
    assert group.rows.tolist() == [2, 0, 1]
    assert group.blocks.tolist() == [[5, 0, 0], [0, 1, 0], [2, 3, 4]]
    assert group.seq_lens.tolist() == [1, 5, 9]
    assert [(s, e, b.tolist(), n) for s, e, b, n in meta.prefills] == [(3, 7, [6], 4)]
    assert meta.write_rows.tolist() == [0, 1, 2, 3, 4, 5]  # the -1 row is never written


def test_decode_groups_split_by_length_when_padding_costs_more_than_a_call():
    lens = [1, 2, 30, 31, 32]  # blocks of 4: 1, 1, 8, 8, 8
    tables = torch.arange(5 * 8, dtype=torch.int32).view(5, 8)
    meta = PagedAttentionMetadata.build(
        torch.arange(6, dtype=torch.int32),
        torch.tensor(lens, dtype=torch.int32),
        tables,
        torch.arange(5),
        block_size=4,
        group_cost=4,
    )
    assert [g.rows.tolist() for g in meta.decode_groups] == [[0, 1], [2, 3, 4]]
    assert [g.blocks.shape[1] for g in meta.decode_groups] == [1, 8]
    assert [g.offset for g in meta.decode_groups] == [0, 2]  # packed in one workspace
    mask = meta.decode_mask(0, None)
    assert mask.shape == (2, 1, 1, 4) and mask[:, 0, 0].sum(1).tolist() == [1, 2]


def _padded_cost(nblocks, groups, cost):
    return sum((e - s) * nblocks[e - 1] + cost for s, e in groups)


@settings(max_examples=200, deadline=None)
@given(
    nblocks=st.lists(st.integers(1, 12), min_size=1, max_size=8).map(sorted),
    cost=st.sampled_from([0, 1, 3, 16, math.inf]),
)
def test_group_by_length_is_optimal(nblocks, cost):
    groups = group_by_length(nblocks, cost)
    assert groups[0][0] == 0 and groups[-1][1] == len(nblocks)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(groups, groups[1:], strict=False))
    # brute force over every set of cut points
    n, best = len(nblocks), math.inf
    for mask in range(2 ** (n - 1)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        best = min(best, _padded_cost(nblocks, list(zip(cuts, cuts[1:], strict=False)), cost))
    assert _padded_cost(nblocks, groups, cost) == best


def test_group_by_length_extremes_and_bad_input():
    assert group_by_length([2, 2, 5, 9], math.inf) == [(0, 4)]
    assert group_by_length([2, 2, 5, 9], 0) == [(0, 2), (2, 3), (3, 4)]  # equal lengths stay
    with pytest.raises(ValueError, match="ascending"):
        group_by_length([3, 1], 0)


@settings(max_examples=25, deadline=None)
@given(
    specs=st.lists(st.tuples(st.integers(0, 20), st.just(1)), min_size=2, max_size=6),
    block_size=st.sampled_from([1, 2, 4]),
    window=st.sampled_from([None, 3]),
    seed=st.integers(0, 1000),
)
def test_decode_split_into_many_groups_matches_dense(specs, block_size, window, seed):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TorchPagedAttention, "decode_group_cost", 0)
        assert run_case(specs, 4, 2, block_size=block_size, window=window, seed=seed) < 1e-5


def test_gather_workspace_is_reused_across_batches_and_grows():
    backend = TorchPagedAttention()
    k_cache = torch.randn(16, 4, 2, 8)
    v_cache = torch.randn_like(k_cache)

    def gather(lens):
        b = len(lens)
        meta = backend.build_metadata(
            torch.arange(b + 1, dtype=torch.int32),
            torch.tensor(lens, dtype=torch.int32),
            torch.arange(b * 4, dtype=torch.int32).view(b, 4),
            torch.arange(b),
            4,
        )
        k, v = meta.gather_decode_context(0, k_cache, v_cache)
        blocks = meta.decode_groups[0].blocks
        assert torch.equal(k, k_cache[blocks].view(b, -1, 2, 8))
        assert torch.equal(v, v_cache[blocks].view(b, -1, 2, 8))
        return k

    first = gather([8, 8])
    assert gather([4, 3]).data_ptr() == first.data_ptr()  # smaller: same memory
    assert gather([16, 16, 16]).shape == (3, 16, 2, 8)  # larger: grown


def test_padding_rows_are_not_written():
    k_cache = torch.zeros(4, 2, 1, 8)
    v_cache = torch.zeros_like(k_cache)
    q, k, v = torch.randn(3, 1, 8), torch.randn(3, 1, 8), torch.randn(3, 1, 8)
    paged_attention(
        q,
        k,
        v,
        k_cache,
        v_cache,
        query_start_loc=torch.tensor([0, 2], dtype=torch.int32),  # row 2 is padding
        seq_lens=torch.tensor([2], dtype=torch.int32),
        block_tables=torch.tensor([[3]], dtype=torch.int32),
        slot_mapping=torch.tensor([6, 7, -1]),
    )
    assert torch.equal(k_cache[3, :, 0], k[:2, 0])
    assert k_cache[:3].abs().sum() == 0


# -- backend selection -------------------------------------------------------------------


@pytest.fixture
def fake_fast_backend():
    @register_attention_backend
    class FakeFast(TorchPagedAttention):
        name = "fake-fast"
        priority = 10

        @classmethod
        def is_available(cls, device):
            return device.type == "cpu"

    yield FakeFast
    attn_mod._BACKENDS.pop("fake-fast")


def test_reference_is_the_default(monkeypatch):
    monkeypatch.delenv(attn_mod.ATTENTION_BACKEND_ENV, raising=False)
    assert "torch" in attention_backends()
    assert isinstance(get_attention_backend(), TorchPagedAttention)


def test_auto_picks_highest_priority_available(fake_fast_backend, monkeypatch):
    monkeypatch.delenv(attn_mod.ATTENTION_BACKEND_ENV, raising=False)
    assert attention_backends("cpu")[0] == "fake-fast"
    assert type(get_attention_backend(device="cpu")) is fake_fast_backend
    assert type(get_attention_backend("torch")) is TorchPagedAttention
    assert "fake-fast" not in attention_backends("meta")
    assert type(get_attention_backend(device="meta")) is TorchPagedAttention


def test_env_var_selects_backend(fake_fast_backend, monkeypatch):
    monkeypatch.setenv(attn_mod.ATTENTION_BACKEND_ENV, "torch")
    assert type(get_attention_backend()) is TorchPagedAttention


def test_unknown_or_unavailable_backend_errors(fake_fast_backend):
    with pytest.raises(ValueError, match="unknown attention backend 'nope'.*torch"):
        get_attention_backend("nope")
    with pytest.raises(RuntimeError, match="'fake-fast' is not available on meta"):
        get_attention_backend("fake-fast", device="meta")
