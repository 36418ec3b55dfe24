"""Bamba: a Mamba2 / attention hybrid (IBM's Bamba; the layout transformers calls ``bamba``).

Layer ``i`` mixes tokens with attention if ``i`` is in ``attn_layer_indices`` and with a Mamba2
mixer otherwise; every layer then has its own SiLU-gated MLP::

    h = h + (Attention or Mamba2Mixer)(RMSNorm(h))
    h = h + GatedMLP(RMSNorm(h))

Attention layers use the paged KV cache and rotate half of each head (partial RoPE, 0.5).
Mamba layers keep a conv state and an SSM state per sequence in a state-pool slot: a prefill
chunk starts from the slot (or zeros when ``has_initial_state`` is False) and leaves its final
state there, so chunked prefill, decode and resuming from a copied prefix checkpoint are one
code path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.kernels.linear import Linear
from core.kernels.ssd import causal_conv1d, causal_conv1d_step, ssd_chunk_scan, ssd_state_step

from .base import CausalLM
from .batch import DENSE_SHAPE, ForwardBatch, ForwardContext
from .config import ATTENTION, MAMBA, ModelConfig
from .errors import ConfigError
from .layers import (
    Attention,
    GatedMLP,
    GatedRMSNorm,
    HFWeights,
    RMSNorm,
    _same,
    nested_hf_weights,
)

__all__ = ["BambaDecoderLayer", "BambaForCausalLM", "Mamba2Mixer"]


@dataclass
class _SSMSplit:
    """Per-batch plan shared by the Mamba layers: decode rows go through the recurrent step
    together, prefill chunks through the chunked scan one sequence at a time."""

    decode_rows: torch.Tensor  # [Bd] token rows
    decode_slots: torch.Tensor  # [Bd] long state slots
    decode_has_state: torch.Tensor  # [Bd] bool
    decode_all_have_state: bool
    prefills: list[tuple[int, int, int, bool]]  # (first row, end row, slot, has state)

    @classmethod
    def of(cls, batch: ForwardBatch) -> _SSMSplit:
        qlens = batch.query_lens()
        if batch.state_indices is None:
            raise ValueError("a batch through Mamba layers needs state_indices")
        slots = batch.state_indices.tolist()
        if batch.has_initial_state is None:  # infer: a sequence with cached tokens has a state
            has = [s > q for s, q in zip(batch.context_lens(), qlens, strict=True)]
        else:
            has = batch.has_initial_state.tolist()
        starts = [0]
        for n in qlens:
            starts.append(starts[-1] + n)
        dec = [b for b, n in enumerate(qlens) if n == 1]
        dev = batch.input_ids.device
        return cls(
            decode_rows=torch.tensor([starts[b] for b in dec], dtype=torch.long, device=dev),
            decode_slots=torch.tensor([slots[b] for b in dec], dtype=torch.long, device=dev),
            decode_has_state=torch.tensor([has[b] for b in dec], dtype=torch.bool, device=dev),
            decode_all_have_state=all(has[b] for b in dec),
            prefills=[
                (starts[b], starts[b + 1], slots[b], bool(has[b]))
                for b, n in enumerate(qlens)
                if n > 1
            ],
        )


class Mamba2Mixer(nn.Module):
    """The Mamba2 token mixer over a varlen batch; input and output ``[T, hidden]``.

    ``in_proj`` gives, per token, the gate ``z``, the conv input ``xBC`` and ``dt``. ``xBC`` goes
    through the causal conv (with SiLU) and splits into ``x``, ``B``, ``C``; the SSM runs over
    ``x`` with ``dt = softplus(dt + dt_bias)`` and ``A = -exp(A_log)``; its output is normed
    with the gate and projected back. ``state_index`` picks this layer's tensors in
    :class:`~core.model.cache.StatePool`.
    """

    def __init__(self, config: ModelConfig, state_index: int) -> None:
        super().__init__()
        m = config.mamba
        if m is None:
            raise ConfigError("a Mamba2 mixer needs config.mamba")
        self.m = m
        self.state_index = state_index
        inner = m.d_inner
        self.in_proj = Linear(config.hidden_size, inner + m.conv_dim + m.n_heads, bias=m.proj_bias)
        # nn.Conv1d only holds weight [conv_dim, 1, d_conv] and bias under the HF names; the
        # convolution itself runs in core.kernels.ssd with a carried state.
        self.conv1d = nn.Conv1d(
            m.conv_dim, m.conv_dim, m.d_conv, groups=m.conv_dim, bias=m.conv_bias
        )
        self.dt_bias = nn.Parameter(torch.ones(m.n_heads))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, m.n_heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(m.n_heads))
        self.norm = GatedRMSNorm(inner, inner // m.n_groups, config.rms_norm_eps)
        self.out_proj = Linear(inner, config.hidden_size, bias=m.proj_bias)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        m = self.m
        inner, gn = m.d_inner, m.n_groups * m.d_state
        pool = ctx.states()
        conv_pool, ssm_pool = pool.conv[self.state_index], pool.ssm[self.state_index]
        plan: _SSMSplit = ctx.batch.memo("ssm_split", lambda: _SSMSplit.of(ctx.batch))

        z, xbc, dt = self.in_proj(x).split([inner, m.conv_dim, m.n_heads], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float())
        lo, hi = m.time_step_limit
        if lo > 0.0 or hi < math.inf:
            dt = dt.clamp(min=lo, max=hi)
        A = -torch.exp(self.A_log.float())
        w = self.conv1d.weight[:, 0, :]
        b = self.conv1d.bias
        dense = ctx.batch.memo(DENSE_SHAPE, lambda: None)
        if dense is not None:  # a training batch: no per-sequence loop, no states to keep
            y = self._dense_scan(xbc, dt, A, w, b, dense)
            return self.out_proj(self.norm(y.view(x.shape[0], inner), z, out_dtype=x.dtype))
        y = torch.zeros(x.shape[0], m.n_heads, m.head_dim, dtype=torch.float32, device=x.device)

        for start, end, slot, has_state in plan.prefills:
            n = end - start
            conv_out, conv_state = causal_conv1d(
                xbc[start:end], w, b, conv_pool[slot] if has_state else None
            )
            conv_pool[slot] = conv_state.to(conv_pool.dtype)
            xs, B, C = conv_out.split([inner, gn, gn], dim=-1)
            ys, ssm_state = ssd_chunk_scan(
                xs.reshape(1, n, m.n_heads, m.head_dim),
                dt[None, start:end],
                A,
                B.reshape(1, n, m.n_groups, m.d_state),
                C.reshape(1, n, m.n_groups, m.d_state),
                m.chunk_size,
                D=self.D,
                initial_states=ssm_pool[slot][None] if has_state else None,
            )
            ssm_pool[slot] = ssm_state[0].to(ssm_pool.dtype)
            y[start:end] = ys[0]

        if plan.decode_rows.numel():
            rows, slots = plan.decode_rows, plan.decode_slots
            conv_state, ssm_state = conv_pool[slots], ssm_pool[slots]
            if not plan.decode_all_have_state:  # a fresh one-token prompt starts from zeros
                keep = plan.decode_has_state  # (where, not a multiply: stale slots may hold NaN)
                conv_state = torch.where(keep[:, None, None], conv_state, 0.0)
                ssm_state = torch.where(keep[:, None, None, None], ssm_state, 0.0)
            conv_out, conv_state = causal_conv1d_step(xbc[rows], conv_state, w, b)
            conv_pool.index_copy_(0, slots, conv_state.to(conv_pool.dtype))
            xs, B, C = conv_out.split([inner, gn, gn], dim=-1)
            bd = rows.numel()
            yd, ssm_state = ssd_state_step(
                ssm_state,
                xs.reshape(bd, m.n_heads, m.head_dim),
                dt[rows],
                A,
                B.reshape(bd, m.n_groups, m.d_state),
                C.reshape(bd, m.n_groups, m.d_state),
                D=self.D,
            )
            ssm_pool.index_copy_(0, slots, ssm_state.to(ssm_pool.dtype))
            y[rows] = yd

        y = self.norm(y.view(x.shape[0], inner), z, out_dtype=x.dtype)
        return self.out_proj(y)

    def _dense_scan(
        self,
        xbc: torch.Tensor,
        dt: torch.Tensor,
        A: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        shape: tuple[int, int],
    ) -> torch.Tensor:
        """Conv and SSM over ``B`` sequences of ``L`` tokens from zero state at once (what the
        prefill loop computes one sequence at a time); ``[B * L, heads, head_dim]`` fp32."""
        m, (nb, n) = self.m, shape
        gn = m.n_groups * m.d_state
        xc = xbc.view(nb, n, m.conv_dim).transpose(1, 2).to(w.dtype)
        conv = F.conv1d(F.pad(xc, (m.d_conv - 1, 0)), w[:, None, :], b, groups=m.conv_dim)
        conv = F.silu(conv).transpose(1, 2).to(xbc.dtype)
        xs, B, C = conv.split([m.d_inner, gn, gn], dim=-1)
        y, _ = ssd_chunk_scan(
            xs.reshape(nb, n, m.n_heads, m.head_dim),
            dt.view(nb, n, m.n_heads),
            A,
            B.reshape(nb, n, m.n_groups, m.d_state),
            C.reshape(nb, n, m.n_groups, m.d_state),
            m.chunk_size,
            D=self.D,
        )
        return y.reshape(nb * n, m.n_heads, m.head_dim)

    def hf_weights(self, prefix: str) -> HFWeights:
        names = [
            "in_proj.weight",
            "conv1d.weight",
            "dt_bias",
            "A_log",
            "D",
            "norm.weight",
            "out_proj.weight",
        ]
        if self.conv1d.bias is not None:
            names.append("conv1d.bias")
        if self.in_proj.bias is not None:
            names += ["in_proj.bias", "out_proj.bias"]
        return _same(prefix, *names)


class BambaDecoderLayer(nn.Module):
    """A Mamba2 mixer or attention, then an MLP; both pre-norm with residuals."""

    def __init__(
        self, config: ModelConfig, layer_id: int, cache_index: int, state_index: int
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.is_attention = config.layer_types[layer_id] == ATTENTION
        if self.is_attention:
            self.self_attn = Attention(config, layer_id, cache_index)
        else:
            self.mamba = Mamba2Mixer(config, state_index)
        self.pre_ff_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.feed_forward = GatedMLP(config.hidden_size, config.intermediate_size, config.mlp_bias)

    def forward(self, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        mixer = self.self_attn if self.is_attention else self.mamba
        h = h + mixer(self.input_layernorm(h), ctx)
        return h + self.feed_forward(self.pre_ff_layernorm(h))

    def hf_weights(self, prefix: str) -> HFWeights:
        mixer = "self_attn" if self.is_attention else "mamba"
        names = ("input_layernorm", mixer, "pre_ff_layernorm", "feed_forward")
        return nested_hf_weights(self, prefix, {n: n for n in names})


class BambaForCausalLM(CausalLM):
    """Bamba checkpoints (``model_type`` ``bamba``)."""

    hf_architectures = {"bamba": "BambaForCausalLM"}
    hf_final_norm = "final_layernorm"

    def build_layers(self, config: ModelConfig) -> list[nn.Module]:
        layers: list[nn.Module] = []
        n_attn = n_mamba = 0
        for i, kind in enumerate(config.layer_types):
            layers.append(BambaDecoderLayer(config, i, cache_index=n_attn, state_index=n_mamba))
            n_attn += kind == ATTENTION
            n_mamba += kind == MAMBA
        return layers
