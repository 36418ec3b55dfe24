"""Build a drafter from a :class:`~core.spec.config.SpeculativeConfig` (torch: the engine side)."""

from __future__ import annotations

from typing import Any

import torch

from core.model import load_model

from .config import SpeculativeConfig
from .draft_model import DraftModelDrafter
from .drafter import Drafter
from .ngram import NgramDrafter
from .suffix import SuffixDrafter


def make_drafter(
    cfg: SpeculativeConfig,
    *,
    target_vocab_size: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    kv_tokens: int,
    block_size: int,
    max_num_seqs: int,
    eos_token_id: Any = None,
    max_model_len: int | None = None,
    attention_backend: str | None = None,
    linear_backend: str | None = None,
) -> Drafter:
    """The drafter ``cfg`` names. A draft model is loaded like the target (a checkpoint
    directory, or a config for random weights drawn from ``seed``); its KV cache holds
    ``kv_tokens`` plus ``k`` per sequence unless ``cfg.draft_kv_blocks`` says, and it runs on
    the target's attention and linear backends."""
    if cfg.method == "ngram":
        return NgramDrafter(cfg.prompt_lookup_max, cfg.prompt_lookup_min)
    if cfg.method == "suffix":
        return SuffixDrafter(cfg.suffix_max_depth, cfg.suffix_min_token_prob, cfg.suffix_corpus)
    model, config = load_model(cfg.model, dtype=dtype, device=device, seed=seed)
    if attention_backend is not None:
        model.set_attention_backend(attention_backend)
    model.set_linear_backend(linear_backend)
    if int(config.vocab_size) != int(target_vocab_size):
        raise ValueError(
            f"speculative_config: the draft model's vocabulary ({config.vocab_size}) differs "
            f"from the target's ({target_vocab_size})"
        )
    blocks = cfg.draft_kv_blocks
    if blocks is None:
        per_seq = -(-cfg.num_speculative_tokens // block_size) + 1
        blocks = -(-kv_tokens // block_size) + per_seq * max_num_seqs
    return DraftModelDrafter(
        model, blocks, block_size, eos_token_id=eos_token_id, max_model_len=max_model_len
    )
