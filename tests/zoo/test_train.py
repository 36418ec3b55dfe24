"""The trainer: a round is a function of the recipe; one seed gives equal weights; resuming
gives the weights of an uninterrupted run; a few hundred steps lower the loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.zoo.recipes import MIX, RECIPES
from core.zoo.tasks import make_examples
from core.zoo.tokenizer import train_tokenizer
from core.zoo.train import Recipe, heldout_loss, lr_at, round_batches, train


@pytest.fixture(scope="module")
def tok():
    texts = [e.text for t in ("arith", "retrieval", "classify") for e in make_examples(t, 0, 300)]
    return train_tokenizer(texts, 300)


def tiny_recipe(**kw) -> Recipe:
    arch = dict(
        RECIPES["zoo-small"].architecture,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    base = Recipe(
        "tiny",
        arch,
        {"arith": 0.7, "classify": 0.3},
        tokens=30_000,
        batch_tokens=1024,
        round_examples=64,
        warmup_tokens=2000,
        lr=3e-3,
        eval_every_tokens=10**9,
    )
    return dataclasses.replace(base, **kw)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_rounds_are_a_function_of_the_recipe(tok):
    r = tiny_recipe()
    a, b = round_batches(r, tok, 3), round_batches(r, tok, 3)
    assert [x.input_ids.tolist() for x in a] == [x.input_ids.tolist() for x in b]
    assert [x.input_ids.tolist() for x in a] != [
        x.input_ids.tolist() for x in round_batches(r, tok, 4)
    ]
    for batch in a:
        assert batch.input_ids.numel() <= r.batch_tokens or batch.input_ids.shape[0] == 1
        assert batch.loss_tokens < batch.tokens  # prompts are not learned from


def test_held_out_prompts_are_never_trained_on(tok):
    r = tiny_recipe(mix={"arith": 1.0})
    plain = round_batches(r, tok, 0)
    first = plain[0]
    prompt_len = int((first.targets[0] != -100).nonzero()[0]) + 1  # loss starts after the prompt
    prompt = tok.decode(first.input_ids[0, :prompt_len].tolist())
    again = round_batches(r, tok, 0, exclude={prompt})
    assert sum(b.input_ids.shape[0] for b in again) == sum(b.input_ids.shape[0] for b in plain) - 1


def test_same_seed_same_weights_and_resume(tok, tmp_path, one_thread):
    r = tiny_recipe(tokens=6000)
    m1, s1 = train(r, tok, tmp_path / "a", progress=False)
    m2, s2 = train(r, tok, tmp_path / "b", progress=False)
    w1, w2 = weights(m1), weights(m2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1) and s1.tokens == s2.tokens
    # stop after two rounds, then resume: the same weights as the run that never stopped
    train(r, tok, tmp_path / "c", progress=False, max_rounds=2)
    m3, s3 = train(r, tok, tmp_path / "c", progress=False)
    assert s3.steps == s1.steps and all(torch.equal(w1[k], v) for k, v in weights(m3).items())
    m4, _ = train(tiny_recipe(tokens=6000, seed=1), tok, tmp_path / "d", progress=False)
    assert not all(torch.equal(w1[k], v) for k, v in weights(m4).items())


def test_a_checkpoint_of_another_recipe_is_refused(tok, tmp_path):
    train(tiny_recipe(tokens=2000), tok, tmp_path, progress=False)
    with pytest.raises(ValueError, match="another recipe"):
        train(tiny_recipe(tokens=3000), tok, tmp_path, progress=False)


def test_training_lowers_the_loss(tok, tmp_path):
    r = tiny_recipe(tokens=120_000)
    held = make_examples("arith", 999, 64) + make_examples("classify", 999, 32)
    from core.model.checkpoint import build_random_model
    from core.model.config import load_config

    before = heldout_loss(build_random_model(load_config(r.hf_config(tok)), seed=r.seed), tok, held)
    model, state = train(r, tok, tmp_path, progress=False)
    after = heldout_loss(model, tok, held)
    assert state.steps >= 100
    assert after < 0.6 * before, (before, after)


def test_learning_rate_warms_up_then_decays():
    r = tiny_recipe(tokens=100_000, warmup_tokens=10_000, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(r, 0) < lr_at(r, 5000) < lr_at(r, 9999) <= 1.0
    assert lr_at(r, 10_000) == pytest.approx(1.0)
    assert lr_at(r, 55_000) == pytest.approx(0.55)
    assert lr_at(r, 100_000) == pytest.approx(0.1) and lr_at(r, 10**6) == pytest.approx(0.1)


def test_recipes_share_one_mix():
    assert all(r.mix == MIX for r in RECIPES.values())
    assert abs(sum(MIX.values()) - 1.0) < 1e-9
