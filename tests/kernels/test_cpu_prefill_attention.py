"""The tiled prefill kernel (``paged_prefill_attention``: the new tokens of each sequence
against its keys read in place through the block table, causal bottom-right aligned) against
the torch reference: directly against a per-sequence softmax by definition, and through the
``"cpp"`` backend against ``TorchPagedAttention`` on mixed batches (decodes, verify-sized
chunks, prompts with and without cached context), over random shapes, shuffled block tables,
query lengths, GQA groups, head sizes, windows and dtypes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.kernels import TorchPagedAttention
from core.kernels.cpu_attention import CppPagedAttention

from .test_cpu_multi_query_attention import _cache, _mixed_batch, _run, backend_matches_reference

# fp32: sums over up to ~600 keys and 128 dims in another order than the reference's
TOL = {torch.float32: 5e-5, torch.bfloat16: 2e-2}


def _definition(q, k_cache, v_cache, table, start, qlen, seq_len, scale, window):
    """Attention of rows ``start .. start + qlen`` by the definition, all heads at once:
    softmax over the keys each query may see (positions <= its own, inside the window), fp32."""
    block_size, kv_heads, head_dim = k_cache.shape[1:]
    group = q.shape[1] // kv_heads
    pos = torch.arange(seq_len)
    slots = torch.tensor(table)[pos // block_size] * block_size + pos % block_size
    k = k_cache.view(-1, kv_heads, head_dim)[slots].float().repeat_interleave(group, 1)
    v = v_cache.view(-1, kv_heads, head_dim)[slots].float().repeat_interleave(group, 1)
    qs = q[start : start + qlen].float()  # [qlen, H, D]
    scores = torch.einsum("qhd,khd->hqk", qs, k) * scale
    qpos = torch.arange(seq_len - qlen, seq_len)[:, None]
    seen = pos[None, :] <= qpos
    if window:
        seen &= pos[None, :] > qpos - window
    probs = scores.masked_fill(~seen, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


def _prefill(ext, seqs, group, kv_heads, head_dim, block_size, window, dtype, seed, scale=0.3):
    """Run the kernel on ``seqs`` = [(new tokens, cached context)] and return, per sequence,
    its output rows and the definition's."""
    (q, _, _), k_cache, v_cache, args = _mixed_batch(
        seqs, group * kv_heads, kv_heads, head_dim, block_size, dtype, seed
    )
    query_start_loc, seq_lens, block_tables = (a.long() for a in args[:3])
    # q as a strided view of a fused projection, as a model makes it
    fused = torch.cat([q, torch.zeros_like(q[:, :2])], dim=1).view(q.shape[0], -1)
    q = fused[:, : q[0].numel()].view(q.shape)
    out = torch.full_like(q, float("nan"))
    starts, qlens = query_start_loc[:-1], query_start_loc.diff()
    blocks = block_tables.clamp(min=0)  # padded with block 0, never read past seq_lens
    ext.paged_prefill_attention(
        out, q, k_cache, v_cache, starts, qlens, blocks, seq_lens, scale, window or 0
    )
    return [
        (
            out[start : start + qlen].float(),
            _definition(q, k_cache, v_cache, table.tolist(), start, qlen, n, scale, window),
        )
        for start, qlen, n, table in zip(
            starts.tolist(), qlens.tolist(), seq_lens.tolist(), blocks, strict=True
        )
    ]


@settings(max_examples=40, deadline=None)
@given(
    seqs=st.lists(
        st.tuples(st.integers(1, 300), st.sampled_from([0, 0, 1, 17, 64, 150])),
        min_size=1,
        max_size=4,
    ),  # (new tokens, cached context)
    group=st.sampled_from([1, 2, 3, 4]),
    kv_heads=st.sampled_from([1, 2]),
    head_dim=st.sampled_from([8, 40, 64, 72, 128]),
    block_size=st.sampled_from([1, 5, 16, 32]),
    window=st.sampled_from([None, 1, 7, 64, 100]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 10_000),
)
def test_kernel_matches_the_definition(
    ext, seqs, group, kv_heads, head_dim, block_size, window, dtype, seed
):
    for got, want in _prefill(
        ext, seqs, group, kv_heads, head_dim, block_size, window, dtype, seed
    ):
        torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("head_dim", [64, 128])
