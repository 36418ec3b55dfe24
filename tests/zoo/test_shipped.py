"""Every model shipped under data/models loads in our engine and in transformers with equal
greedy text, and still reaches its model card's accuracy on a sample of the card's held-out
problems."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from core.zoo.build import final_eval_set
from core.zoo.evaluate import score_examples

MODELS = Path(__file__).resolve().parents[2] / "data" / "models"
SHIPPED = sorted(p.name for p in MODELS.glob("*/metrics.json") for p in [p.parent])
PROMPTS = [
    "Ben has 12 apples.\nJanuary 3 more are bought.\nFebruary 5 are given away.\nHow many apples now?\n",
    "Kiba likes red. Kiba has a cat. Tolu lives in Lima. The friend of Kiba is Tolu.\n"
    "Q: Where does the friend of Kiba live?\nA: ",
    "Review: grim bright poor good lovely\nLabel: ",
    "The city council met on Monday to discuss ",
]


def test_the_large_and_small_models_are_shipped():
    assert {"zoo-large", "zoo-small"} <= set(SHIPPED)
    total = sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file())
    assert total <= 60 * 2**20, f"the zoo takes {total / 2**20:.1f} MB"


@pytest.mark.parametrize("name", SHIPPED)
def test_engine_and_transformers_give_the_same_greedy_text(name, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.engine import LLM, SamplingParams

    folder = MODELS / name
    llm = LLM(str(folder), kv_cache_memory=32 * 2**20)
    ours = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=40), use_tqdm=False)
    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for prompt, out in zip(PROMPTS, ours, strict=True):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        assert ids[0].tolist() == out.prompt_token_ids
        with torch.no_grad():
            gen = hf.generate(
                ids,
                max_new_tokens=40,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        theirs = gen[0, ids.shape[1] :].tolist()
        assert theirs == out.token_ids, (prompt, tok.decode(theirs), out.text)
        assert tok.decode(theirs, skip_special_tokens=True) == out.text


@pytest.mark.parametrize("name", SHIPPED)
def test_card_accuracy_holds_on_a_sample(name, one_thread):
    """The first 25 problems of each arith bucket of 1-4 steps (100 of the card's 400): the
    accuracy must be within 3 binomial standard deviations of the card's (sampling noise
    of the subset; same weights and greedy decoding otherwise give the same answers)."""
    card = json.loads((MODELS / name / "metrics.json").read_text())
    examples = [e for e in final_eval_set() if e.task == "arith" and e.difficulty <= 4]
    sample = [e for s in range(1, 5) for e in [x for x in examples if x.difficulty == s][:25]]
    rows = score_examples(MODELS / name, sample)
    got = sum(r["correct"] for r in rows) / len(rows)
    want = card["arith_up_to_4"]
    sd = math.sqrt(max(want * (1 - want), 0.01) / len(rows))
    assert abs(got - want) <= 3 * sd, (got, want)
