"""The Mamba2 SSD chunked scan equals the sequential recurrence, and both the scan and the
causal conv resume exactly from a carried state (chunked prefill, decode)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.kernels import (
    causal_conv1d,
    causal_conv1d_step,
    ssd_chunk_scan,
    ssd_scan_naive,
    ssd_state_step,
)


def ssm_inputs(b=2, seqlen=23, h=4, p=8, g=2, n=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(b, seqlen, h, p, generator=gen),
        dt=F.softplus(torch.randn(b, seqlen, h, generator=gen) - 1),
        A=-torch.rand(h, generator=gen) * 2 - 0.1,
        B=torch.randn(b, seqlen, g, n, generator=gen),
        C=torch.randn(b, seqlen, g, n, generator=gen),
        D=torch.randn(h, generator=gen),
    )


def close(a, b, tol=1e-4):
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunk_scan_equals_sequential_recurrence(chunk_size, groups, with_state):
    t = ssm_inputs(g=groups)
    init = torch.randn(2, 4, 8, 16) if with_state else None
    y, final = ssd_chunk_scan(**t, chunk_size=chunk_size, initial_states=init)
    y_ref, final_ref = ssd_scan_naive(**t, initial_states=init)
    assert y.dtype == final.dtype == torch.float32
    assert close(y, y_ref) and close(final, final_ref)


def test_no_skip_term_without_D():
    t = ssm_inputs()
    t["D"] = None
    y, _ = ssd_chunk_scan(**t, chunk_size=4)
    y_ref, _ = ssd_scan_naive(**t)
    assert close(y, y_ref)


@pytest.mark.parametrize("cuts", [[1], [5], [8], [3, 4, 17], [22]])
def test_chunked_prefill_in_pieces_equals_one_piece(cuts):
    t = ssm_inputs(seqlen=23)
    whole, final_whole = ssd_chunk_scan(**t, chunk_size=8)
    bounds = [0, *cuts, 23]
    state, pieces = None, []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        part = {k: (v[:, lo:hi] if v.dim() > 1 else v) for k, v in t.items()}
        y, state = ssd_chunk_scan(**part, chunk_size=8, initial_states=state)
        pieces.append(y)
    assert close(torch.cat(pieces, dim=1), whole) and close(state, final_whole)


def test_decode_steps_continue_a_prefill():
    t = ssm_inputs(seqlen=12)
    whole, final_whole = ssd_chunk_scan(**t, chunk_size=4)
    _, state = ssd_chunk_scan(
        **{k: (v[:, :9] if v.dim() > 1 else v) for k, v in t.items()}, chunk_size=4
    )
    for i in range(9, 12):
        y, state = ssd_state_step(
            state, t["x"][:, i], t["dt"][:, i], t["A"], t["B"][:, i], t["C"][:, i], t["D"]
        )
        assert close(y, whole[:, i])
    assert close(state, final_whole)


def test_state_step_does_not_modify_its_input():
    t = ssm_inputs(seqlen=1)
    state = torch.randn(2, 4, 8, 16)
    before = state.clone()
    ssd_state_step(state, t["x"][:, 0], t["dt"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0])
    assert torch.equal(state, before)


def conv_inputs(seqlen=11, c=6, k=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(seqlen, c, generator=gen),
        torch.randn(c, k, generator=gen),
        torch.randn(c, generator=gen),
    )


def test_conv_matches_zero_padded_conv1d():
    x, w, b = conv_inputs()
    y, state = causal_conv1d(x, w, b)
    ref = F.silu(F.conv1d(x.t()[None], w[:, None, :], b, padding=3, groups=6)[0, :, :11]).t()
    assert close(y, ref, 1e-6)
    assert torch.equal(state, x[-3:].t())


@pytest.mark.parametrize("cuts", [[1], [2, 3], [5], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
def test_conv_state_continuity(cuts):
    """Pieces of any length (also shorter than the kernel) give the one-piece result."""
    x, w, b = conv_inputs()
    whole, final = causal_conv1d(x, w, b)
    bounds = [0, *cuts, 11]
    state, pieces = None, []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        y, state = causal_conv1d(x[lo:hi], w, b, state)
        pieces.append(y)
    assert close(torch.cat(pieces), whole, 1e-6) and torch.equal(state, final)


def test_conv_step_equals_prefill():
    x, w, b = conv_inputs()
    whole, final = causal_conv1d(x, w, b)
    _, state = causal_conv1d(x[:4], w, b)
    state = state[None]
    for i in range(4, 11):
        y, state = causal_conv1d_step(x[i][None], state, w, b)
        assert close(y[0], whole[i], 1e-6)
    assert torch.equal(state[0], final)
