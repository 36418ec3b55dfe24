"""Tiny transformers checkpoints the engine tests load with ``LLM(model=dir)``."""

from __future__ import annotations

import pytest
import torch

from tests.model.conftest import build_hf


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """``checkpoint(arch)`` -> (transformers model, directory with its save_pretrained)."""
    cache: dict[str, tuple] = {}

    def get(arch: str):
        if arch not in cache:
            model = build_hf(arch)
            path = tmp_path_factory.mktemp(f"engine-{arch}")
            model.save_pretrained(path)
            cache[arch] = (model, path)
        return cache[arch]

    return get


def prompts(lengths, seed=0, vocab=512):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


@torch.inference_mode()
def hf_greedy(model, prompt, n):
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()
