"""LoRA fine-tuning on sub-tasks: the tasks' formats and checker; the trainer is seeded and
resumable, lowers the loss, and writes a PEFT folder that ``peft`` and our engine read alike;
the shipped adapters (when present) load in ``peft`` and beat the base model on their tasks."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from core.lora.adapter import ADAPTER_WEIGHTS, load_adapter
from core.lora.tasks import ADAPTER_TASKS, check_final, final_answer, task_examples
from core.lora.train import LoRARecipe, TrainableLoRA, default_base, train_adapter
from core.model import load_model
from core.zoo.evaluate import export_model
from core.zoo.recipes import RECIPES
from core.zoo.tasks import EOS, check_answer, make_examples
from core.zoo.tokenizer import train_tokenizer


def test_tasks_restyle_the_answer_only():
    for task in ADAPTER_TASKS.values():
        for original, styled in task_examples(task, 0, 20):
            assert styled.prompt == original.prompt
            assert check_final(styled, styled.completion)
            assert check_answer(original, original.completion)
            assert not check_final(styled, original.completion)  # the zoo's format is wrong
            assert not check_final(styled, styled.completion, stopped=False)


def test_task_answers():
    rng = random.Random(3)
    _, total = ADAPTER_TASKS["arith-total"].example(rng)
    assert final_answer(total.completion) == total.answer
    assert total.answer.startswith("Total: ") and total.completion.endswith(EOS)
    original, sentence = ADAPTER_TASKS["arith-sentence"].example(random.Random(3))
    assert sentence.answer == f"Now there are {original.answer}."
    pairs = task_examples(ADAPTER_TASKS["classify-score"], 0, 40)
    for original, styled in pairs:
        words = original.prompt.removeprefix("Review: ").split("\n")[0].split()
        pos = sum(
            w in ("good", "great", "fine", "nice", "superb", "lovely", "happy", "bright")
            for w in words
        )
        assert styled.answer == f"{original.answer} {abs(2 * pos - len(words))}"


def test_heldout_prompts_are_excluded():
    task = ADAPTER_TASKS["classify-words"]
    held = frozenset(o.prompt for o, _ in task_examples(task, "x", 30))
    train = task_examples(task, "y", 200, exclude=held)
    assert not held & {o.prompt for o, _ in train}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random Llama with a zoo tokenizer, saved as a checkpoint folder."""
    texts = [e.text for t in ("arith", "classify") for e in make_examples(t, 0, 300)]
    tok = train_tokenizer(texts, 300)
    arch = dict(
        RECIPES["zoo-small"].architecture,
        hidden_size=32,
        intermediate_size=64,
        vocab_size=tok.get_vocab_size(),
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    model, _ = load_model(arch, seed=0)
    return export_model(model, tok, tmp_path_factory.mktemp("lora-train-base"))


def recipe(**kw) -> LoRARecipe:
    base = dict(task="classify-words", rank=4, steps=8, batch_examples=8, warmup_steps=2)
    return LoRARecipe(**{**base, **kw, "checkpoint_every": kw.get("checkpoint_every", 2)})


def adapter_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / ADAPTER_WEIGHTS))


def test_resumed_run_equals_uninterrupted(base_dir, tmp_path):
    r = recipe()
    whole, _ = train_adapter(r, base_dir, tmp_path / "a", tmp_path / "wa", progress=False)
    _, part = train_adapter(
        r, base_dir, tmp_path / "b", tmp_path / "wb", progress=False, max_steps=5
    )
    assert part.step == 5 and not (tmp_path / "b").exists()
    resumed, state = train_adapter(r, base_dir, tmp_path / "b", tmp_path / "wb", progress=False)
    assert state.step == 8
    a, b = adapter_weights(whole), adapter_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((whole / "training.json").read_text())
    assert info["steps"] == 8 and info["recipe"]["task"] == "classify-words"
    with pytest.raises(ValueError, match="another recipe"):
        train_adapter(recipe(lr=1e-3), base_dir, tmp_path / "c", tmp_path / "wa", progress=False)


def test_training_lowers_the_loss_and_saves_a_peft_folder(base_dir, tmp_path):
    r = recipe(steps=40, lr=1e-2, targets=("q_proj", "v_proj", "down_proj"))
    folder, state = train_adapter(r, base_dir, tmp_path / "ad", tmp_path / "w", progress=False)
    losses = [row["loss"] for row in state.log]
    # a random tiny base learns slowly; batch-to-batch noise is ~0.03 nats
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 16.0
    assert sorted(cfg["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    adapter = load_adapter(folder)
    assert len(adapter.weights) == 2 * 3  # two layers, three modules each


def test_hooked_forward_equals_peft(base_dir, tmp_path):
    """The trainer's hooks compute what peft computes for the weights it saves."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.model.training import dense_forward, dense_logits

    model, _ = load_model(str(base_dir))
    model.set_linear_backend("torch")
    lora = TrainableLoRA(model, 4, 8.0, ("q_proj", "k_proj", "gate_proj", "o_proj"), seed=1)
    with torch.no_grad():
        for p in lora.b.values():
            p.normal_(0, 0.3)
    from core.lora.adapter import save_adapter

    folder = save_adapter(tmp_path / "ad", lora.weights(), lora_alpha=8.0)
    ids = torch.tensor([[5, 9, 40, 2, 77, 13]])
    with torch.no_grad():
        ours = dense_logits(model, dense_forward(model, ids))
        hf = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), folder)
        want = hf.eval()(input_ids=ids).logits
    torch.testing.assert_close(ours, want, atol=2e-4, rtol=1e-4)
    lora.detach()
    with torch.no_grad():
        plain = dense_logits(model, dense_forward(model, ids))
    assert not torch.allclose(plain, ours, atol=1e-3)


SHIPPED = default_base().parent / f"{default_base().name}-lora"


@pytest.mark.skipif(
    not (default_base() / "config.json").is_file() or not SHIPPED.is_dir(),
    reason=f"no trained zoo model and adapters at {default_base()} / {SHIPPED}",
)
@pytest.mark.slow
def test_shipped_adapters_load_in_peft_and_beat_the_base():
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.engine import LLM, LoRARequest, SamplingParams
    from core.lora.train import heldout_set

    names = [n for n in ADAPTER_TASKS if (SHIPPED / n).is_dir()]
    assert names
    llm = LLM(str(default_base()), enable_lora=True, max_loras=len(names), max_lora_rank=8)
    assert llm.tokenizer is not None
    for i, name in enumerate(names):
        task = ADAPTER_TASKS[name]
        (original, styled), *_ = heldout_set(task, 1)
        ids = list(llm.tokenizer.encode(styled.prompt).ids)
        params = SamplingParams(temperature=0, max_tokens=task.max_tokens)
        lr = LoRARequest(name, i + 1, str(SHIPPED / name))
        ours = llm.generate([ids], params, lora_request=lr, use_tqdm=False)[0]
        base = llm.generate([ids], params, use_tqdm=False)[0]
        assert ours.token_ids != base.token_ids, name
        hf = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(default_base(), dtype=torch.float32),
            SHIPPED / name,
        ).eval()
        with torch.no_grad():
            want = hf.generate(
                input_ids=torch.tensor([ids]),
                max_new_tokens=len(ours.token_ids),
                do_sample=False,
                pad_token_id=0,
            )[0, len(ids) :].tolist()
        assert ours.token_ids == want[: len(ours.token_ids)], name
