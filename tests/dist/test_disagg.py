"""Attention/expert disaggregation (core.dist.disagg): outputs equal to the colocated model for
m = 1, 2, 3 over thread queues and over 2 gloo processes, the order of the expert side's work,
and a side that stops answering fails with a clear error instead of hanging."""

from __future__ import annotations

import pytest
import torch

from core.dist.disagg import (
    AttentionSide,
    ExpertSide,
    QueueLink,
    colocated_generate,
    disaggregated_benchmark,
    micro_batches,
    serve_in_thread,
)
from core.model import config_from_hf, preset_config
from core.model.checkpoint import build_random_model

PROMPTS = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12], [13, 14], [15, 16, 17]]


@pytest.fixture(scope="module")
def model():
    return build_random_model(config_from_hf(preset_config("tiny-mixtral")), seed=0)


def _disaggregated(model, m, new_tokens=5):
    attn_link, expert_link = QueueLink.pair(timeout_s=30)
    expert = ExpertSide(model, expert_link)
    thread = serve_in_thread(expert)
    side = AttentionSide(model, attn_link)
    try:
        got = side.generate(PROMPTS, new_tokens, m)
    finally:
        side.stop()
        thread.join(timeout=30)
    return got, expert


def test_micro_batches_split_sequences_evenly_and_contiguously():
    assert micro_batches(5, 2) == [range(0, 3), range(3, 5)]
    assert micro_batches(6, 3) == [range(0, 2), range(2, 4), range(4, 6)]
    assert micro_batches(2, 3) == [range(0, 1), range(1, 2)]  # never an empty micro-batch
    with pytest.raises(ValueError, match="m >= 1"):
        micro_batches(3, 0)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_disaggregated_generation_equals_the_colocated_model(model, m, one_thread):
    ref = colocated_generate(model, PROMPTS, 5)
    got, _ = _disaggregated(model, m)
    assert got.tokens == ref.tokens
    for a, b in zip(got.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_both_sides_work_through_layers_and_micro_batches_in_order(model, one_thread):
    m, steps = 2, 3
    got, expert = _disaggregated(model, m, new_tokens=steps)
    layers = model.config.num_layers
    expected = [(li, i) for _ in range(steps) for li in range(layers) for i in range(m)]
    assert [(s.layer, s.micro_batch) for s in got.timeline] == expected
    assert [(s.layer, s.micro_batch) for s in expert.timeline[0]] == expected
    # an expert op starts after the attention op that produced its input ended
    for a, e in zip(got.timeline, expert.timeline[0], strict=True):
        assert e.start >= a.end
    assert all(s.side == "attention" for s in got.timeline)


def test_an_expert_side_that_never_answers_fails_the_run_instead_of_hanging(model):
    attn_link, _ = QueueLink.pair(timeout_s=0.5)
    side = AttentionSide(model, attn_link)
    with pytest.raises(TimeoutError, match="no message from the other side"):
        side.generate(PROMPTS, 2, 2)


def test_attention_side_refuses_a_model_without_mixtral_layers():
    dense = build_random_model(config_from_hf(preset_config("tiny-bamba")), seed=0)
    link, _ = QueueLink.pair()
    with pytest.raises(TypeError, match="Mixtral-family"):
        AttentionSide(dense, link)


@pytest.mark.slow
def test_two_processes_give_the_colocated_outputs(two_ranks):
    config = preset_config("tiny-mixtral")
    attn, expert = two_ranks.run(disaggregated_benchmark, config, 0, PROMPTS, 4, [1, 2, 3], 1)
    runs = attn["rows"]
    assert [r["m"] for r in runs] == [0, 1, 2, 3]
    assert all(r["tokens_equal"] for r in runs)
    assert max(r["max_logit_diff"] for r in runs) < 1e-4
    layers = config["num_hidden_layers"]
    # every expert op of run m was asked for by the attention side: 4 steps x layers x m
    for run, m in ((0, 1), (1, 2), (2, 3)):
        assert sum(s["run"] == run for s in expert["timeline"]) == 4 * layers * m
        assert sum(s["run"] == run for s in attn["timeline"]) == 4 * layers * m
