"""The zoo's tokenizer: byte-level BPE trained with the ``tokenizers`` library on the tasks'
texts, one digit per token (a number's first digit carries the space before it), no BOS, and
:data:`~core.zoo.tasks.EOS` as end of sequence. Saved as ``tokenizer.json`` plus the two small
files ``transformers.AutoTokenizer`` reads, so our engine and transformers tokenize alike."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from .tasks import EOS

__all__ = ["PAD", "SPECIAL_TOKENS", "save_tokenizer", "train_tokenizer"]

PAD = "<|pad|>"
SPECIAL_TOKENS = (PAD, EOS)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    """Byte-level BPE of ``vocab_size`` tokens (ids 0 and 1 are :data:`PAD` and EOS)
    trained on ``texts``; deterministic for the same texts in the same order."""
    tok = Tokenizer(models.BPE())
    # each digit its own piece, the space before a number kept with its first digit (" 4",
    # "1"): a number is then copied from its context without a bare space token in between
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" ?\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def save_tokenizer(tok: Tokenizer, directory: str | Path, model_max_length: int) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    special = {"eos_token": EOS, "pad_token": PAD}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (d / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
