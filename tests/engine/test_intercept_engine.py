"""Interception policies in the real engine: every policy continues a paused request with the
same greedy tokens as an uninterrupted run, and a swap round trip keeps its KV bit for bit."""

from __future__ import annotations

import pytest
import torch

from artifacts.infercept.policy import MinWastePolicy  # importing it registers "infercept"
from core.engine import LLM, SamplingParams
from core.sched import PauseMode, RequestStatus, make_intercept_policy
from core.workload import Interception

from .conftest import prompts
from .test_pause import RETURNED, reference

BS = 4
POLICIES = {
    "preserve": lambda: make_intercept_policy("preserve"),
    "vllm": lambda: make_intercept_policy("vllm"),
    "improved-discard": lambda: make_intercept_policy("improved-discard"),
    "swap": lambda: make_intercept_policy("swap"),
    "infercept": lambda: make_intercept_policy("infercept"),  # swaps the paused request out
    # no swap budget: memory pressure discards it; recompute in chunks of at most 4 tokens
    "infercept-discard": lambda: MinWastePolicy(saturation=4, swap_out_budget_tokens=1),
}


def greedy(n):
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def run_pair(path, policy, arch="llama", on_step=None):
    """``p`` pauses for a 30 s call after 3 tokens (13 tokens of KV, 4 blocks) while ``r``
    decodes 40 tokens; 14 blocks cannot hold both, so ``r`` runs out of KV while ``p`` waits.
    A fake clock advances 0.25 s per step."""
    kw = {"num_host_blocks": 16, "prefix_cache": "block"} if arch == "llama" else {}
    llm = LLM(
        path, num_kv_blocks=14, block_size=BS, enable_prefix_caching=False, intercept=policy, **kw
    )
    eng = llm.engine
    assert eng.scheduler.intercept is policy
    now = [0.0]
    eng.clock = lambda: now[0]
    p_prompt, r_prompt = prompts([11, 8], seed=9)
    icp = Interception(
        after_output_tokens=3,
        duration_s=30.0,
        returned_tokens=len(RETURNED),
        returned_token_ids=tuple(RETURNED),
    )
    p = eng.add_request("p", p_prompt, greedy(8), interceptions=[icp])
    r = eng.add_request("r", r_prompt, greedy(40))
    schedule, llm.recompute_chunks = eng.scheduler.schedule, []

    def spy(t):  # tokens of recomputing requests' chunks, per step with recomputation
        out = schedule(t)
        n = sum(c.num_tokens for c in out.chunks if c.start < c.request.max_computed_tokens)
        if n:
            llm.recompute_chunks.append(n)
        return out

    eng.scheduler.schedule = spy
    while eng.has_unfinished_requests():
        if on_step is not None:
            on_step(eng, p)
        eng.step()
        now[0] += 0.25
        assert now[0] < 200, "no progress"
    return llm, p, r, p_prompt, r_prompt


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_resumes_with_the_uninterrupted_tokens(name, checkpoint):
    _, path = checkpoint("llama")
    modes = set()
    llm, p, r, p_prompt, r_prompt = run_pair(
        path, POLICIES[name](), on_step=lambda eng, p: modes.add(p.pause_mode)
    )
    assert p.output_token_ids == reference(path, p_prompt, 3, 8)
    plain = LLM(path, num_kv_blocks=128, enable_prefix_caching=False)
    assert r.output_token_ids == plain.generate([r_prompt], greedy(40), use_tqdm=False)[0].token_ids
    assert p.status == r.status == RequestStatus.FINISHED_LENGTH and p.timeline.num_pauses == 1
    expect = {
        "preserve": {PauseMode.PRESERVE},
        "vllm": {PauseMode.DISCARD},
        "improved-discard": {PauseMode.DISCARD},
        "swap": {PauseMode.SWAP},
        "infercept": {PauseMode.PRESERVE, PauseMode.SWAP},
        "infercept-discard": {PauseMode.PRESERVE, PauseMode.DISCARD},
    }[name]
    assert modes - {None} == expect
    if PauseMode.DISCARD in expect:
        assert p.timeline.recomputed_tokens >= 13  # everything before the pause, again
    else:
        assert p.timeline.recomputed_tokens == 0
    if name == "infercept-discard":  # 13 tokens to recompute, at most 4 a step
        assert len(llm.recompute_chunks) >= 4 and max(llm.recompute_chunks) <= 4
    if name.startswith("infercept"):
        assert r.timeline.num_preemptions == 0  # the paused request made room, not r
    kv = llm.engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks
    kv.manager.check_integrity()


