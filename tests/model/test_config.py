"""The one parser of Hugging Face configs: ModelSpec and the torch models read the same
ModelConfig. Each test below settles a point where the two former parsers disagreed, checked
against transformers' own config classes and modules; each fails on the side that lost."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers

from core.model import (
    ConfigError,
    MissingCheckpointFileError,
    ModelSpec,
    UnknownArchitectureError,
    load_config,
    load_model,
    preset_config,
    preset_names,
)
from core.model.config import SUPPORTED_MODEL_TYPES

from .conftest import COMMON, hf_logits
from .paged import PagedRunner

NO_TOKEN_IDS = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)


def tiny(model_type: str, **overrides) -> dict:
    """A tiny config.json dict of ``model_type`` (from the tiny presets)."""
    base = {"llama": "tiny-llama-125m", "bamba": "tiny-bamba", "nemotron_h": "tiny-nemotron-h"}
    cfg = preset_config(base.get(model_type, "tiny-mixtral"))
    arch = transformers.CONFIG_MAPPING[model_type].__name__.replace("Config", "ForCausalLM")
    cfg.update(model_type=model_type, architectures=[arch])
    return cfg | overrides


def hf_param_count(cfg: dict) -> int:
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(**cfg)
        )
    return sum(p.numel() for p in model.parameters())


def test_spec_is_derived_from_the_config_the_models_are_built_from():
    for name in preset_names():
        cfg = load_config(preset_config(name))
        assert ModelSpec.from_config(cfg, name=name) == ModelSpec.from_preset(name)
        assert ModelSpec.from_hf_config(cfg, name=name) == ModelSpec.from_preset(name)


# Missing keys: transformers fills every key from its config class (a config.json without
# hidden_size is a 4096-wide model to transformers). ModelSpec did so; the model parser raised
# "required key is missing".
@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_missing_keys_take_the_transformers_defaults(model_type):
    extra = {"hybrid_override_pattern": "M-*E"} if model_type == "nemotron_h" else {}
    ours = load_config({"model_type": model_type, **extra})
    theirs = load_config(transformers.CONFIG_MAPPING[model_type](**extra))
    # special token ids are read, never defaulted: a random model never stops at a default id
    assert dataclasses.replace(theirs, **NO_TOKEN_IDS) == ours


# Mistral and Mixtral attention has no biases whatever attention_bias says (transformers
# hard-codes bias=False); the model parser gave them q/k/v biases.
@pytest.mark.parametrize("model_type", ["mistral", "mixtral"])
def test_mistral_and_mixtral_ignore_attention_bias(model_type):
    cfg = tiny(model_type, attention_bias=True)
    config = load_config(cfg)
    assert not config.qkv_bias and not config.o_bias
    model, _ = load_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == hf_param_count(cfg)
    assert ModelSpec.from_config(config).num_params == hf_param_count(cfg)


# Qwen2/Qwen3 sliding windows. ModelSpec refused use_sliding_window=true altogether; the model
# parser applied sliding_window to the layers layer_types marks even when use_sliding_window was
# false, and took no window when the key was missing. transformers: sliding_window counts only
# with use_sliding_window (default 4096), on the layers layer_types marks (default: from
# max_window_layers on).
WINDOW_CASES = [
    dict(use_sliding_window=True, sliding_window=7, max_window_layers=2),
    dict(use_sliding_window=False, sliding_window=7, layer_types=["sliding_attention"] * 4),
    dict(use_sliding_window=True, max_window_layers=0),  # sliding_window: the default 4096
    dict(
        use_sliding_window=True,
        sliding_window=7,
        layer_types=["full_attention", "sliding_attention"] * 2,
    ),
]


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
@pytest.mark.parametrize("case", WINDOW_CASES)
def test_qwen_sliding_windows_follow_transformers(model_type, case):
    cfg = tiny(model_type, num_hidden_layers=4, **case)
    if "sliding_window" not in case:  # the tiny preset's null: leave the key out
        del cfg["sliding_window"]
    hf = transformers.AutoConfig.for_model(**cfg)
    expected = tuple(
        hf.sliding_window if t == "sliding_attention" else None for t in hf.layer_types
    )
    config = load_config(cfg)
    assert config.sliding_windows == expected
    assert load_config(hf).sliding_windows == expected
    if len(set(expected)) == 1:  # one window on every layer: ModelSpec counts it
        assert ModelSpec.from_hf_config(cfg).attention.sliding_window == expected[0]
    else:
        with pytest.raises(ConfigError, match="different sliding windows"):
            ModelSpec.from_hf_config(cfg)


def test_qwen2_sliding_window_on_some_layers_matches_transformers_logits():
    hf_cfg = transformers.Qwen2Config(
        **COMMON,
        intermediate_size=128,
        num_hidden_layers=2,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=5,
        max_window_layers=1,
    )
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    model, config = load_model(hf_cfg.to_dict())
    assert config.sliding_windows == (None, 5)
    model.load_state_dict({k: v for k, v in _ours_from(model, hf).items()})
    tokens = list(range(3, 19))
    ours = PagedRunner(model).step({0: tokens})[0]
    assert (ours - hf_logits(hf, tokens)).abs().max() < 2e-5


def _ours_from(model, hf) -> dict[str, torch.Tensor]:
    """Our state dict from a transformers model's weights (fused q/k/v and gate/up)."""
    theirs = hf.state_dict()
    return {
        ours: torch.cat([theirs[name] for name, _ in parts])
        for ours, parts in model.hf_weight_map().items()
    }


