"""Mamba2 state-space duality (SSD) references: chunked scan, recurrent step, causal conv1d.

The SSM of one head, per token ``t`` (``x_t``: ``[head_dim]``, ``B_t``, ``C_t``: ``[d_state]``,
``dt_t > 0`` already through ``softplus(dt + dt_bias)``, ``A < 0`` a scalar per head)::

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T        # h: [head_dim, d_state]
    y_t = h_t C_t + D * x_t

:func:`ssd_scan_naive` is that loop, literally. :func:`ssd_chunk_scan` computes the same thing
the way Mamba2 prefill does: quadratic attention-like products inside chunks of ``chunk_size``
tokens and the recurrence only between chunks. Both take an initial state and return the final
one, so a prefill may be split anywhere (chunked prefill, a prefix-cache checkpoint) and
resumed. :func:`ssd_state_step` is one token of the recurrence (decode). ``B`` and ``C`` come in
``n_groups`` groups shared by consecutive heads (head ``h`` uses group
``h // (n_heads // n_groups)``).

:func:`causal_conv1d` and :func:`causal_conv1d_step` are Mamba's depthwise causal convolution
with a carried state: the last ``kernel - 1`` inputs of the sequence so far (zeros at start).

Everything runs in fp32 internally and returns fp32 outputs and states; callers cast. Token
layout is token-major (``[..., seqlen, channels]``), matching the engine's flattened batches.
Fast kernels (e.g. mamba_ssm's Triton scan) can replace these and be tested against them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "causal_conv1d",
    "causal_conv1d_step",
    "segsum",
    "ssd_chunk_scan",
    "ssd_scan_naive",
    "ssd_state_step",
]


def _expand_groups(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[..., n_groups, d_state]`` -> ``[..., n_heads, d_state]`` (consecutive heads share)."""
    return t.repeat_interleave(n_heads // t.shape[-2], dim=-2)


def segsum(a: torch.Tensor) -> torch.Tensor:
    """``[..., Q]`` -> ``[..., Q, Q]`` with ``out[i, j] = a[j+1] + ... + a[i]`` for ``i >= j``
    and ``-inf`` above the diagonal, so ``exp(out)`` is the decay from step ``j`` to ``i``.

    Summing masked copies instead of subtracting two cumulative sums keeps the small decays
    near the diagonal exact.
    """
    q = a.shape[-1]
    strictly_lower = torch.ones(q, q, dtype=torch.bool, device=a.device).tril(-1)
    # rows k, columns j: a[k] where k > j, then cumulative over k
    terms = a[..., :, None].expand(*a.shape, q).masked_fill(~strictly_lower, 0.0)
    out = terms.cumsum(dim=-2)
    lower = torch.ones(q, q, dtype=torch.bool, device=a.device).tril()
    return out.masked_fill(~lower, float("-inf"))


def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan over whole sequences.

    Shapes: ``x`` ``[b, l, h, p]``, ``dt`` ``[b, l, h]``, ``A`` ``[h]``, ``B``/``C``
    ``[b, l, g, n]``, ``D`` ``[h]``, ``initial_states`` ``[b, h, p, n]`` (zeros if None).
    Returns ``y`` ``[b, l, h, p]`` and the final states ``[b, h, p, n]``, both fp32.
    """
    b, seqlen, h, p = x.shape
    n = B.shape[-1]
    x, dt = x.float(), dt.float()
    B, C = _expand_groups(B.float(), h), _expand_groups(C.float(), h)
    A = A.float()

    # Pad to whole chunks with dt = 0: a padded step neither decays nor feeds the state, so the
    # state after the last chunk is the state after the last real token.
    pad = (-seqlen) % chunk_size
    xp, dtp, Bp, Cp = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    nc, q = (seqlen + pad) // chunk_size, chunk_size

    xdt = (xp * dtp[..., None]).view(b, nc, q, h, p)  # inputs already scaled by dt
    Bc, Cc = Bp.view(b, nc, q, h, n), Cp.view(b, nc, q, h, n)
    log_decay = (dtp * A).view(b, nc, q, h).permute(0, 3, 1, 2)  # [b, h, c, q]
    cum = log_decay.cumsum(dim=-1)

    # 1. Inside each chunk, from a zero state: y_i = sum_{j<=i} (C_i . B_j) decay(j->i) xdt_j
    scores = torch.einsum("bcihn,bcjhn->bhcij", Cc, Bc) * torch.exp(segsum(log_decay))
    y = torch.einsum("bhcij,bcjhp->bcihp", scores, xdt)

    # 2. The state each chunk alone leaves at its end.
    to_end = torch.exp(cum[..., -1:] - cum)  # [b, h, c, q]
    chunk_states = torch.einsum("bcjhn,bhcj,bcjhp->bchpn", Bc, to_end, xdt)

    # 3. Carry the state across chunks; the state entering a chunk reaches its token i
    #    decayed by exp(cum_i).
    state = (
        torch.zeros(b, h, p, n, dtype=torch.float32, device=x.device)
        if initial_states is None
        else initial_states.float()
    )
    from_start = torch.exp(cum)  # [b, h, c, q]
    chunk_decay = torch.exp(cum[..., -1])  # [b, h, c]
    carried = []
    for c in range(nc):
        carried.append(torch.einsum("bihn,bhpn,bhi->bihp", Cc[:, c], state, from_start[:, :, c]))
        state = state * chunk_decay[:, :, c, None, None] + chunk_states[:, c]
    y = (y + torch.stack(carried, dim=1)).reshape(b, nc * q, h, p)[:, :seqlen]

    if D is not None:
        y = y + x * D.float()[:, None]
    return y, state


def ssd_state_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step for a batch of sequences (decode).

    Shapes: ``state`` ``[b, h, p, n]``, ``x`` ``[b, h, p]``, ``dt`` ``[b, h]``, ``A`` ``[h]``,
    ``B``/``C`` ``[b, g, n]``, ``D`` ``[h]``. Returns ``y`` ``[b, h, p]`` and the new state,
    both fp32; ``state`` itself is not modified.
    """
    h = x.shape[1]
    x, dt = x.float(), dt.float()
    B, C = _expand_groups(B.float(), h), _expand_groups(C.float(), h)
    decay = torch.exp(dt * A.float())[..., None, None]  # [b, h, 1, 1]
    new_state = state.float() * decay + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", new_state, C)
    if D is not None:
        y = y + x * D.float()[:, None]
    return y, new_state


def ssd_scan_naive(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence token by token; same arguments and results as :func:`ssd_chunk_scan`."""
    b, seqlen, h, p = x.shape
    state = (
        torch.zeros(b, h, p, B.shape[-1], dtype=torch.float32, device=x.device)
        if initial_states is None
        else initial_states.float()
    )
    ys = []
    for t in range(seqlen):
        y, state = ssd_state_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p, dtype=torch.float32)
    return y, state


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution of one sequence, continuing from ``initial_state``.

    Shapes: ``x`` ``[l, c]``, ``weight`` ``[c, k]``, ``bias`` ``[c]``, ``initial_state``
    ``[c, k - 1]`` (zeros if None). Returns ``y`` ``[l, c]`` in ``x.dtype`` and the new state
    ``[c, k - 1]``: the last ``k - 1`` inputs, including the carried ones if ``l < k - 1``.
    """
    seqlen, channels = x.shape
    width = weight.shape[-1] - 1
    if initial_state is None:
        initial_state = x.new_zeros(channels, width)
    padded = torch.cat([initial_state.to(weight.dtype), x.t().to(weight.dtype)], dim=-1)
    y = F.conv1d(padded[None], weight[:, None, :], bias, groups=channels)[0]  # [c, l]
    if activation == "silu":
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"unsupported conv activation {activation!r}")
    return y.t().to(x.dtype), padded[:, padded.shape[-1] - width :]


def causal_conv1d_step(
    x: torch.Tensor,
    state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One new token for a batch of sequences.

    Shapes: ``x`` ``[b, c]``, ``state`` ``[b, c, k - 1]``, ``weight`` ``[c, k]``. Returns
    ``y`` ``[b, c]`` in ``x.dtype`` and the new state ``[b, c, k - 1]``.
    """
    window = torch.cat([state.to(weight.dtype), x[..., None].to(weight.dtype)], dim=-1)
    y = (window * weight).sum(dim=-1)
    if bias is not None:
        y = y + bias
    if activation == "silu":
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"unsupported conv activation {activation!r}")
    return y.to(x.dtype), window[..., 1:]