@pytest.mark.parametrize("name", ["vllm", "infercept-discard"])
def test_hybrid_models_recompute_discarded_requests_exactly(name, checkpoint):
    _, path = checkpoint("bamba")  # radix backend: no host pool, so no swapping
    modes = set()
    _, p, r, p_prompt, _ = run_pair(
        path, POLICIES[name](), arch="bamba", on_step=lambda eng, p: modes.add(p.pause_mode)
    )
    assert p.output_token_ids == reference(path, p_prompt, 3, 8)
    assert PauseMode.DISCARD in modes and p.timeline.recomputed_tokens >= 13


def kv_of(eng, req, n):
    """K and V of the request's first ``n`` positions, every layer (copies)."""
    slots = torch.tensor(eng.scheduler.kv.slot_mapping(req, 0, n))
    cache = eng.runner.kv_cache
    return [t.flatten(0, 1)[slots].clone() for t in (*cache.k, *cache.v)]


def test_a_swap_round_trip_keeps_the_kv_bit_exact(checkpoint):
    _, path = checkpoint("llama")
    seen = {"before": None, "after": None, "tables": []}

    def watch(eng, p):
        if p.status == RequestStatus.PAUSED and p.pause_mode == PauseMode.PRESERVE:
            seen["before"] = kv_of(eng, p, p.num_computed_tokens)  # last look before swap-out
            seen["tables"].append(eng.scheduler.kv.block_table(p))
        elif p.status == RequestStatus.RUNNING and seen["before"] and seen["after"] is None:
            # swapped back in by the previous step, whose forward wrote only later positions
            n = len(seen["before"][0])
            seen["after"] = kv_of(eng, p, n)
            seen["tables"].append(eng.scheduler.kv.block_table(p)[: len(seen["tables"][0])])

    run_pair(path, MinWastePolicy(), on_step=watch)
    before, after = seen["before"], seen["after"]
    assert before is not None and after is not None
    assert seen["tables"][0] != seen["tables"][-1]  # it came back into other blocks
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("first", ["in-then-out", "out-then-in"])
def test_swaps_of_one_step_apply_in_order(first):
    """A swap-in releases its host blocks (a swap-out its device blocks) at once, so a later
    move of the same step may reuse them; the runner must copy in the order the moves were
    made, or the request swapped in receives the other request's KV."""
    from core.sched.request import EngineRequest
    from core.sim import SimSampling

    tiny = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }
    # in-then-out: b's swap-out needs the host blocks a's swap-in frees; out-then-in: a's
    # swap-in needs the device blocks b's swap-out frees
    blocks = (4, 2) if first == "in-then-out" else (2, 4)
    llm = LLM(
        tiny,
        num_kv_blocks=blocks[0],
        num_host_blocks=blocks[1],
        block_size=16,
        enable_prefix_caching=False,
    )
    kv, runner = llm.engine.scheduler.kv, llm.engine.runner
    a = EngineRequest("a", list(range(4, 36)), SimSampling(1))
    b = EngineRequest("b", list(range(40, 72)), SimSampling(1))
    caches = (*runner.kv_cache.k, *runner.kv_cache.v)
    if first == "in-then-out":  # a comes back from the host, then b leaves into a's host blocks
        for req, value in ((a, 1.0), (b, 2.0)):
            assert kv.allocate(req, 32, None, 0.0)
            for t in caches:
                t[kv.block_table(req)] = value
        kv.swap_out(a)
        runner.apply_copies(kv.take_copies(), after=False)
        assert kv.swap_in(a)
        kv.swap_out(b)
        back, value = a, 1.0
    else:  # b leaves, then a comes back into b's device blocks
        assert kv.allocate(a, 32, None, 0.0)
        for t in caches:
            t[kv.block_table(a)] = 1.0
        kv.swap_out(a)
        runner.apply_copies(kv.take_copies(), after=False)
        assert kv.allocate(b, 32, None, 0.0)
        for t in caches:
            t[kv.block_table(b)] = 2.0
        kv.swap_out(b)
        assert kv.swap_in(a)
        back, value = a, 1.0
        assert set(kv.block_table(a)) == {0, 1}  # b's device blocks
    runner.apply_copies(kv.take_copies(), after=False)
    assert all(bool((t[kv.block_table(back)] == value).all()) for t in caches)
