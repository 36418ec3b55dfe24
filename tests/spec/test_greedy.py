"""Losslessness under greedy decoding: speculation on gives exactly the tokens it gives off,
for every drafter and every model family, with prefix caching, chunked prefill and
preemption in play."""

from __future__ import annotations

import functools

import pytest

from core.engine.sampling import SamplingParams

from .conftest import GREEDY, ScriptedDrafter, make_llm, prompts, run, with_drafter

PROMPTS = prompts([5, 17, 33, 9, 12], seed=1)
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
SUFFIX = {"method": "suffix", "num_speculative_tokens": 4}


@functools.cache
def _reference(arch):
    return [o.token_ids for o in run(make_llm(arch), PROMPTS, GREEDY)]


def reference(arch):
    """The tokens without speculation (computed once per model family)."""
    return [list(t) for t in _reference(arch)]


@pytest.mark.parametrize("arch", ["llama", "mixtral", "bamba"])
@pytest.mark.parametrize("spec", [NGRAM, SUFFIX], ids=["ngram", "suffix"])
def test_greedy_equal_token_drafters(arch, spec):
    ref = reference(arch)
    outs = run(make_llm(arch, speculative_config=spec), PROMPTS)
    assert [o.token_ids for o in outs] == ref
    assert sum(o.metrics["num_draft_tokens"] for o in outs) > 0


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_greedy_equal_draft_model(arch):
    """A draft with the target's own weights (same config and seed) is always right; one with
    other weights is mostly wrong: both must give the target's tokens."""
    from tests.model.conftest import hf_config

    ref = reference(arch)
    same = run(
        make_llm(arch, speculative_config={"model": hf_config(arch), "num_speculative_tokens": 3}),
        PROMPTS,
    )
    assert [o.token_ids for o in same] == ref
    drafted = sum(o.metrics["num_draft_tokens"] for o in same)
    assert drafted > 0 and sum(o.metrics["num_accepted_tokens"] for o in same) == drafted
    other = make_llm(
        arch, seed=0, speculative_config={"model": hf_config("qwen2"), "num_speculative_tokens": 3}
    )
    outs = run(other, PROMPTS)
    assert [o.token_ids for o in outs] == ref
    assert sum(o.metrics["num_accepted_tokens"] for o in outs) < sum(
        o.metrics["num_draft_tokens"] for o in outs
    )


@pytest.mark.parametrize("arch", ["llama", "mixtral", "bamba"])
@pytest.mark.parametrize("wrong_every", [0, 2, 3])
def test_greedy_equal_with_rejections(arch, wrong_every):
    """A scripted drafter that is right except for every ``wrong_every``-th token: partial
    acceptance at every position, and for the hybrid model SSM-state rollback."""
    ref = reference(arch)
    llm = make_llm(arch, speculative_config=NGRAM)
    drafter = ScriptedDrafter({tuple(p): r for p, r in zip(PROMPTS, ref, strict=True)}, wrong_every)
    outs = run(with_drafter(llm, drafter, 4), PROMPTS)
    assert [o.token_ids for o in outs] == ref
    drafted = sum(o.metrics["num_draft_tokens"] for o in outs)
    accepted = sum(o.metrics["num_accepted_tokens"] for o in outs)
    assert drafted > 0
    assert (accepted == drafted) == (wrong_every == 0)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "bamba"])
def test_greedy_equal_under_pressure(arch):
    """Few KV blocks (preemption by recompute), a small token budget (chunked prefill cuts
    drafts), a shared prefix (prefix-cache hits) and stop tokens inside accepted drafts."""
    shared = prompts([20], seed=5)[0]
    ps = [shared + p for p in prompts([3, 7, 11, 5], seed=6)]
    sp = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    kw = dict(num_kv_blocks=24, max_num_batched_tokens=24)
    ref_llm = make_llm(arch, **kw)
    ref_outs = run(ref_llm, ps, sp)
    ref = [o.token_ids for o in ref_outs]
    llm = make_llm(arch, speculative_config=NGRAM, **kw)
    drafter = ScriptedDrafter({tuple(p): r for p, r in zip(ps, ref, strict=True)}, 3)
    outs = run(with_drafter(llm, drafter, 5), ps, sp)
    assert [o.token_ids for o in outs] == ref
    assert sum(o.metrics["num_preemptions"] for o in outs) > 0
    assert sum(o.num_cached_tokens for o in outs) > 0
    # a stop token the target emits mid-draft ends the request right there
    stop = ref[0][7]
    sp_stop = SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[stop])
    want = [o.token_ids for o in run(make_llm(arch, **kw), ps, sp_stop)]
    got = [
        o.token_ids
        for o in run(
            with_drafter(make_llm(arch, speculative_config=NGRAM, **kw), drafter, 5), ps, sp_stop
        )
    ]
    assert got == want


def test_greedy_equal_with_swap_preemption():
    """Preemption by swapping to the host pool, with rejections: the same tokens, and every
    block back in the pool at the end."""
    shared = prompts([20], seed=5)[0]
    ps = [shared + p for p in prompts([3, 7, 11, 5], seed=6)]
    sp = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    kw = dict(
        num_kv_blocks=24, max_num_batched_tokens=24, preemption_mode="swap", num_host_blocks=64
    )
    ref = [o.token_ids for o in run(make_llm("llama", **kw), ps, sp)]
    llm = make_llm("llama", speculative_config=NGRAM, **kw)
    drafter = ScriptedDrafter({tuple(p): r for p, r in zip(ps, ref, strict=True)}, 3)
    outs = run(with_drafter(llm, drafter, 5), ps, sp)
    assert [o.token_ids for o in outs] == ref
    assert sum(o.metrics["num_preemptions"] for o in outs) > 0
    kv = llm.engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks
    kv.manager.check_integrity()
