"""Expert parallelism for Mixtral's sparse MoE layers: whole experts placed on ranks, tokens sent
to their experts and back with all-to-all.

Rank ``r`` of ``world`` holds experts ``[r * E / world, (r + 1) * E / world)``; the router is
replicated. A layer's forward, on each rank's own tokens:

1. route: softmax over the router logits, top-k, renormalize (as :class:`SparseMoE`);
2. dispatch: the (token, expert) pairs sorted by expert, so by owning rank, go out in one
   ``all_to_all`` of rows, after one ``all_to_all`` of the per-expert counts;
3. the rank runs each of its experts on the rows it received;
4. combine: the outputs go back by the reverse ``all_to_all`` and each token adds up its
   ``top_k`` outputs with its routing weights.

``tokens="local"``: each rank brings its own tokens (data-parallel attention, any number of
rows, zero included): every rank must enter every MoE layer the same number of times, so a
rank without work calls :func:`idle_moe_step`. ``tokens="replicated"``: every rank sees the same
tokens (a tensor-parallel model): each dispatches its contiguous ``1/world`` of them and the
results are all-gathered, so every rank returns all rows.

Results equal :class:`SparseMoE`'s up to the order of fp32 sums.
"""

from __future__ import annotations

import torch
from torch import nn

from core.model.base import CausalLM
from core.model.errors import ConfigError
from core.model.mixtral import MixtralDecoderLayer, SparseMoE

from .group import Comm

__all__ = ["ExpertParallelMoE", "expert_parallel", "idle_moe_step", "route"]


def route(gate: nn.Module, x: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights [T, top_k] fp32, experts [T, top_k] long)`` as Mixtral's router picks them."""
    probs = torch.softmax(gate(x).float(), dim=-1)
    weights, chosen = torch.topk(probs, top_k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), chosen


class ExpertParallelMoE(nn.Module):
    """The experts of one :class:`SparseMoE` that live on this rank, and the all-to-all that
    brings them their tokens (see the module doc). Input and output ``[T, hidden]``."""

    def __init__(self, moe: SparseMoE, comm: Comm, tokens: str = "local") -> None:
        super().__init__()
        if tokens not in ("local", "replicated"):
            raise ValueError(f"tokens must be 'local' or 'replicated', got {tokens!r}")
        num_experts = len(moe.experts)
        if num_experts % comm.world_size:
            raise ConfigError(
                f"num_local_experts={num_experts} is not divisible by the expert-parallel size "
                f"{comm.world_size}"
            )
        self.comm = comm
        self.tokens = tokens
        self.top_k = moe.top_k
        self.num_experts = num_experts
        self.per_rank = num_experts // comm.world_size
        self.first = comm.rank * self.per_rank
        self.gate = moe.gate
        self.experts = nn.ModuleList(moe.experts[self.first : self.first + self.per_rank])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens == "local":
            return self._dispatch_combine(x)
        world, rank, n = self.comm.world_size, self.comm.rank, x.shape[0]
        bounds = [r * n // world for r in range(world + 1)]
        mine = self._dispatch_combine(x[bounds[rank] : bounds[rank + 1]])
        sizes = [bounds[r + 1] - bounds[r] for r in range(world)]
        return self.comm.all_gather_uneven(mine, sizes)

    def _dispatch_combine(self, x: torch.Tensor) -> torch.Tensor:
        comm, k = self.comm, self.top_k
        weights, chosen = route(self.gate, x, k)
        flat_expert = chosen.reshape(-1)
        order = torch.argsort(flat_expert, stable=True)  # by expert, so by owning rank
        token_of = order // k  # the token of each sorted (token, expert) pair
        per_expert = torch.bincount(flat_expert, minlength=self.num_experts)
        # counts[s * per_rank + j]: rows source rank s sends to this rank's j-th expert
        counts = comm.exchange_counts(per_expert)
        send = per_expert.view(comm.world_size, self.per_rank).sum(dim=1).tolist()
        recv_matrix = counts.view(comm.world_size, self.per_rank)
        recv = recv_matrix.sum(dim=1).tolist()
        rows = comm.all_to_all(x[token_of], send, recv)
        local_expert = torch.repeat_interleave(
            torch.arange(self.per_rank, device=x.device).repeat(comm.world_size),
            recv_matrix.reshape(-1),
        )
        out = torch.empty_like(rows)
        for j in local_expert.unique().tolist():
            idx = torch.nonzero(local_expert == j).squeeze(1)
            out[idx] = self.experts[j](rows[idx])
        back = comm.all_to_all(out, recv, send)
        y = back * weights.reshape(-1)[order, None]
        combined = torch.zeros_like(x)
        return combined.index_add_(0, token_of, y.to(x.dtype))

    def extra_repr(self) -> str:
        return (
            f"experts {self.first}..{self.first + self.per_rank - 1} of {self.num_experts}, "
            f"tokens={self.tokens}"
        )


def expert_parallel(model: CausalLM, comm: Comm, *, tokens: str = "local") -> CausalLM:
    """Replace every Mixtral MoE layer of ``model`` with this rank's :class:`ExpertParallelMoE`
    (in place; the other ranks' experts are dropped) and return it. A world of one changes
    nothing."""
    if comm.world_size == 1:
        return model
    found = False
    for layer in model.layers:
        if isinstance(layer, MixtralDecoderLayer):
            moe = layer.moe
            if isinstance(moe, SparseMoE):
                setattr(layer, "moe", ExpertParallelMoE(moe, comm, tokens))  # noqa: B010
                found = True
    if not found:
        raise ConfigError(f"{type(model).__name__} has no Mixtral MoE layer to shard by experts")
    model.set_linear_backend(model.linear_backend)
    return model


def idle_moe_step(model: CausalLM) -> None:
    """Take part in one forward's expert all-to-alls with no tokens: what a data-parallel rank
    without work this step calls so that the others' forward does not wait for it."""
    hidden = torch.empty(0, model.config.hidden_size, dtype=model.dtype, device=model.device)
    for layer in model.layers:
        moe = getattr(layer, "moe", None)
        if isinstance(moe, ExpertParallelMoE):
            moe(hidden)