# An explicit null num_key_value_heads means as many as the query heads (transformers'
# __post_init__); the model parser took the family default (8 for Bamba).
def test_null_kv_heads_means_the_query_heads():
    cfg = tiny("bamba", num_key_value_heads=None)
    expected = transformers.BambaConfig(**cfg).num_key_value_heads
    assert expected == cfg["num_attention_heads"]
    assert load_config(cfg).num_kv_heads == expected
    assert ModelSpec.from_hf_config(cfg).n_kv_heads == expected


# Shape checks: the model parser accepted what transformers refuses (Bamba's Mamba heads that do
# not divide expand * hidden_size) and what cannot be built (heads not a multiple of KV heads).
def test_inconsistent_shapes_are_config_errors():
    with pytest.raises(Exception, match="mamba_n_heads must divide"):
        transformers.BambaConfig(**tiny("bamba", mamba_n_heads=7, mamba_d_head="auto"))
    with pytest.raises(ConfigError, match="mamba_n_heads 7"):
        load_config(tiny("bamba", mamba_n_heads=7, mamba_d_head="auto"))
    with pytest.raises(ConfigError, match="num_key_value_heads 5"):
        load_config(tiny("llama", num_key_value_heads=5))
    with pytest.raises(ConfigError, match="num_experts_per_tok 5"):
        load_config(tiny("mixtral", num_experts_per_tok=5))


# Errors: ModelSpec raised plain ValueError / FileNotFoundError; now both sides raise the typed
# errors (still ValueError / FileNotFoundError subclasses, so old handlers keep working).
def test_both_sides_raise_the_typed_errors(tmp_path):
    for read in (load_config, ModelSpec.from_hf_config):
        with pytest.raises(MissingCheckpointFileError, match="nowhere"):
            read(tmp_path / "nowhere")
        with pytest.raises(UnknownArchitectureError, match="'gpt2' is not supported"):
            read({"model_type": "gpt2"})
        with pytest.raises(ConfigError, match="num_key_value_heads"):
            read({"model_type": "llama", "num_key_value_heads": 5})
    assert issubclass(MissingCheckpointFileError, FileNotFoundError)
    assert issubclass(UnknownArchitectureError, ValueError)


# No model_type: ModelSpec took the family from a known class in "architectures" (as vLLM
# picks its implementation); the model parser refused.
def test_a_known_architecture_names_the_family():
    cfg = tiny("qwen3")
    del cfg["model_type"]
    assert load_config(cfg).model_type == "qwen3"
    with pytest.raises(ConfigError, match="no 'model_type'"):
        load_config({"architectures": ["GPT2LMHeadModel"]})


# What the torch modules do not implement (a GELU MLP, YaRN RoPE) is a valid config: the parser
# reads it and ModelSpec counts it; the model refuses to build. The model parser refused to parse.
def test_unimplemented_features_parse_and_the_model_refuses():
    gelu = tiny("llama", hidden_act="gelu")
    assert load_config(gelu).hidden_act == "gelu"
    assert ModelSpec.from_hf_config(gelu) == ModelSpec.from_hf_config(tiny("llama"))
    with pytest.raises(ConfigError, match="hidden_act='gelu' is not supported"):
        load_model(gelu)
    yarn = tiny(
        "qwen2",
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
    )
    assert load_config(yarn).rope.rope_type == "yarn"
    assert ModelSpec.from_hf_config(yarn).num_params > 0
    with pytest.raises(ConfigError, match="rope type 'yarn' is not supported"):
        load_model(yarn)


def test_nemotron_h_parses_but_has_no_torch_model():
    config = load_config(preset_config("tiny-nemotron-h"))
    assert config.layer_types == ("mamba", "none", "attention", "none", "mamba", "none")
    assert config.mlp_types == ("none", "dense", "none", "dense", "none", "moe")
    with pytest.raises(
        UnknownArchitectureError, match="'nemotron_h' is not supported by the torch"
    ):
        load_model(config)
