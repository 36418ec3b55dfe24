"""``LLM(..., tensor_parallel_size=2)`` on 2 gloo ranks: every rank runs the engine loop over its
shard, rank 0 samples, and the greedy tokens equal the single-process engine's."""

import pytest
import torch

from core.dist import Comm
from core.engine import LLM, SamplingParams
from tests.dist.test_parallel_model import CONFIGS

PROMPTS = [[1, 7, 42, 9, 3], [5] * 11, list(range(20, 50)), [3, 1, 4, 1, 5, 9, 2, 6]]


def _generate(comm: Comm, name: str, tp: int, ep: bool) -> list[list[int]]:
    llm = LLM(
        CONFIGS[name],
        seed=0,
        block_size=4,
        num_kv_blocks=64,
        max_num_seqs=3,  # 4 prompts: a later one joins a running batch
        linear_backend="torch",
        tensor_parallel_size=tp,
        enable_expert_parallel=ep,
    )
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    return [o.token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]


def _single_and_parallel(comm: Comm, name: str, ep: bool) -> tuple:
    torch.manual_seed(0)
    return _generate(comm, name, 1, False), _generate(comm, name, 2, ep)


@pytest.mark.slow
@pytest.mark.parametrize("name,ep", [("llama", False), ("mixtral", False), ("mixtral", True)])
def test_tensor_parallel_engine_is_greedy_equal(two_ranks, name, ep):
    (single0, par0), (single1, par1) = two_ranks.run(_single_and_parallel, name, ep)
    assert par0 == single0 and par1 == single0 == single1
    assert all(len(t) == 12 for t in par0)


def _wrong_size(comm: Comm) -> str:
    try:
        LLM(CONFIGS["llama"], tensor_parallel_size=4, linear_backend="torch")
    except ValueError as e:
        return str(e)
    return "no error"


def test_a_size_other_than_the_group_is_one_clear_error(two_ranks):
    msg, _ = two_ranks.run(_wrong_size)
    assert "tensor_parallel_size=4 but this process group has 2 ranks" in msg