def test_kernel_long_prompts_with_context(ext, head_dim):
    """The tiles of long prompts: several query blocks per sequence and key tiles that cross
    the causal diagonal, the blocks and a cached prefix (the sizes of the fast paths)."""
    seqs = [(300, 0), (257, 40), (129, 300), (65, 0)]
    for got, want in _prefill(ext, seqs, 3, 4, head_dim, 16, None, torch.float32, 5):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_kernel_large_scores_stay_finite(ext):
    """Scores far apart (a large scale) exercise the online softmax's rescaling: a later tile's
    max replaces an earlier one's without overflow or NaN."""
    for got, want in _prefill(ext, [(200, 30)], 2, 1, 64, 16, None, torch.float32, 9, scale=8.0):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_kernel_rejects_bad_input(ext):
    tables, k_cache, v_cache = _cache([6], 1, 8, 4, torch.float32, 0)
    q = torch.randn(3, 1, 8)
    blocks = torch.tensor([tables[0]])
    args = (torch.tensor([0]), torch.tensor([4]), blocks, torch.tensor([3]), 1.0, 0)
    with pytest.raises(RuntimeError, match=r"length 3 for 2 blocks of 4 \(row 0, 4 new tokens\)"):
        ext.paged_prefill_attention(torch.empty_like(q), q, k_cache, v_cache, *args)
    bad = torch.tensor([[tables[0][0], 99]])
    args = (torch.tensor([0]), torch.tensor([3]), bad, torch.tensor([6]), 1.0, 0)
    with pytest.raises(RuntimeError, match=r"block 99 of sequence 0 is out of range"):
        ext.paged_prefill_attention(torch.empty_like(q), q, k_cache, v_cache, *args)
    args = (torch.tensor([0]), torch.tensor([3]), blocks, torch.tensor([6]), 1.0, 0)
    with pytest.raises(RuntimeError, match=r"share one dtype"):
        ext.paged_prefill_attention(torch.empty_like(q), q.double(), k_cache, v_cache, *args)


@settings(max_examples=40, deadline=None)
@given(
    seqs=st.lists(
        st.tuples(st.sampled_from([1, 1, 2, 4, 9, 33, 70, 150, 300]), st.integers(0, 80)),
        min_size=1,
        max_size=8,
    ),
    max_query=st.sampled_from([1, 4]),
    group=st.sampled_from([1, 3]),
    kv_heads=st.sampled_from([1, 2]),
    head_dim=st.sampled_from([16, 64, 128]),
    block_size=st.sampled_from([1, 4, 16]),
    window=st.sampled_from([None, 4, 50]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 10_000),
)
def test_backend_with_prefill_kernel_matches_reference(
    ext, seqs, max_query, group, kv_heads, head_dim, block_size, window, dtype, seed
):
    """Decodes, multi-query chunks, prompts (context 0) and chunked prefills (context > 0)
    in one batch: the backend attends the prefills with the tiled kernel and equals the
    reference on every row."""
    meta = backend_matches_reference(
        seqs, max_query, group, kv_heads, head_dim, block_size, window, dtype, seed, TOL[dtype]
    )
    long = [n for n, _ in seqs if n > max(max_query, 1)]
    group_of = meta.kernel_prefills
    assert (group_of.query_lens.tolist() if group_of is not None else []) == long


def test_backend_uses_the_kernel(ext, monkeypatch):
    """The backend's prefills go to the kernel, not to the reference's SDPA path."""
    views, k_cache, v_cache, args = _mixed_batch(
        [(40, 0), (1, 9), (20, 13)], 4, 2, 64, 16, torch.float32, 1
    )
    monkeypatch.setattr(
        TorchPagedAttention, "attend_prefills", lambda *a, **k: pytest.fail("reference path")
    )
    got, _ = _run(CppPagedAttention(), views, k_cache, v_cache, args, None)
    monkeypatch.undo()
    want, _ = _run(TorchPagedAttention(), views, k_cache, v_cache, args, None)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_reference_path_when_the_extension_is_off(monkeypatch):
    """Without the extension every prefill takes the reference's SDPA path."""
    from core.kernels import cpu_ext

    views, k_cache, v_cache, args = _mixed_batch(
        [(50, 7), (1, 9), (20, 0)], 4, 2, 16, 4, torch.float32, 3
    )
    monkeypatch.setattr(cpu_ext, "load", lambda: None)
    got, _ = _run(CppPagedAttention(), views, k_cache, v_cache, args, None)
    want, _ = _run(TorchPagedAttention(), views, k_cache, v_cache, args, None)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_prefill_kernel_off_takes_the_reference_path(ext, monkeypatch):
    """``prefill_kernel = False`` (the A/B switch of scripts/kernel_bench.py) sends the
    prefills to the reference's SDPA path, decodes still to the kernel."""
    views, k_cache, v_cache, args = _mixed_batch(
        [(40, 0), (1, 9), (20, 13)], 4, 2, 64, 16, torch.float32, 2
    )
    calls = []
    original = TorchPagedAttention.attend_prefills
    monkeypatch.setattr(
        TorchPagedAttention,
        "attend_prefills",
        lambda self, *a, **k: calls.append(1) or original(self, *a, **k),
    )
    cpp = CppPagedAttention()
    cpp.prefill_kernel = False
    got, _ = _run(cpp, views, k_cache, v_cache, args, None)
    assert calls
    monkeypatch.undo()
    want, _ = _run(TorchPagedAttention(), views, k_cache, v_cache, args, None)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
