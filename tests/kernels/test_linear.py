"""The oneDNN linear path against its reference, ``F.linear``, and when it must not be used."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import core.kernels.linear as linear_module
from core.engine import LLM, SamplingParams
from core.kernels.linear import (
    LINEAR_BACKEND_ENV,
    Linear,
    PackedWeight,
    cpp_supported,
    linear,
    onednn_supported,
    resolve_linear_backend,
)

needs_onednn = pytest.mark.skipif(
    not onednn_supported("cpu", torch.float32), reason="oneDNN cannot pack fp32 weights here"
)


@pytest.fixture
def any_size(monkeypatch):
    """Send every product, however small, through a valid pack (these tests use small ones)."""
    monkeypatch.setattr(linear_module, "PACKED_MIN_MACS", 0)


def _counting(monkeypatch) -> list[int]:
    """Count the calls that really go through a packed weight."""
    calls = [0]
    real = PackedWeight.matmul

    def counted(self, x, bias):
        calls[0] += 1
        return real(self, x, bias)

    monkeypatch.setattr(PackedWeight, "matmul", counted)
    return calls


@needs_onednn
@pytest.mark.parametrize("rows", [1, 3, 16, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_matches_reference(rows, bias, monkeypatch, any_size):
    calls = _counting(monkeypatch)
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(200, 96, generator=g)
    b = torch.randn(200, generator=g) if bias else None
    x = torch.randn(rows, 96, generator=g)
    got = linear(x, w, b, PackedWeight(w))
    assert calls[0] == 1
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_leading_axes_and_non_contiguous_inputs(any_size):
    w = torch.randn(40, 24)
    x = torch.randn(3, 5, 48)[..., ::2]  # [3, 5, 24], strided
    got = linear(x, w, None, PackedWeight(w))
    assert got.shape == (3, 5, 40)
    torch.testing.assert_close(got, F.linear(x, w), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_a_stale_pack_is_never_used(monkeypatch, any_size):
    calls = _counting(monkeypatch)
    layer = Linear(16, 8)
    layer.requires_grad_(False)
    layer.set_backend("onednn")
    x = torch.randn(4, 16)
    layer(x)
    assert calls[0] == 1
    with torch.no_grad():
        layer.weight.mul_(2.0)  # in place: the version counter moves
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.weight = nn.Parameter(torch.randn(8, 16), requires_grad=False)  # another tensor
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    assert calls[0] == 1
    layer.set_backend("onednn")  # packing again makes the fast path usable again
    layer(x)
    assert calls[0] == 2


@needs_onednn
def test_autograd_falls_back_to_the_reference(any_size):
    layer = Linear(16, 8)  # parameters require grad
    layer.set_backend("onednn")
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


@needs_onednn
def test_small_products_stay_on_the_reference(monkeypatch):
    calls = _counting(monkeypatch)
    w = torch.randn(256, 256)
    pack = PackedWeight(w)
    small = torch.randn(linear_module.PACKED_MIN_MACS // w.numel() - 1, 256)
    assert torch.equal(linear(small, w, None, pack), F.linear(small, w))
    assert calls[0] == 0
    large = torch.randn(linear_module.PACKED_MIN_MACS // w.numel() + 1, 256)
    linear(large, w, None, pack)
    assert calls[0] == 1


def test_torch_backend_and_state_dict_are_nn_linear():
    layer = Linear(16, 8)
    layer.set_backend("torch")
    assert layer.packed is None
    assert set(layer.state_dict()) == set(nn.Linear(16, 8).state_dict()) == {"weight", "bias"}


def test_resolve_backend(monkeypatch):
    monkeypatch.delenv(LINEAR_BACKEND_ENV, raising=False)
    assert resolve_linear_backend("torch", "cpu", torch.float32) == "torch"
    assert resolve_linear_backend(None, "cuda", torch.float32) == "torch"  # auto off CPU
    auto = resolve_linear_backend(None, "cpu", torch.float32)
    fallback = "onednn" if onednn_supported("cpu", torch.float32) else "torch"
    assert auto == ("cpp" if cpp_supported("cpu", torch.float32) else fallback)
    monkeypatch.setenv(LINEAR_BACKEND_ENV, "torch")
    assert resolve_linear_backend(None, "cpu", torch.float32) == "torch"
    with pytest.raises(ValueError, match="unknown linear backend 'mkl'"):
        resolve_linear_backend("mkl", "cpu", torch.float32)
    with pytest.raises(RuntimeError, match="'onednn' cannot run"):
        resolve_linear_backend("onednn", "cuda", torch.float32)


@needs_onednn
@pytest.mark.parametrize("tied", [False, True])
def test_engine_on_onednn_generates_the_same_tokens(tied, monkeypatch, any_size):
    monkeypatch.delenv(LINEAR_BACKEND_ENV, raising=False)
    config = dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
    )
    prompts = [[5, 9, 11, 3, 7] * k for k in (1, 3, 6)]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    outputs = {}
    for backend in ("torch", "onednn"):
        llm = LLM(config, seed=3, num_kv_blocks=64, linear_backend=backend)
        calls = _counting(monkeypatch)
        outputs[backend] = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        assert (calls[0] > 0) == (backend == "onednn"), backend
    assert llm.model.linear_backend == "onednn"
    assert all(m.packed is not None for m in llm.model.modules() if isinstance(m, Linear))
    assert (llm.model._tied_head_pack is not None) == tied  # the embedding as LM head, packed too
    assert outputs["torch"] == outputs["onednn"]
