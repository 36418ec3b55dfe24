"""The "cpp" attention backend (decode attention read in place through the block table, and its
K/V write) against the torch reference, on random block tables and batches of 1..64 decode
sequences. tests/kernels/test_attention.py runs its mixed prefill/decode cases over this backend
too."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.kernels import TorchPagedAttention, get_attention_backend
from core.kernels.cpu_attention import CppPagedAttention

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _batch(lens, heads, kv_heads, head_dim, block_size, dtype, seed):
    """A decode batch (one new token per sequence) over a cache with shuffled blocks; q and the
    new K/V are strided views of one fused projection, as a model makes them."""
    gen = torch.Generator().manual_seed(seed)
    nblocks = [-(-n // block_size) for n in lens]
    num_blocks = sum(nblocks) + 2
    free = list(range(num_blocks))
    random.Random(seed).shuffle(free)
    tables = [[free.pop() for _ in range(nb)] for nb in nblocks]
    width = max(nblocks)
    block_tables = torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int32)
    slots = torch.tensor(
        [
            t[(n - 1) // block_size] * block_size + (n - 1) % block_size
            for t, n in zip(tables, lens, strict=True)
        ]
    )
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(dtype)
    v_cache = torch.randn(shape, generator=gen).to(dtype)
    qkv = torch.randn(len(lens), (heads + 2 * kv_heads) * head_dim, generator=gen).to(dtype)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    n = len(lens)
    args = (
        torch.arange(n + 1, dtype=torch.int32),
        torch.tensor(lens, dtype=torch.int32),
        block_tables,
        slots,
        block_size,
    )
    views = (
        q.view(n, heads, head_dim),
        k.view(n, kv_heads, head_dim),
        v.view(n, kv_heads, head_dim),
    )
    return views, k_cache, v_cache, args


def _run(backend, views, k_cache, v_cache, args, window):
    q, k, v = views
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    meta = backend.build_metadata(*args)
    backend.write_kv(k, v, k_cache, v_cache, meta)
    out = backend.forward(q, k_cache, v_cache, meta, scale=0.3, sliding_window=window)
    return out, k_cache, v_cache


@settings(max_examples=40, deadline=None)
@given(
    lens=st.lists(st.integers(1, 70), min_size=1, max_size=64),
    group=st.sampled_from([1, 2, 3, 4]),
    kv_heads=st.sampled_from([1, 2]),
    head_dim=st.sampled_from([8, 16, 64, 72, 128]),
    block_size=st.sampled_from([1, 4, 16]),
    window=st.sampled_from([None, 1, 7]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 10_000),
)
def test_decode_matches_reference(
    ext, lens, group, kv_heads, head_dim, block_size, window, dtype, seed
):
    batch = _batch(lens, group * kv_heads, kv_heads, head_dim, block_size, dtype, seed)
    got, k_got, v_got = _run(CppPagedAttention(), *batch, window)
    want, k_want, v_want = _run(TorchPagedAttention(), *batch, window)
    assert torch.equal(k_got, k_want) and torch.equal(v_got, v_want)
    err = (got.double() - want.double()).abs().max().item()
    assert err < TOL[dtype], err


def test_padding_rows_and_prefills_take_the_reference_paths(ext):
    # a batch whose last row is padding (slot -1): the write drops it, its output stays zero
    views, k_cache, v_cache, args = _batch([5, 9], 4, 2, 16, 4, torch.float32, 0)
    qsl, seq_lens, tables, slots, bs = args
    q, k, v = (torch.cat([t, t[:1]]) for t in views)
    args = (qsl, seq_lens, tables, torch.cat([slots, torch.tensor([-1])]), bs)
    got, k_got, _ = _run(CppPagedAttention(), (q, k, v), k_cache, v_cache, args, None)
    want, k_want, _ = _run(TorchPagedAttention(), (q, k, v), k_cache, v_cache, args, None)
    assert torch.equal(k_got, k_want)
    assert torch.allclose(got, want, atol=1e-5) and got[2].abs().sum() == 0


def test_bad_block_tables_raise(ext):
    (q, _, _), k_cache, v_cache, _ = _batch([5], 4, 2, 16, 4, torch.float32, 0)
    out = torch.empty(q.shape)
    rows, lens = torch.tensor([0]), torch.tensor([5])
    with pytest.raises(RuntimeError, match="block 99 out of range"):
        ext.paged_decode_attention(
            out, q, k_cache, v_cache, rows, torch.tensor([[0, 99]]), lens, 1.0, 0
        )
    with pytest.raises(RuntimeError, match="length 5 for 1 blocks"):
        ext.paged_decode_attention(
            out, q, k_cache, v_cache, rows, torch.tensor([[0]]), lens, 1.0, 0
        )


def test_auto_prefers_cpp_on_cpu(ext, monkeypatch):
    monkeypatch.delenv("SERVELAB_ATTENTION_BACKEND", raising=False)
    assert type(get_attention_backend(device="cpu")) is CppPagedAttention
    assert type(get_attention_backend(device="meta")) is TorchPagedAttention
