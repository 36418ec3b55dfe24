"""The multi-query decode kernel (``paged_multi_query_attention``: a few new tokens per
sequence, a speculative verify's k + 1, attended in place through the block table, causal among
themselves) against the torch reference: directly against a per-sequence softmax, and through
the ``"cpp"`` backend against ``TorchPagedAttention`` on mixed batches, over random shapes,
shuffled block tables, query lengths and sliding windows."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.kernels import TorchPagedAttention
from core.kernels.cpu_attention import CppPagedAttention

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _cache(lens, kv_heads, head_dim, block_size, dtype, seed):
    """A cache with shuffled blocks holding ``lens`` tokens per sequence, and the tables."""
    gen = torch.Generator().manual_seed(seed)
    nblocks = [-(-n // block_size) for n in lens]
    num_blocks = sum(nblocks) + 2
    free = list(range(num_blocks))
    random.Random(seed).shuffle(free)
    tables = [[free.pop() for _ in range(nb)] for nb in nblocks]
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(dtype)
    v_cache = torch.randn(shape, generator=gen).to(dtype)
    return tables, k_cache, v_cache


def _naive(q, k_cache, v_cache, table, start, qlen, seq_len, scale, window):
    """Attention of rows ``start .. start + qlen`` by the definition: softmax over the keys
    each query may see (positions <= its own, inside the window), in fp32."""
    block_size, kv_heads, head_dim = k_cache.shape[1:]
    heads = q.shape[1]
    group = heads // kv_heads
    pos = torch.arange(seq_len)
    slots = torch.tensor(table)[pos // block_size] * block_size + pos % block_size
    k = k_cache.view(-1, kv_heads, head_dim)[slots].float()  # [L, Hkv, D]
    v = v_cache.view(-1, kv_heads, head_dim)[slots].float()
    out = torch.empty(qlen, heads, head_dim)
    for j in range(qlen):
        qpos = seq_len - qlen + j
        seen = pos <= qpos
        if window:
            seen &= pos > qpos - window
        for h in range(heads):
            s = (k[:, h // group] @ q[start + j, h].float()) * scale
            s = s.masked_fill(~seen, float("-inf"))
            out[j, h] = s.softmax(0) @ v[:, h // group]
    return out


@settings(max_examples=60, deadline=None)
@given(
    seqs=st.lists(
        st.tuples(st.integers(1, 9), st.integers(0, 60)), min_size=1, max_size=12
    ),  # (new tokens, cached context)
    group=st.sampled_from([1, 2, 4]),
    kv_heads=st.sampled_from([1, 2]),
    head_dim=st.sampled_from([8, 64, 72, 128]),
    block_size=st.sampled_from([1, 4, 16]),
    window=st.sampled_from([None, 1, 3, 7]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 10_000),
)
def test_kernel_matches_the_definition(
    ext, seqs, group, kv_heads, head_dim, block_size, window, dtype, seed
):
    qlens = [n for n, _ in seqs]
    lens = [n + c for n, c in seqs]
    heads = group * kv_heads
    tables, k_cache, v_cache = _cache(lens, kv_heads, head_dim, block_size, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    # q as a strided view of a fused projection, as a model makes it
    qkv = torch.randn(sum(qlens), (heads + 2) * head_dim, generator=gen).to(dtype)
    q = qkv[:, : heads * head_dim].view(-1, heads, head_dim)
    starts = [0]
    for n in qlens[:-1]:
        starts.append(starts[-1] + n)
    width = max(len(t) for t in tables)
    blocks = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long)
    out = torch.full_like(q, float("nan"))
    ext.paged_multi_query_attention(
        out,
        q,
        k_cache,
        v_cache,
        torch.tensor(starts),
        torch.tensor(qlens),
        blocks,
        torch.tensor(lens),
        0.3,
        window or 0,
    )
    for i, (start, qlen, n) in enumerate(zip(starts, qlens, lens, strict=True)):
        want = _naive(q, k_cache, v_cache, tables[i], start, qlen, n, 0.3, window)
        got = out[start : start + qlen].float()
        torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])


def _mixed_batch(seqs, heads, kv_heads, head_dim, block_size, dtype, seed):
    """A batch of (new tokens, cached context) sequences with the new K/V to write."""
    lens = [n + c for n, c in seqs]
    tables, k_cache, v_cache = _cache(lens, kv_heads, head_dim, block_size, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    T = sum(n for n, _ in seqs)
    width = max(len(t) for t in tables)
    block_tables = torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int32)
    slots = [
        t[p // block_size] * block_size + p % block_size
        for t, (n, c) in zip(tables, seqs, strict=True)
        for p in range(c, c + n)
    ]
    starts = [0]
    for n, _ in seqs:
        starts.append(starts[-1] + n)
    args = (
        torch.tensor(starts, dtype=torch.int32),
        torch.tensor(lens, dtype=torch.int32),
        block_tables,
        torch.tensor(slots),
        block_size,
    )
    q = torch.randn(T, heads, head_dim, generator=gen).to(dtype)
    k = torch.randn(T, kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(T, kv_heads, head_dim, generator=gen).to(dtype)
    return (q, k, v), k_cache, v_cache, args


def _run(backend, views, k_cache, v_cache, args, window):
    q, k, v = views
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    meta = backend.build_metadata(*args)
    backend.write_kv(k, v, k_cache, v_cache, meta)
    return backend.forward(q, k_cache, v_cache, meta, scale=0.25, sliding_window=window), meta


@settings(max_examples=40, deadline=None)
@given(
    seqs=st.lists(st.tuples(st.integers(1, 12), st.integers(0, 40)), min_size=1, max_size=10),
    max_query=st.sampled_from([1, 3, 5, 9]),
    group=st.sampled_from([1, 3]),
    kv_heads=st.sampled_from([1, 2]),
    head_dim=st.sampled_from([16, 64]),
    block_size=st.sampled_from([1, 4, 16]),
    window=st.sampled_from([None, 4]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 10_000),
)
def test_backend_with_in_place_verify_matches_reference(
    ext, seqs, max_query, group, kv_heads, head_dim, block_size, window, dtype, seed
):
    """Decodes, verify-sized chunks and longer prefills in one batch: the backend with
    ``max_decode_query_len`` raised takes the short ones in place and equals the reference."""
    meta = backend_matches_reference(
        seqs, max_query, group, kv_heads, head_dim, block_size, window, dtype, seed, TOL[dtype]
    )
    short = [i for i, (n, _) in enumerate(seqs) if 1 < n <= max_query]
    if short:
        assert meta.in_place is not None and len(meta.in_place.members) == len(short)
    else:
        assert meta.in_place is None


def backend_matches_reference(
    seqs, max_query, group, kv_heads, head_dim, block_size, window, dtype, seed, tol
):
    """Run one mixed batch through the C++ backend (``max_decode_query_len = max_query``) and
    the torch reference, assert they agree on every row within ``tol`` (the caller's: longer
    prefills sum more keys); the backend's metadata."""
    views, k_cache, v_cache, args = _mixed_batch(
        seqs, group * kv_heads, kv_heads, head_dim, block_size, dtype, seed
    )
    cpp = CppPagedAttention()
    cpp.max_decode_query_len = max_query
    got, meta = _run(cpp, views, k_cache, v_cache, args, window)
    want, _ = _run(TorchPagedAttention(), views, k_cache, v_cache, args, window)
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    return meta


