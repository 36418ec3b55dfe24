"""``SamplingParams(prompt_logprobs=k)``: vLLM's prompt logprobs against transformers'
``log_softmax`` of the prompt logits, chunked and not, with and without prefix caching."""

from __future__ import annotations

import pytest
import torch

from core.engine import LLM, Logprob, SamplingParams
from core.engine.sampling import prompt_logprob_entries
from tests.model.conftest import hf_logits

from .conftest import prompts


def _reference(model, prompt: list[int], k: int) -> list[dict[int, tuple[float, int]] | None]:
    """Entry per prompt token from transformers: the token itself, then the top k."""
    logp = hf_logits(model, prompt).log_softmax(-1)
    ref: list[dict[int, tuple[float, int]] | None] = [None]
    for p in range(1, len(prompt)):
        row, tok = logp[p - 1], prompt[p]
        entry = {tok: (float(row[tok]), int((row >= row[tok]).sum()))}
        vals, ids = row.topk(k)
        for r, (t, v) in enumerate(zip(ids.tolist(), vals.tolist(), strict=True), start=1):
            entry.setdefault(t, (v, r))
        ref.append(entry)
    return ref


def _check(got, ref) -> None:
    assert len(got) == len(ref) and got[0] is None
    for p, (g, r) in enumerate(zip(got[1:], ref[1:], strict=True), start=1):
        assert list(g) == list(r), p  # same tokens, prompt token first
        for tid, lp in g.items():
            assert isinstance(lp, Logprob)
            assert lp.logprob == pytest.approx(r[tid][0], abs=2e-4), (p, tid)
            assert lp.rank == r[tid][1], (p, tid)


PARAMS = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, prompt_logprobs=3)


@pytest.mark.parametrize("arch", ["llama", "mistral", "mixtral", "bamba"])
def test_prompt_logprobs_equal_transformers_chunked_and_not(arch, checkpoint):
    model, path = checkpoint(arch)
    ps = prompts([1, 2, 19, 33], seed=7)
    whole = LLM(path, block_size=4, num_kv_blocks=256, max_num_batched_tokens=256)
    chunked = LLM(path, block_size=4, num_kv_blocks=256, max_num_batched_tokens=8)
    a = whole.generate(ps, PARAMS, use_tqdm=False)
    b = chunked.generate(ps, PARAMS, use_tqdm=False)
    for p, oa, ob in zip(ps, a, b, strict=True):
        ref = _reference(model, p, 3)
        _check(oa.prompt_logprobs, ref)
        _check(ob.prompt_logprobs, ref)
        # chunked vs whole: the same tokens and ranks, logprobs to rounding
        for ea, eb in zip(oa.prompt_logprobs[1:], ob.prompt_logprobs[1:], strict=True):
            assert {t: x.rank for t, x in ea.items()} == {t: x.rank for t, x in eb.items()}
            for t in ea:
                assert ea[t].logprob == pytest.approx(eb[t].logprob, abs=1e-5)
        assert oa.token_ids == ob.token_ids


@pytest.mark.parametrize("prefix_cache", ["block", "radix"])
def test_prefix_cache_hit_is_skipped_so_every_position_is_computed(prefix_cache, checkpoint):
    model, path = checkpoint("llama")
    shared = prompts([24], seed=8)[0]
    first, second = (shared + t for t in prompts([5, 7], seed=9))
    llm = LLM(path, block_size=4, num_kv_blocks=128, prefix_cache=prefix_cache)
    plain = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    warm = llm.generate([first], plain, use_tqdm=False)[0]
    assert warm.prompt_logprobs is None
    # a request without prompt logprobs hits the shared blocks ...
    hit = llm.generate([second], plain, use_tqdm=False)[0]
    assert hit.num_cached_tokens >= 24
    # ... one with them recomputes the whole prompt (vLLM's rule), and its logprobs are whole
    out = llm.generate([second], PARAMS, use_tqdm=False)[0]
    assert out.num_cached_tokens == 0
    _check(out.prompt_logprobs, _reference(model, second, 3))
    assert out.token_ids == hit.token_ids
    # its blocks still serve later requests without prompt logprobs
    again = llm.generate([second], plain, use_tqdm=False)[0]
    assert again.num_cached_tokens >= 24


def test_mixed_batch_preemption_and_speculation(checkpoint):
    """Requests with and without prompt logprobs share batches; a tight KV pool preempts
    (recompute) mid-run and an n-gram drafter speculates: the prompt logprobs stay whole and
    the tokens equal a run without prompt logprobs."""
    model, path = checkpoint("llama")
    ps = prompts([30, 21, 26, 17], seed=10)
    params = [
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, prompt_logprobs=i)
        if i % 2 == 0
        else SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
        for i in range(4)
    ]
    want = LLM(path, block_size=4, num_kv_blocks=256).generate(
        ps, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False
    )
    tight = LLM(
        path,
        block_size=4,
        num_kv_blocks=26,
        max_num_batched_tokens=16,
        speculative_config={"method": "ngram", "num_speculative_tokens": 3},
    )
    got = tight.generate(ps, params, use_tqdm=False)
    assert sum(o.metrics["num_preemptions"] for o in got) > 0
    for i, (p, o, w) in enumerate(zip(ps, got, want, strict=True)):
        assert o.token_ids == w.token_ids
        if i % 2:
            assert o.prompt_logprobs is None
        else:
            _check(o.prompt_logprobs, _reference(model, p, i))


def test_entries_shape_whole_vocabulary_and_zero():
    logits = torch.tensor([[0.0, 2.0, 1.0, 1.0], [3.0, 0.0, 0.0, -1.0]])
    targets = torch.tensor([2, 0])
    none_top = prompt_logprob_entries(logits, targets, 0)
    assert [list(e) for e in none_top] == [[2], [0]]
    # ties: rank counts every token at least as likely, itself included (vLLM's rule)
    assert none_top[0][2].rank == 3 and none_top[1][0].rank == 1
    every = prompt_logprob_entries(logits, targets, -1)
    assert [sorted(e) for e in every] == [[0, 1, 2, 3]] * 2
    logp = logits.log_softmax(-1)
    assert every[0][1].logprob == pytest.approx(float(logp[0, 1])) and every[0][1].rank == 1


def test_validation_and_a_one_token_prompt(checkpoint):
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=-2)
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=True)
    _, path = checkpoint("llama")
    out = LLM(path, block_size=4, num_kv_blocks=32).generate([[5]], PARAMS, use_tqdm=False)[0]
    assert out.prompt_logprobs == [None]
