"""The zoo tokenizer: round trips, one token per digit, special tokens, and the same ids from
``tokenizers`` (our engine) and ``transformers.AutoTokenizer``."""

from __future__ import annotations

import pytest

from core.zoo.tasks import EOS, make_examples
from core.zoo.tokenizer import PAD, save_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tok():
    texts = [e.text for t in ("arith", "retrieval", "classify") for e in make_examples(t, 0, 300)]
    return train_tokenizer(texts, 400)


def test_round_trip_and_digits(tok):
    for ex in make_examples("arith", 1, 20) + make_examples("retrieval", 1, 5):
        ids = tok.encode(ex.text).ids
        assert tok.decode(ids, skip_special_tokens=False) == ex.text
        assert ids[-1] == tok.token_to_id(EOS)
    pieces = tok.encode("12 + 345 = 357").tokens
    digits = [p for p in pieces if any(ch.isdigit() for ch in p)]
    assert all(sum(ch.isdigit() for ch in p) == 1 for p in digits)  # one digit per token
    assert "".join(p.replace("Ġ", "") for p in digits) == "12345357"
    assert tok.token_to_id(PAD) == 0 and tok.token_to_id(EOS) == 1
    assert tok.get_vocab_size() == 400


def test_unseen_text_still_round_trips(tok):
    text = "Zürich, 1999 — naïve café! {json: [1, 2]}"
    assert tok.decode(tok.encode(text).ids) == text


def test_training_is_deterministic():
    texts = [e.text for e in make_examples("arith", 2, 200)]
    assert train_tokenizer(texts, 300).to_str() == train_tokenizer(texts, 300).to_str()


def test_transformers_reads_the_same_tokenizer(tok, tmp_path):
    from transformers import AutoTokenizer

    save_tokenizer(tok, tmp_path, 512)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for ex in make_examples("arith", 3, 10):
        assert hf(ex.prompt)["input_ids"] == tok.encode(ex.prompt).ids
    assert hf.eos_token == EOS and hf.pad_token == PAD
