"""Training forward for our model modules: dense ``[B, L]`` batches, no paged cache, autograd on.

The engine's forward runs varlen batches over paged caches; training wants the same layers on a
padded ``[B, L]`` batch with gradients. :func:`dense_forward` drives the very modules the engine
runs (so a trained model is served by the code it was trained with) through a small attention
backend that keeps each layer's K/V in hand instead of writing a cache, and a fresh state pool
for Mamba layers. Right padding is harmless: attention is causal and the Mamba scan runs left to
right, so padded positions never reach real ones; the loss masks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from core.kernels.attention import AttentionBackend

from .base import CausalLM
from .batch import DENSE_SHAPE, ForwardBatch, ForwardContext
from .cache import KVCache

__all__ = ["DenseCausalAttention", "dense_forward", "dense_logits", "train_mode"]


@dataclass
class _DenseMetadata:
    batch: int
    length: int
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


class DenseCausalAttention(AttentionBackend):
    """Causal attention over a ``[B, L]`` batch held in memory (training only).

    ``write_kv`` keeps this layer's K/V on the metadata and ``forward`` attends over them at
    once, so each layer sees only its own K/V (layers run one after another). Not registered
    as an engine backend: it has no cache.
    """

    name = "dense-train"

    def __init__(self, batch: int, length: int) -> None:
        self.shape = (batch, length)

    def build_metadata(
        self,
        query_start_loc: torch.Tensor,
        seq_lens: torch.Tensor,
        block_tables: torch.Tensor,
        slot_mapping: torch.Tensor,
        block_size: int,
        *,
        query_lens_host: Sequence[int] | None = None,
        seq_lens_host: Sequence[int] | None = None,
    ) -> _DenseMetadata:
        return _DenseMetadata(*self.shape)

    def write_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: Any,
    ) -> None:
        metadata.k, metadata.v = k, v

    def forward(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: Any,
        *,
        scale: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        b, n = metadata.batch, metadata.length
        heads, dim = q.shape[1], q.shape[2]

        def split(t: torch.Tensor) -> torch.Tensor:  # [B*L, H, D] -> [B, H, L, D]
            return t.view(b, n, t.shape[1], dim).transpose(1, 2)

        q4, k4, v4 = split(q), split(metadata.k), split(metadata.v)
        mask = None
        if sliding_window is not None:
            i = torch.arange(n, device=q.device)
            dist = i[:, None] - i[None, :]
            mask = (dist >= 0) & (dist < sliding_window)
        out = F.scaled_dot_product_attention(
            q4,
            k4,
            v4,
            scale=scale,
            is_causal=mask is None,
            attn_mask=mask,
            enable_gqa=heads != k4.shape[1],
        )
        metadata.k = metadata.v = None
        return out.transpose(1, 2).reshape(b * n, heads, dim)


def dense_forward(model: CausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    """Final-normed hidden states ``[B, L, hidden]`` of ``input_ids`` ``[B, L]`` (positions
    ``0..L-1`` in every row), differentiable. The model must use the ``torch`` linear backend
    (packed oneDNN weights have no backward)."""
    if model.linear_backend != "torch":
        raise ValueError(
            f"dense_forward needs the torch linear backend, model uses {model.linear_backend!r}"
        )
    b, n = input_ids.shape
    device = input_ids.device
    flat = input_ids.reshape(-1)
    positions = torch.arange(n, device=device).repeat(b)
    starts = torch.arange(0, (b + 1) * n, n, device=device, dtype=torch.int32)
    batch = ForwardBatch(
        input_ids=flat,
        positions=positions,
        query_start_loc=starts,
        seq_lens=torch.full((b,), n, dtype=torch.int32, device=device),
        block_tables=torch.zeros((b, 0), dtype=torch.int32, device=device),
        slot_mapping=torch.full((b * n,), -1, dtype=torch.long, device=device),
        state_indices=torch.arange(b, dtype=torch.int32, device=device),
        has_initial_state=torch.zeros(b, dtype=torch.bool, device=device),
        query_lens_host=[n] * b,
        seq_lens_host=[n] * b,
    )
    # layers index their cache tensors; empty ones do (DenseCausalAttention never reads them)
    c = model.config
    empty = torch.empty(0, 1, c.num_kv_heads, c.head_dim, device=device)
    kv = KVCache(k=[empty] * len(c.attention_layers), v=[empty] * len(c.attention_layers))
    # Mamba layers see DENSE_SHAPE and scan the whole block; the pool only satisfies the API
    pool = model.allocate_state_pool(1, device=device) if model.config.mamba_layers else None
    batch.memo(DENSE_SHAPE, lambda: (b, n))
    backend = DenseCausalAttention(b, n)
    ctx = ForwardContext(batch, kv, pool, backend, rope=model.rotary_emb(positions))
    hidden = model.embed_tokens(flat)
    for layer in model.layers:
        hidden = layer(hidden, ctx)
    return model.norm(hidden).view(b, n, -1)


def dense_logits(model: CausalLM, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits of ``hidden`` (any leading shape), differentiable, in the model's dtype."""
    weight = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    return F.linear(hidden, weight)


def train_mode(model: CausalLM) -> CausalLM:
    """Put a model built for inference (``load_model`` / ``build_random_model``: eval, frozen)
    in training mode: parameters require grad, linears on the torch backend."""
    if model.linear_backend != "torch":
        model.set_linear_backend("torch")
    return model.requires_grad_(True).train()
