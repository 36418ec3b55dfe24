"""Tensor parallelism for the Llama family and Mixtral: shard a loaded model's weights over the
ranks of a :class:`~core.dist.group.Comm`, Megatron-style.

- Attention: ``qkv_proj`` is column-parallel (rank ``r`` keeps its query heads and their
  key/value heads; with fewer KV heads than ranks each KV head is replicated on
  ``world / num_kv_heads`` ranks), the attention runs on the local heads and their local paged
  KV cache, and ``o_proj`` is row-parallel: a partial product, summed by one all-reduce.
- Dense MLP: ``gate_up_proj`` column-parallel over the intermediate dimension, ``down_proj``
  row-parallel with one all-reduce.
- MoE (Mixtral): every expert is sharded the same way over its intermediate dimension; the
  router stays whole, and one all-reduce sums the layer's output (all experts at once).
- Embedding, norms and LM head are replicated.

Every rank sees the same tokens and gets the same hidden states and logits as the unsharded
model, up to the order of fp32 sums. The model's ``config`` becomes the rank's shard
(``num_heads``, ``num_kv_heads``, intermediate sizes), so ``allocate_kv_cache`` and
``kv_cache_bytes_per_block`` give the local cache.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from core.kernels.linear import Linear, linear
from core.model.base import CausalLM
from core.model.config import ModelConfig
from core.model.errors import ConfigError
from core.model.layers import Attention, GatedMLP
from core.model.llama import LlamaDecoderLayer
from core.model.mixtral import MixtralDecoderLayer, SparseMoE

from .group import Comm

__all__ = [
    "AllReduceOutput",
    "RowParallelLinear",
    "column_shard",
    "shard_attention",
    "shard_mlp",
    "tensor_parallel",
    "tp_config",
]


class RowParallelLinear(Linear):
    """A linear layer holding columns ``[in_start, in_stop)`` of the full weight: its partial
    products are summed over the ranks by one all-reduce, then the bias is added (once)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, comm: Comm) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.comm = comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.comm.all_reduce(linear(x, self.weight, None, self.packed))
        return y if self.bias is None else y + self.bias


class AllReduceOutput(nn.Module):
    """``module``'s output summed over the ranks (the MoE layer of a tensor-parallel model:
    each rank's experts hold a slice of the intermediate dimension)."""

    def __init__(self, module: nn.Module, comm: Comm) -> None:
        super().__init__()
        self.module = module
        self.comm = comm

    def forward(self, *args: object) -> torch.Tensor:
        out: torch.Tensor = self.module(*args)
        return self.comm.all_reduce(out)


def _split(total: int, world: int, rank: int, what: str) -> tuple[int, int]:
    if total % world:
        raise ConfigError(f"{what}={total} is not divisible by the tensor-parallel size {world}")
    per = total // world
    return rank * per, (rank + 1) * per


def column_shard(layer: Linear, rows: list[tuple[int, int]]) -> Linear:
    """A new :class:`Linear` with the output rows ``[start, stop)`` of ``layer`` for each range,
    concatenated (a column-parallel shard of a fused projection)."""
    weight = torch.cat([layer.weight[a:b] for a, b in rows])
    out = Linear(layer.in_features, weight.shape[0], bias=layer.bias is not None)
    out.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if layer.bias is not None and out.bias is not None:
            out.bias.copy_(torch.cat([layer.bias[a:b] for a, b in rows]))
    return out.requires_grad_(False)


def _row_shard(layer: Linear, start: int, stop: int, comm: Comm) -> RowParallelLinear:
    """Input columns ``[start, stop)`` of ``layer``, row-parallel; the bias on rank 0 only
    would also work, but adding it after the sum keeps every rank's output identical."""
    w = layer.weight
    out = RowParallelLinear(stop - start, layer.out_features, layer.bias is not None, comm)
    out.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w[:, start:stop])
        if layer.bias is not None and out.bias is not None:
            out.bias.copy_(layer.bias)
    return out.requires_grad_(False)


def _kv_heads(num_heads: int, num_kv: int, world: int, rank: int) -> tuple[int, int]:
    """``(first, count)`` of the KV heads rank ``rank`` needs for its query heads."""
    if num_kv % world == 0:
        return _split(num_kv, world, rank, "num_key_value_heads")[0], num_kv // world
    if world % num_kv == 0:  # replicate: world/num_kv ranks share each KV head
        return rank // (world // num_kv), 1
    raise ConfigError(
        f"num_key_value_heads={num_kv} and the tensor-parallel size {world} do not divide "
        "one another"
    )