def test_kernel_rejects_bad_lengths(ext):
    tables, k_cache, v_cache = _cache([6], 1, 8, 4, torch.float32, 0)
    q = torch.randn(3, 1, 8)
    blocks = torch.tensor([tables[0]])
    args = (torch.tensor([0]), torch.tensor([4]), blocks, torch.tensor([3]), 1.0, 0)
    with pytest.raises(RuntimeError, match=r"length 3 for 2 blocks of 4 \(row 0, 4 new tokens\)"):
        ext.paged_multi_query_attention(torch.empty_like(q), q, k_cache, v_cache, *args)
    args = (torch.tensor([1]), torch.tensor([3]), blocks, torch.tensor([6]), 1.0, 0)
    with pytest.raises(RuntimeError, match=r"row 1, 3 new tokens"):  # rows 1..3 of a 3-row q
        ext.paged_multi_query_attention(torch.empty_like(q), q, k_cache, v_cache, *args)


def test_reference_path_when_the_extension_is_off(monkeypatch):
    """Without the extension the backend falls back to the reference for every sequence,
    in-place candidates included."""
    from core.kernels import cpu_ext

    views, k_cache, v_cache, args = _mixed_batch(
        [(5, 7), (1, 9), (20, 0)], 4, 2, 16, 4, torch.float32, 3
    )
    monkeypatch.setattr(cpu_ext, "load", lambda: None)
    cpp = CppPagedAttention()
    cpp.max_decode_query_len = 5
    got, meta = _run(cpp, views, k_cache, v_cache, args, None)
    want, _ = _run(TorchPagedAttention(), views, k_cache, v_cache, args, None)
    assert meta.in_place is not None
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
