"""Our paged varlen forward equals transformers' forward and generate, for every architecture.

Each case saves a tiny random transformers model with ``save_pretrained``, loads it with
``core.model.load_model`` and runs it through the paged path (shuffled block tables, mixed
prefill / chunked prefill / decode batches). Tolerances are fp32 max-abs on logits of magnitude
~3; the achieved error is 1.5e-6 to 3e-6, the bound leaves ~10x room for BLAS differences,
while a real bug (e.g. RoPE at wrong positions) moves logits by ~1.
"""

from __future__ import annotations

import pytest
import torch
import transformers

import core.kernels.linear as linear_module
from core.kernels.linear import cpp_supported, onednn_supported
from core.model import load_model, save_model

from .conftest import VOCAB, build_hf, hf_logits
from .paged import PagedRunner

# max |our logits - transformers logits|, fp32
TOL = {"llama": 2e-5, "mistral": 2e-5, "qwen2": 2e-5, "qwen3": 2e-5, "mixtral": 2e-5, "bamba": 3e-5}


# every linear backend that runs here ("cpp" also runs the small ops and decode attention on
# the C++ kernels)
BACKENDS = [
    "torch",
    pytest.param(
        "onednn",
        marks=pytest.mark.skipif(
            not onednn_supported("cpu", torch.float32),
            reason="oneDNN cannot pack fp32 weights here",
        ),
    ),
    pytest.param(
        "cpp",
        marks=pytest.mark.skipif(
            not cpp_supported("cpu", torch.float32), reason="the CPU extension cannot be built"
        ),
    ),
]
# the attention backend each linear backend is tested with
ATTENTION = {"torch": "torch", "onednn": "torch", "cpp": "cpp"}


@pytest.fixture
def linear_backend(request, monkeypatch):
    """The backend under test; oneDNN takes every product, however small (these models are)."""
    if request.param == "onednn":
        monkeypatch.setattr(linear_module, "PACKED_MIN_MACS", 0)
    return request.param


def _tokens(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n,), generator=g).tolist()


@pytest.mark.parametrize("linear_backend", BACKENDS, indirect=True)
def test_logits_match_through_prefill_chunks_and_decode(hf_checkpoint, linear_backend):
    arch, hf, path = hf_checkpoint
    model, _ = load_model(path)
    model.set_linear_backend(linear_backend)
    model.set_attention_backend(ATTENTION[linear_backend])
    runner = PagedRunner(model, block_size=4)
    a, b, c = _tokens(11, 1), _tokens(9, 2), _tokens(6, 3)
    decode = iter(_tokens(12, 4))
    schedule = [
        {"a": a, "b": b[:4]},  # a: whole prompt; b: first chunk
        {"b": b[4:], "a": [next(decode)]},  # b: second chunk after its cached prefix
        {"a": [next(decode)], "c": c, "b": [next(decode)]},  # decodes next to a new prompt
        {"c": [next(decode)], "a": [next(decode)], "b": [next(decode)]},
        {"b": [next(decode)], "c": [next(decode)], "a": [next(decode)]},
    ]
    worst = 0.0
    for work in schedule:
        got = runner.step(work)
        for key, new in work.items():
            ref = hf_logits(hf, runner.seqs[key].tokens)[-len(new) :]
            worst = max(worst, (got[key] - ref).abs().max().item())
    assert worst < TOL[arch], f"{arch} ({linear_backend}): max |dlogits| = {worst:.2e}"


@pytest.mark.parametrize("linear_backend", BACKENDS, indirect=True)
def test_greedy_batch_matches_generate(hf_checkpoint, linear_backend):
    arch, hf, path = hf_checkpoint
    model, _ = load_model(path)
    model.set_linear_backend(linear_backend)
    model.set_attention_backend(ATTENTION[linear_backend])
    prompts = [_tokens(3, 10), _tokens(14, 11), _tokens(8, 12)]
    n_new = 6
    ours = PagedRunner(model, block_size=4).generate(prompts, n_new)
    for prompt, got in zip(prompts, ours, strict=True):
        out = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=n_new,
            do_sample=False,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )
        assert got == out[0, len(prompt) :].tolist(), arch


def test_our_save_loads_in_transformers(hf_checkpoint, tmp_path):
    arch, hf, path = hf_checkpoint
    model, _ = load_model(path)
    save_model(model, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens = _tokens(10, 5)
    assert torch.equal(hf_logits(reloaded, tokens), hf_logits(hf, tokens))
    again, _ = load_model(tmp_path)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), again.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_sharded_checkpoints_both_ways(tmp_path):
    hf = build_hf("llama")
    hf_dir, our_dir = tmp_path / "hf", tmp_path / "ours"
    hf.save_pretrained(hf_dir, max_shard_size="100KB")
    assert (hf_dir / "model.safetensors.index.json").is_file()
    model, _ = load_model(hf_dir)
    save_model(model, our_dir, max_shard_size="100KB")
    shards = sorted(p.name for p in our_dir.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (our_dir / "model.safetensors").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(our_dir).eval()
    tokens = _tokens(9, 6)
    assert torch.equal(hf_logits(reloaded, tokens), hf_logits(hf, tokens))
    runner = PagedRunner(model)
    got = runner.step({0: tokens})[0]
    assert (got - hf_logits(hf, tokens)).abs().max() < TOL["llama"]


@pytest.mark.parametrize("block_size", [1, 16])
def test_block_size_does_not_change_logits(block_size):
    hf = build_hf("qwen2")
    model, _ = load_model(hf.config)  # random weights from the config; compare paths only
    tokens = _tokens(13, 7)
    base = PagedRunner(model, block_size=4).step({0: tokens})[0]
    other = PagedRunner(model, block_size=block_size).step({0: tokens})[0]
    assert (base - other).abs().max() < 1e-5
