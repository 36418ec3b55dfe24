"""Tiny Llama checkpoints with LoRA adapters that ``peft`` itself wrote (the reference)."""

from __future__ import annotations

import pytest
import torch

from tests.model.conftest import build_hf

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_model(base, seed: int, **lora_kwargs):
    """``base`` wrapped by peft with a random (non-zero) LoRA adapter of seed ``seed``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    kwargs = dict(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    kwargs.update(lora_kwargs)
    return get_peft_model(base, LoraConfig(**kwargs))


@pytest.fixture(scope="session")
def lora_setup(tmp_path_factory):
    """(base checkpoint dir, {name: (adapter dir, peft model)}) for three adapters of different
    ranks and targets, on one tiny Llama."""
    base_dir = tmp_path_factory.mktemp("lora-base")
    build_hf("llama").save_pretrained(base_dir)
    variants = {
        "a": dict(r=4, lora_alpha=8),
        "b": dict(r=8, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"]),
        "c": dict(r=2, lora_alpha=2, use_rslora=True, rank_pattern={"o_proj": 3}),
    }
    adapters = {}
    for seed, (name, kw) in enumerate(variants.items()):
        torch.manual_seed(0)
        model = peft_model(build_hf("llama"), seed + 1, **kw).eval()
        path = tmp_path_factory.mktemp(f"lora-{name}")
        model.save_pretrained(path)
        adapters[name] = (path, model)
    return base_dir, adapters


@pytest.fixture(autouse=True)
def _torch_on_one_thread(one_thread):
    """Tiny models run faster on one thread, and far faster when other jobs share the cores
    (as in the engine, kernel and model test folders)."""
