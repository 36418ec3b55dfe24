"""The engine on several ranks: every rank runs the same engine loop (scheduler, KV blocks,
batches) over its shard of a tensor-parallel model; rank 0 samples and broadcasts the tokens.

``LLM(model, tensor_parallel_size=N)`` started on N ranks (``torchrun --nproc-per-node N``, or
inside a :class:`~core.dist.group.LocalGroup`) builds this; :func:`generate_parallel` starts the
N local ranks itself. Each rank's scheduler sees the same
requests in the same order and the same sampled tokens, so it makes the same decisions; every
step checks that (rank 0 broadcasts the step's schedule and every rank compares it with its own)
and stops with an error naming the first differing rank instead of running mismatched
collectives.
"""

from __future__ import annotations

from typing import Any

import torch

from core.engine.runner import ModelRunner
from core.sched.runner import StepResult
from core.sched.scheduler import SchedulerOutput

from .group import Comm, LocalGroup, init_distributed

__all__ = ["ParallelModelRunner", "ScheduleMismatchError", "generate_parallel", "join_for_engine"]


class ScheduleMismatchError(RuntimeError):
    """Two ranks' schedulers chose different steps (their collectives would not match)."""


def join_for_engine(tensor_parallel_size: int) -> Comm:
    """Join the process group of ``tensor_parallel_size`` ranks (torchrun's environment, or a
    :class:`~core.dist.group.LocalGroup`'s) and return this rank's :class:`Comm`; ValueError
    when the group has another size."""
    comm = init_distributed()
    if comm.world_size != tensor_parallel_size:
        raise ValueError(
            f"tensor_parallel_size={tensor_parallel_size} but this process group has "
            f"{comm.world_size} ranks (WORLD_SIZE): start one process per rank, e.g. "
            f"torchrun --nproc-per-node {tensor_parallel_size} script.py"
        )
    return comm


def _schedule_key(out: SchedulerOutput) -> list[tuple[str, int, int, bool]]:
    return [(c.request.request_id, c.start, c.num_tokens, c.sample) for c in out.chunks]


class ParallelModelRunner(ModelRunner):
    """A :class:`ModelRunner` on one rank of a tensor-parallel model: the forward runs the
    rank's shard (its collectives sum the shards); rank 0 samples, the others receive its
    tokens (and logprobs). Raises :class:`ScheduleMismatchError` when this rank's step differs
    from rank 0's."""

    def __init__(self, *args: Any, comm: Comm, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.comm = comm

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> StepResult:
        mine = _schedule_key(out)
        theirs = self.comm.broadcast_object(mine)
        if theirs != mine:
            raise ScheduleMismatchError(
                f"rank {self.comm.rank} scheduled {mine[:4]}... but rank 0 scheduled "
                f"{theirs[:4]}...: the ranks' schedulers diverged (a time-dependent policy?)"
            )
        return super().execute(out)

    def sample_into(self, result: StepResult, reqs: list[Any], logits: torch.Tensor) -> None:
        if self.comm.rank == 0:
            super().sample_into(result, reqs, logits)
        sampled, logprobs = self.comm.broadcast_object((result.sampled, result.logprobs))
        result.sampled.update(sampled)
        result.logprobs.update(logprobs)


def _generate_on_rank(
    comm: Comm, model: Any, prompts: Any, params: Any, llm_kwargs: dict[str, Any]
) -> Any:
    from core.engine.llm import LLM

    llm = LLM(model, tensor_parallel_size=comm.world_size, **llm_kwargs)
    return llm.generate(prompts, params, use_tqdm=False)


def generate_parallel(
    model: Any,
    prompts: Any,
    params: Any = None,
    *,
    tensor_parallel_size: int = 2,
    timeout_s: float | None = None,
    **llm_kwargs: Any,
) -> list[Any]:
    """``LLM(model, tensor_parallel_size=N, **llm_kwargs).generate(prompts, params)`` on N gloo
    processes of this machine (a :class:`LocalGroup` started for the call); rank 0's outputs.
    ``model`` must load the same on every rank: a checkpoint folder, or a config (the random
    weights come from ``seed``, the same on every rank)."""
    with LocalGroup(tensor_parallel_size, timeout_s=timeout_s) as group:
        outputs: list[Any] = group.run(_generate_on_rank, model, prompts, params, llm_kwargs)[0]
    return outputs
