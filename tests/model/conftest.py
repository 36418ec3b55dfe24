"""Tiny random transformers models for every supported architecture, saved once per session."""

from __future__ import annotations

import pytest
import torch
import transformers

VOCAB = 512
# initializer_range 0.1 (not 0.02): logits of magnitude ~3 with clear argmax gaps, so a real
# bug (a wrong RoPE, a missed window) moves logits by ~1 while rounding moves them by ~1e-6.
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_attention_heads=4,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    initializer_range=0.1,
)


def hf_config(arch: str) -> transformers.PretrainedConfig:
    """A tiny config that still exercises what makes each family different."""
    if arch == "llama":  # Llama 3.1 rope scaling that matters at these positions, GQA
        return transformers.LlamaConfig(
            **COMMON,
            intermediate_size=128,
            num_hidden_layers=2,
            num_key_value_heads=2,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        )
    if arch == "mistral":  # a sliding window shorter than the prompts
        return transformers.MistralConfig(
            **COMMON,
            intermediate_size=128,
            num_hidden_layers=2,
            num_key_value_heads=2,
            sliding_window=5,
        )
    if arch == "qwen2":  # q/k/v bias
        return transformers.Qwen2Config(
            **COMMON, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=2
        )
    if arch == "qwen3":  # q/k norm, head_dim != hidden / heads, MQA, tied embeddings
        return transformers.Qwen3Config(
            **COMMON,
            intermediate_size=128,
            num_hidden_layers=2,
            num_key_value_heads=1,
            head_dim=32,
            tie_word_embeddings=True,
        )
    if arch == "mixtral":
        return transformers.MixtralConfig(
            **COMMON,
            intermediate_size=96,
            num_hidden_layers=2,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
        )
    if arch == "bamba":  # mamba, attention, mamba; 2 B/C groups; chunks of 4 tokens
        return transformers.BambaConfig(
            **COMMON,
            intermediate_size=96,
            num_hidden_layers=3,
            num_key_value_heads=2,
            attn_layer_indices=[1],
            mamba_n_heads=4,
            mamba_d_state=16,
            mamba_n_groups=2,
            mamba_chunk_size=4,
        )
    raise ValueError(arch)


ARCHS = ["llama", "mistral", "qwen2", "qwen3", "mixtral", "bamba"]


def build_hf(arch: str, seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(arch)).eval()
    model.generation_config.eos_token_id = None  # greedy runs for exactly max_new_tokens
    return model


@pytest.fixture(scope="session", params=ARCHS)
def hf_checkpoint(request, tmp_path_factory):
    """(arch, transformers model, directory it was saved to with save_pretrained)."""
    arch = request.param
    model = build_hf(arch)
    path = tmp_path_factory.mktemp(f"hf-{arch}")
    model.save_pretrained(path)
    return arch, model, path


@torch.inference_mode()
def hf_logits(model: transformers.PreTrainedModel, tokens: list[int]) -> torch.Tensor:
    """transformers' logits for every position of one sequence, no cache."""
    return model(torch.tensor([tokens]), use_cache=False).logits[0].float()
