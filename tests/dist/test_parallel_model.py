"""Tensor and expert parallelism on 2 gloo ranks give the single-process model's logits (to fp32
rounding) and greedy tokens, through prefill and decode steps over the paged KV cache."""

import copy

import pytest
import torch

from core.dist import Comm
from core.dist.ep import ExpertParallelMoE, expert_parallel, idle_moe_step
from core.dist.tp import tensor_parallel
from core.model import load_model
from core.model.errors import ConfigError
from core.model.spec import preset_config
from tests.model.paged import PagedRunner

TOL = 1e-4  # fp32 logits of a random tiny model are O(1); sums reordered across ranks


def _dense(model_type, kv_heads, **extra):
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
    return {
        "model_type": model_type,
        "architectures": [arch[model_type]],
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": kv_heads,
        "head_dim": 16,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        **extra,
    }


CONFIGS = {
    "llama": _dense("llama", 2),
    # one KV head, replicated on both ranks; q/k/v biases (Qwen2)
    "qwen2-kv1": _dense("qwen2", 1),
    # per-head q/k norms and an o_proj bias (Qwen3 with attention_bias)
    "qwen3-bias": _dense("qwen3", 2, attention_bias=True),
    "mixtral": preset_config("tiny-mixtral"),
}


def _prompts(seed, n, vocab=256):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (5 + 4 * i,), generator=g).tolist() for i in range(n)]


def _greedy(runner, prompts, steps, follow=None):
    """Prefill ``prompts`` and decode ``steps`` tokens greedily; returns (logits of each step
    [seqs, vocab], tokens). With ``follow`` (another run's tokens) feed those instead, so the
    logits compare position by position."""
    work = {i: p for i, p in enumerate(prompts)}
    logits, tokens = [], []
    for s in range(steps + 1):
        out = runner.step(work)
        last = torch.stack([out[i][-1] for i in work])
        logits.append(last)
        nxt = last.argmax(dim=-1).tolist()
        tokens.append(nxt)
        feed = follow[s] if follow is not None else nxt
        work = {i: [feed[i]] for i in work}
    return torch.stack(logits), tokens


def _against_single_process(comm: Comm, name: str, mode: str, steps: int) -> dict:
    torch.manual_seed(0)
    ref, _ = load_model(CONFIGS[name], seed=0)
    model = copy.deepcopy(ref)
    if mode == "ep-local":
        expert_parallel(model, comm, tokens="local")
        prompts = _prompts(10 + comm.rank, 3 - comm.rank)  # different batches, 3 and 2 seqs
    else:
        tensor_parallel(model, comm, moe="ep" if mode == "tp-ep" else "tp")
        prompts = _prompts(10, 3)
    ref_logits, ref_tokens = _greedy(PagedRunner(ref), prompts, steps)
    par_logits, par_tokens = _greedy(PagedRunner(model), prompts, steps, follow=ref_tokens)
    _, free_tokens = _greedy(PagedRunner(model), prompts, steps)
    return {
        "max_diff": float((par_logits - ref_logits).abs().max()),
        "tokens_equal": free_tokens == ref_tokens,
        "kv_heads": model.config.num_kv_heads,
        "params": sum(p.numel() for p in model.parameters()),
        "ref_params": sum(p.numel() for p in ref.parameters()),
    }


CASES = [
    ("llama", "tp"),
    ("qwen2-kv1", "tp"),
    ("qwen3-bias", "tp"),
    ("mixtral", "tp"),
    ("mixtral", "tp-ep"),
    ("mixtral", "ep-local"),
]


@pytest.mark.parametrize("name,mode", CASES)
def test_parallel_equals_single_process(two_ranks, name, mode):
    results = two_ranks.run(_against_single_process, name, mode, 4)
    for rank, r in enumerate(results):
        assert r["max_diff"] < TOL, (rank, r)
        assert r["tokens_equal"], (rank, r)
        assert r["params"] < r["ref_params"]  # each rank really holds a shard
    if mode == "tp":  # 2 KV heads split, or 1 replicated: one KV head per rank either way
        assert [r["kv_heads"] for r in results] == [1, 1]


def _ep_with_an_idle_rank(comm: Comm) -> float:
    ref, _ = load_model(CONFIGS["mixtral"], seed=0)
    model = expert_parallel(copy.deepcopy(ref), comm, tokens="local")
    if comm.rank == 1:  # no work this step: only join the expert all-to-alls
        idle_moe_step(model)
        return 0.0
    prompts = _prompts(3, 2)
    ref_logits, _ = _greedy(PagedRunner(ref), prompts, 0)
    par_logits, _ = _greedy(PagedRunner(model), prompts, 0)
    return float((par_logits - ref_logits).abs().max())


def test_ep_rank_without_tokens_takes_part_with_idle_step(two_ranks):
    diff, _ = two_ranks.run(_ep_with_an_idle_rank)
    assert diff < TOL


def test_one_rank_world_and_bad_sizes():
    model, _ = load_model(CONFIGS["mixtral"], seed=0)
    assert tensor_parallel(model, Comm()) is model  # world of one: unchanged
    three = Comm(rank=0, world_size=3)
    with pytest.raises(ConfigError, match="num_attention_heads=4 is not divisible by .* 3"):
        tensor_parallel(copy.deepcopy(model), three)
    with pytest.raises(ConfigError, match="num_local_experts=4 is not divisible by .* 3"):
        ExpertParallelMoE(model.layers[0].moe, three)
    dense, _ = load_model(CONFIGS["llama"], seed=0)
    with pytest.raises(ConfigError, match="no Mixtral MoE layer"):
        expert_parallel(dense, Comm(rank=0, world_size=2))
