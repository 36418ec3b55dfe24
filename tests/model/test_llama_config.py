"""core.model.presets.llama_config: the dicts of the calls the repository makes
(artifacts/infercept/sim.py's GPT-J-6B and Vicuna-13B setups, scripts/calibrate's two tiny
models) equal, key for key and in order, the literals below: what the two private builders that
it replaced returned (GPT-J's ``head_dim`` stood last there; that config is only read by key)."""

from __future__ import annotations

import pytest

from artifacts.infercept.sim import SETUPS
from core.model import ModelSpec
from core.model.presets import llama_config
from scripts.calibrate import MODELS

_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
# fmt: off
EXPECTED = {
    "gpt-j-6b": _LLAMA | {
        "vocab_size": 50400, "hidden_size": 4096, "intermediate_size": 10923,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 16,
        "head_dim": 256, "hidden_act": "silu", "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "attention_bias": False,
        "mlp_bias": False, "tie_word_embeddings": False,
    },
    "vicuna-13b-tp2": _LLAMA | {
        "vocab_size": 32000, "hidden_size": 5120, "intermediate_size": 13824,
        "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 40,
        "hidden_act": "silu", "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "attention_bias": False,
        "mlp_bias": False, "tie_word_embeddings": False,
    },
    "tiny-llama-20m": _LLAMA | {
        "vocab_size": 32000, "hidden_size": 256, "intermediate_size": 768,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "hidden_act": "silu", "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "attention_bias": False,
        "mlp_bias": False, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    },
    "tiny-llama-smoke": _LLAMA | {
        "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "hidden_act": "silu", "max_position_embeddings": 512,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "attention_bias": False,
        "mlp_bias": False, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    },
}
# fmt: on
EXPECTED["gpt-j-6b-40g"] = EXPECTED["gpt-j-6b"]


def _made(name):
    return SETUPS[name].config if name in SETUPS else MODELS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_calls_make_the_former_dicts(name):
    assert list(_made(name).items()) == list(EXPECTED[name].items())


def test_fresh_dicts_defaults_and_extra_keys():
    kw = dict(
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        vocab_size=512,
        max_position_embeddings=512,
    )
    a, b = llama_config(**kw), llama_config(**kw)
    assert a == b and a is not b and a["architectures"] is not b["architectures"]
    assert a["num_key_value_heads"] == 4 and "head_dim" not in a
    spec = ModelSpec.from_hf_config(llama_config(**kw, num_kv_heads=2), name="t")
    assert (len(spec.layers), spec.hidden_size) == (2, 64)
    # an extra key named like a fixed one replaces its value in place; others come last
    c = llama_config(**kw, tie_word_embeddings=True, bos_token_id=1)
    assert c["tie_word_embeddings"] is True and list(c) == [*a, "bos_token_id"]
