"""The C++ small ops of a decoder layer (RMSNorm, residual add + RMSNorm, RoPE in place,
silu * up) against their torch references in core.kernels.layer_ops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.kernels import layer_ops
from core.kernels.layer_ops import add_rms_norm, apply_rotary, apply_rotary_, rms_norm, silu_mul
from core.model.config import RopeConfig
from core.model.layers import RotaryEmbedding

# fp32: summation order only; bf16: one rounding of the output (2^-8 relative) either way
TOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3}
DTYPES = st.sampled_from([torch.float32, torch.bfloat16])


def _close(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = want.double().abs().max().item() + 1.0
    err = (got.double() - want.double()).abs().max().item()
    assert err <= TOL[want.dtype] * scale, f"max error {err:.3g} at scale {scale:.3g}"


def _randn(gen, *shape, dtype):
    return torch.randn(*shape, generator=gen).to(dtype)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 64),
    width=st.integers(1, 300),
    dtype=DTYPES,
    strided=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_rms_norms_match_reference(ext, rows, width, dtype, strided, seed):
    g = torch.Generator().manual_seed(seed)
    x = _randn(g, rows, 2 * width if strided else width, dtype=dtype)
    if strided:
        x = x[:, ::2]
    r = _randn(g, rows, width, dtype=dtype)
    w = _randn(g, width, dtype=dtype)
    _close(rms_norm(x, w, 1e-5, fast=True), rms_norm(x, w, 1e-5))
    s, normed = add_rms_norm(x, r, w, 1e-6, fast=True)
    s_ref, normed_ref = add_rms_norm(x, r, w, 1e-6)
    assert torch.equal(s, s_ref)  # one rounding of the sum, the same in both
    _close(normed, normed_ref)


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(1, 64),
    heads=st.integers(1, 6),
    head_dim=st.sampled_from([8, 16, 64, 80]),
    partial=st.sampled_from([1.0, 0.5, 0.25]),
    dtype=DTYPES,
    seed=st.integers(0, 10_000),
)
def test_rotary_in_place_matches_reference(ext, tokens, heads, head_dim, partial, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    rope = RotaryEmbedding(head_dim, RopeConfig(partial_rotary_factor=partial))
    cos, sin = rope(torch.randint(0, 4000, (tokens,), generator=g))
    # q as it comes out of a fused qkv projection: a strided view
    qkv = _randn(g, tokens, (heads + 2) * head_dim, dtype=dtype)
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    want = apply_rotary(q, cos, sin)
    rest = qkv[:, heads * head_dim :].clone()
    got = apply_rotary_(q, cos, sin, fast=True)
    assert got.data_ptr() == qkv.data_ptr()  # rotated in place
    _close(got, want)
    assert torch.equal(qkv[:, heads * head_dim :], rest)  # k and v columns untouched


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 64), inner=st.integers(1, 200), dtype=DTYPES, seed=st.integers(0, 9999))
def test_silu_mul_matches_reference(ext, rows, inner, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    gate_up = _randn(g, rows, 2 * inner, dtype=dtype) * 4
    _close(silu_mul(gate_up, fast=True), silu_mul(gate_up))


def test_leading_axes_and_the_reference_off_cpu_kernels(ext, monkeypatch):
    x = torch.randn(2, 3, 32)
    w = torch.randn(32)
    _close(rms_norm(x, w, 1e-6, fast=True), rms_norm(x, w, 1e-6))
    _close(silu_mul(x, fast=True), silu_mul(x))
    # fp16, mixed dtypes and autograd go to the reference
    monkeypatch.setattr(layer_ops.cpu_ext, "load", lambda: pytest.fail("extension used"))
    rms_norm(x.half(), w.half(), 1e-6, fast=True)
    rms_norm(x.bfloat16(), w, 1e-6, fast=True)
    wg = w.clone().requires_grad_()
    rms_norm(x, wg, 1e-6, fast=True).sum().backward()
    assert wg.grad is not None
    silu_mul(x, fast=False)