def shard_attention(attn: Attention, comm: Comm) -> None:
    """Keep this rank's query heads and their KV heads (in place)."""
    world, rank = comm.world_size, comm.rank
    d = attn.head_dim
    q0, q1 = _split(attn.num_heads, world, rank, "num_attention_heads")
    kv0, nkv = _kv_heads(attn.num_heads, attn.num_kv_heads, world, rank)
    q_size, kv_size = attn.q_size, attn.kv_size
    k_at, v_at = q_size, q_size + kv_size
    attn.qkv_proj = column_shard(
        attn.qkv_proj,
        [
            (q0 * d, q1 * d),
            (k_at + kv0 * d, k_at + (kv0 + nkv) * d),
            (v_at + kv0 * d, v_at + (kv0 + nkv) * d),
        ],
    )
    attn.o_proj = _row_shard(attn.o_proj, q0 * d, q1 * d, comm)
    attn.num_heads, attn.num_kv_heads = q1 - q0, nkv
    attn.q_size, attn.kv_size = (q1 - q0) * d, nkv * d


def shard_mlp(mlp: GatedMLP, comm: Comm, *, reduce: bool = True) -> None:
    """Keep this rank's slice of the intermediate dimension (in place); ``reduce=False``
    leaves ``down_proj`` a plain partial product (the caller sums, as the MoE does)."""
    n = mlp.intermediate_size
    a, b = _split(n, comm.world_size, comm.rank, "intermediate_size")
    mlp.gate_up_proj = column_shard(mlp.gate_up_proj, [(a, b), (n + a, n + b)])
    down = mlp.down_proj
    if reduce:
        mlp.down_proj = _row_shard(down, a, b, comm)
    else:
        plain = Linear(b - a, down.out_features, bias=False).to(
            down.weight.device, down.weight.dtype
        )
        if down.bias is not None:
            raise ConfigError("a tensor-parallel MoE expert cannot have a down_proj bias")
        with torch.no_grad():
            plain.weight.copy_(down.weight[:, a:b])
        mlp.down_proj = plain.requires_grad_(False)
    mlp.intermediate_size = b - a


def tp_config(config: ModelConfig, world: int) -> ModelConfig:
    """The config of one rank's shard (heads, KV heads and intermediate sizes per rank)."""
    kv = config.num_kv_heads // world if config.num_kv_heads % world == 0 else 1
    moe = config.moe
    if moe is not None:
        moe = replace(moe, intermediate_size=moe.intermediate_size // world)
    return replace(
        config,
        num_heads=config.num_heads // world,
        num_kv_heads=kv,
        intermediate_size=config.intermediate_size // world,
        moe=moe,
    )


def tensor_parallel(model: CausalLM, comm: Comm, *, moe: str = "tp") -> CausalLM:
    """Shard ``model`` (weights loaded, on this rank's device) for rank ``comm.rank`` of
    ``comm.world_size``, in place, and return it. ``moe``: ``"tp"`` shards every expert over
    the intermediate dimension; ``"ep"`` places whole experts on ranks instead
    (:func:`core.dist.ep.expert_parallel` with replicated tokens). A world of one changes
    nothing. ConfigError for a model or a size that cannot be sharded."""
    if moe not in ("tp", "ep"):
        raise ValueError(f"moe must be 'tp' or 'ep', got {moe!r}")
    if comm.world_size == 1:
        return model
    config = model.config
    for i, layer in enumerate(model.layers):
        if not isinstance(layer, (LlamaDecoderLayer, MixtralDecoderLayer)):
            raise ConfigError(
                f"tensor parallelism covers the Llama family and Mixtral; layer {i} is a "
                f"{type(layer).__name__}"
            )
        attn = layer.self_attn
        assert isinstance(attn, Attention)
        shard_attention(attn, comm)
        if isinstance(layer, LlamaDecoderLayer):
            assert isinstance(layer.mlp, GatedMLP)
            shard_mlp(layer.mlp, comm)
        elif moe == "tp":
            sparse = layer.moe
            assert isinstance(sparse, SparseMoE)
            for expert in sparse.experts:
                assert isinstance(expert, GatedMLP)
                shard_mlp(expert, comm, reduce=False)
            setattr(layer, "moe", AllReduceOutput(sparse, comm))  # noqa: B010 (typed SparseMoE)
    if moe == "ep" and config.moe is not None:
        from .ep import expert_parallel

        expert_parallel(model, comm, tokens="replicated")
    model.config = tp_config(config, comm.world_size)
    if config.moe is not None and moe == "ep":
        model.config = replace(model.config, moe=config.moe)
    model.set_linear_backend(model.linear_backend)  # pack the new shards
    return model
