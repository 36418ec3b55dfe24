"""The engine API: vLLM's ``speculative_config`` spellings, its errors, and the per-request
acceptance counts in the outputs."""

from __future__ import annotations

import pytest

from core.engine import LLM
from core.engine.sampling import SamplingParams
from core.spec import NgramDrafter, SpeculativeConfig, SuffixDrafter, SuffixTree, ngram_lookup
from core.spec.draft_model import DraftModelDrafter
from tests.model.conftest import hf_config

from .conftest import make_llm, prompts, run


def test_config_spellings():
    c = SpeculativeConfig.from_dict(
        {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
    )
    assert (c.method, c.num_speculative_tokens, c.prompt_lookup_max, c.prompt_lookup_min) == (
        "ngram",
        4,
        3,
        1,
    )
    assert SpeculativeConfig.from_dict({"model": "/x", "num_speculative_tokens": 2}).method == (
        "draft_model"
    )
    assert (
        SpeculativeConfig.from_dict({"method": "suffix", "num_speculative_tokens": 8}).method
        == "suffix"
    )


@pytest.mark.parametrize(
    ("opts", "words"),
    [
        ({"method": "eagle", "num_speculative_tokens": 2}, "unknown method 'eagle'"),
        ({"method": "ngram"}, "'num_speculative_tokens' is required"),
        ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens must be"),
        ({"method": "ngram", "num_speculative_tokens": 2, "lookahead": 1}, "'lookahead'"),
        ({"num_speculative_tokens": 2}, "give 'method' or a draft 'model'"),
        (
            {
                "method": "ngram",
                "num_speculative_tokens": 2,
                "prompt_lookup_max": 2,
                "prompt_lookup_min": 3,
            },
            "prompt_lookup_min <= prompt_lookup_max",
        ),
    ],
)
def test_bad_config_says_what(opts, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        LLM(hf_config("llama"), speculative_config=opts)


def test_draft_model_must_share_the_vocabulary_and_be_attention_only():
    small = hf_config("llama")
    small.vocab_size = 300
    with pytest.raises(ValueError, match="vocabulary"):
        make_llm("llama", speculative_config={"model": small, "num_speculative_tokens": 2})
    with pytest.raises(ValueError, match="attention-only"):
        make_llm(
            "llama", speculative_config={"model": hf_config("bamba"), "num_speculative_tokens": 2}
        )
    with pytest.raises(ValueError, match="enable_lora"):
        make_llm(
            "llama",
            enable_lora=True,
            speculative_config={"method": "ngram", "num_speculative_tokens": 2},
        )


def test_outputs_carry_acceptance_counts_and_each_method_builds_its_drafter():
    ps = prompts([8, 12], seed=4)
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    for opts, cls in [
        ({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2}, NgramDrafter),
        ({"method": "suffix", "num_speculative_tokens": 3}, SuffixDrafter),
        ({"model": hf_config("llama"), "num_speculative_tokens": 3}, DraftModelDrafter),
    ]:
        llm = make_llm("llama", speculative_config=opts)
        assert isinstance(llm.engine.runner.drafter, cls)  # type: ignore[attr-defined]
        for o in run(llm, ps, sp):
            m = o.metrics
            assert 0 <= m["num_accepted_tokens"] <= m["num_draft_tokens"]
            assert m["num_spec_steps"] > 0
            # every step yields its accepted drafts plus one token (all at that step's time)
            steps = len(set(m["token_times"]))
            assert len(o.token_ids) == m["num_accepted_tokens"] + steps


def test_ngram_lookup_takes_the_longest_latest_match():
    toks = [1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3]
    assert ngram_lookup(toks, 3, 1, 2) == [7, 5]  # the latest earlier [1, 2, 3]
    assert ngram_lookup([4, 5, 6, 4, 8, 6], 3, 1, 3) == [4, 8, 6]  # only [6] matches
    assert ngram_lookup([4, 5, 6, 4, 8, 6], 3, 2, 3) == []  # no 2-gram repeats
    assert ngram_lookup([1, 2], 3, 1, 0) == []


def test_suffix_tree_counts_and_continues_the_most_frequent_path():
    t = SuffixTree(max_depth=4)
    t.add([1, 2, 3, 4])
    t.add([1, 2, 3, 5])
    t.add([7, 2, 3, 5])
    toks, matched, score = t.speculate([9, 2, 3], 3, min_prob=0.0)
    assert (toks, matched) == ([5], 2)  # "2 3" is followed by 5 twice, 4 once
    assert score == pytest.approx(2 / 3)
    # incremental indexing gives the same counts as indexing at once
    a, b = SuffixTree(5), SuffixTree(5)
    seq = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    a.add(seq)
    b.extend(0, seq[:4])
    b.extend(0, seq[4:])
    assert a.speculate([1], 4, 0.0) == b.speculate([1], 4, 0.0)
    # depth is bounded: no path longer than max_depth
    assert a.match(seq)[1] <= 4


def test_suffix_drafter_learns_from_finished_outputs():
    d = SuffixDrafter(max_depth=8, min_token_prob=0.0)
    from core.spec import DraftRequest

    ask = DraftRequest("x", [50, 60, 70], 3, 3)
    assert d.propose([ask])[0].token_ids == []
    d.observe([1], [60, 70, 80, 90, 100])
    d.release("x")
    assert d.propose([DraftRequest("y", [50, 60, 70], 3, 3)])[0].token_ids == [80, 90, 100]
