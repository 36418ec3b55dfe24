"""Checkpoint directories: clear errors, random models from configs, save -> transformers."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from core.model import (
    ConfigError,
    MissingCheckpointFileError,
    MissingWeightError,
    ModelConfig,
    UnknownArchitectureError,
    load_config,
    load_model,
    load_tokenizer,
    save_model,
)

from .conftest import ARCHS, hf_config, hf_logits
from .paged import PagedRunner


def copy_of(src, dst):
    shutil.copytree(src, dst)
    return dst


# -- errors name what is missing -----------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(MissingCheckpointFileError, match="checkpoint directory not found: .*nope"):
        load_model(tmp_path / "nope")


def test_missing_config(tmp_path):
    with pytest.raises(MissingCheckpointFileError, match=r"config\.json: file not found"):
        load_model(tmp_path)


def test_missing_weights_file(llama_dir, tmp_path):
    shutil.copy(llama_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(MissingCheckpointFileError, match=r"no weights file \(model\.safetensors"):
        load_model(tmp_path)


def test_missing_weight_key(llama_dir, tmp_path):
    d = copy_of(llama_dir, tmp_path / "ckpt")
    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MissingWeightError) as err:
        load_model(d)
    assert "'model.layers.1.self_attn.k_proj.weight' not found" in str(err.value)
    assert "model.safetensors" in str(err.value)


def test_missing_shard(tmp_path):
    model, _ = load_model(hf_config("llama"))
    save_model(model, tmp_path, max_shard_size="100KB")
    victim = sorted(tmp_path.glob("model-*-of-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(MissingCheckpointFileError, match=victim.name):
        load_model(tmp_path)


def test_unknown_architecture(llama_dir, tmp_path):
    d = copy_of(llama_dir, tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnknownArchitectureError, match="model_type 'gpt2' is not supported"):
        load_model(d)


@pytest.mark.parametrize(
    "edit,message",
    [
        # a missing key takes transformers' default (hidden_size 4096), which the weights contradict
        (
            lambda c: c.pop("hidden_size"),
            r"'model.embed_tokens.weight' has shape \(512, 64\), config.json implies \(512, 4096\)",
        ),
        (lambda c: [c.pop("model_type"), c.pop("architectures")], "no 'model_type' key"),
        (
            lambda c: c.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}),
            "rope type 'yarn' is not supported",
        ),
        (lambda c: c.update(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
        (
            lambda c: c.update(intermediate_size=100),
            "'model.layers.0.mlp.gate_proj.weight' has 128 rows",
        ),
    ],
)
def test_bad_config(llama_dir, tmp_path, edit, message):
    d = copy_of(llama_dir, tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=message):
        load_model(d)


def test_config_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        load_model(tmp_path)


# -- configs, random models, weight names ----------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_weight_map_covers_every_parameter(arch):
    model, _ = load_model(hf_config(arch))
    assert set(model.hf_weight_map()) == {n for n, _ in model.named_parameters()}


def test_config_sources_agree(llama_dir):
    hf_cfg = hf_config("llama")
    from_dir = load_config(llama_dir)
    from_obj = load_config(hf_cfg)
    from_dict = load_config(json.loads(hf_cfg.to_json_string()))
    assert from_dir == from_obj == from_dict
    assert load_config(from_dir) is from_dir
    assert isinstance(from_dir, ModelConfig) and from_dir.rope.rope_type == "llama3"


def test_random_models_are_seeded():
    cfg = hf_config("mixtral")
    a, _ = load_model(cfg, seed=1)
    b, _ = load_model(cfg, seed=1)
    c, _ = load_model(cfg, seed=2)
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert not torch.equal(
        pa["layers.0.self_attn.qkv_proj.weight"], pc["layers.0.self_attn.qkv_proj.weight"]
    )


@pytest.mark.parametrize("arch", ["qwen3", "bamba"])
def test_random_model_saved_loads_in_transformers(arch, tmp_path):
    model, _ = load_model(hf_config(arch), seed=3)
    save_model(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens = list(range(5, 17))
    ours = PagedRunner(model).step({0: tokens})[0]
    assert (ours - hf_logits(hf, tokens)).abs().max() < 3e-5


def test_bf16_load_runs_close_to_fp32(llama_dir):
    fp32, _ = load_model(llama_dir)
    bf16, _ = load_model(llama_dir, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    tokens = list(range(3, 15))
    a = PagedRunner(fp32).step({0: tokens})[0]
    b = PagedRunner(bf16).step({0: tokens})[0]
    assert b.dtype == torch.float32 and (a - b).abs().max() < 0.2


def test_tokenizer_round_trip(llama_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    assert load_tokenizer(llama_dir) is None
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    model, _ = load_model(llama_dir)
    save_model(model, tmp_path, tokenizer=tok)
    assert load_tokenizer(tmp_path).encode("hello world again").ids == [1, 2, 0]
