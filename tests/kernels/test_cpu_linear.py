"""The C++ linear kernel (linear backend "cpp") against its reference, F.linear: shapes, row
counts 1..64 and beyond, dtypes, bias, strided inputs; its selection and its fallback when the
extension cannot be built."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import core.kernels.linear as linear_module
from core.engine import LLM, SamplingParams
from core.kernels import cpu_ext
from core.kernels.linear import (
    CppPackedWeight,
    Linear,
    cpp_supported,
    linear,
    onednn_supported,
    resolve_linear_backend,
)
from tests.model.conftest import hf_config

TOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2}  # relative to the output's scale


def _reference(x, w, b):
    """F.linear in float64, rounded once to the input dtype (what fp32 accumulation gives up
    to summation order)."""
    out = F.linear(x.double(), w.double(), None if b is None else b.double())
    return out.to(x.dtype)


def _close(got, want):
    scale = want.double().abs().max().item() + 1.0
    err = (got.double() - want.double()).abs().max().item()
    assert err <= TOL[want.dtype] * scale, f"max error {err:.3g} at scale {scale:.3g}"


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 64),
    out_features=st.integers(1, 200),
    in_features=st.integers(1, 96),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    bias=st.booleans(),
    strided=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_packed_linear_matches_reference(
    ext, rows, out_features, in_features, dtype, bias, strided, seed
):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g).to(dtype)
    b = torch.randn(out_features, generator=g).to(dtype) if bias else None
    x = torch.randn(rows, in_features * (2 if strided else 1), generator=g).to(dtype)
    if strided:
        x = x[:, ::2]  # every other column: a non-contiguous input
    packed = ext.pack_linear_weight(w)
    _close(ext.packed_linear(x, packed, out_features, b), _reference(x, w, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [49, 97, 300])  # several row chunks per weight group
def test_many_rows_in_the_kernel_itself(ext, rows, dtype):
    g = torch.Generator().manual_seed(rows)
    w, b = torch.randn(130, 70, generator=g).to(dtype), torch.randn(130, generator=g).to(dtype)
    x = torch.randn(rows, 70, generator=g).to(dtype)
    _close(ext.packed_linear(x, ext.pack_linear_weight(w), 130, b), _reference(x, w, b))


def test_bf16_weights_pack_in_k_pairs_where_the_cpu_has_bf16_dot_products(ext):
    w = torch.randn(70, 6).bfloat16()
    packed = ext.pack_linear_weight(w)
    if not ext.linear_bf16_dot():
        assert packed.shape[1] == 6  # k-major, widened to fp32 in the kernel
        return
    width = ext.linear_group_width()
    assert packed.shape == (2, 3, 2 * width)  # [groups, K/2, outputs x 2]
    # output row 1's first pair sits at positions 2, 3 of pair-row 0 of group 0
    assert torch.equal(packed[0, 0, 2:4], w[1, 0:2])
    assert torch.equal(packed[1, 2, 2 * 5 : 2 * 5 + 2], w[width + 5, 4:6])
    assert torch.equal(packed[1, :, 2 * 6 :], torch.zeros_like(packed[1, :, 2 * 6 :]))  # padding
    odd = ext.pack_linear_weight(torch.randn(70, 5).bfloat16())  # odd K: the k-major layout
    assert odd.shape == (2, 5, width)


class _Spy:
    """Stands in for the extension in a pack, recording the row count of each kernel call."""

    def __init__(self, ext):
        self.ext, self.rows = ext, []

    def packed_linear(self, x, *args):
        self.rows.append(x.shape[0])
        return self.ext.packed_linear(x, *args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_routes_by_row_count(ext, dtype):
    """Up to CPP_MAX_ROWS rows go to the C++ kernel, more to oneDNN where it runs; both equal
    the reference, with leading axes and strided inputs."""
    w = torch.randn(40, 24).to(dtype)
    pack = CppPackedWeight(w, ext)
    spy = pack._ext = _Spy(ext)
    limit = linear_module.cpp_max_rows(dtype, ext)
    for shape in [(1, 24), (2, limit // 2, 48), (limit + 1, 24)]:
        x = torch.randn(*shape).to(dtype)
        if shape[-1] == 48:
            x = x[..., ::2]
        got = linear(x, w, None, pack)
        assert got.shape == (*x.shape[:-1], 40)
        _close(got, _reference(x, w, None))
    big = 1 if pack.large is None else 0  # without oneDNN the kernel takes every size
    assert spy.rows == [1, limit // 2 * 2] + [limit + 1] * big


def test_a_stale_pack_is_never_used(ext):
    layer = Linear(16, 8)
    layer.requires_grad_(False)
    layer.set_backend("cpp")
    assert isinstance(layer.packed, CppPackedWeight)
    x = torch.randn(2, 16)
    with torch.no_grad():
        layer.weight.mul_(2.0)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.weight = nn.Parameter(torch.randn(8, 16), requires_grad=False)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_autograd_falls_back_to_the_reference(ext):
    layer = Linear(16, 8)
    layer.set_backend("cpp")
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_bad_calls_raise_clear_errors(ext):
    packed = ext.pack_linear_weight(torch.randn(8, 16))
    with pytest.raises(RuntimeError, match="x is BFloat16 but the weight is Float"):
        ext.packed_linear(torch.randn(2, 16).bfloat16(), packed, 8, None)
    with pytest.raises(RuntimeError, match="does not match"):
        ext.packed_linear(torch.randn(2, 12), packed, 8, None)
    with pytest.raises(RuntimeError, match="fp32 or bf16"):
        ext.pack_linear_weight(torch.randn(8, 16).half())


def test_auto_and_explicit_cpp(ext, monkeypatch):
    monkeypatch.delenv(linear_module.LINEAR_BACKEND_ENV, raising=False)
    assert resolve_linear_backend(None, "cpu", torch.float32) == "cpp"
    assert resolve_linear_backend("cpp", "cpu", torch.bfloat16) == "cpp"
    with pytest.raises(RuntimeError, match="'cpp' cannot run"):
        resolve_linear_backend("cpp", "cuda", torch.float32)
    with pytest.raises(RuntimeError, match="'cpp' cannot run"):
        resolve_linear_backend("cpp", "cpu", torch.float16)


@pytest.fixture
def no_compiler(monkeypatch):
    """The extension as on a machine without a compiler: building it raises."""

    def fail():
        raise FileNotFoundError("c++: command not found")

    monkeypatch.setattr(cpu_ext, "_build", fail)
    cpu_ext.load.cache_clear()
    yield
    cpu_ext.load.cache_clear()  # the next test loads the real (cached) build again


def test_without_a_compiler_cpp_warns_once_and_falls_back(no_compiler):
    with pytest.warns(RuntimeWarning, match="unavailable, using the torch kernels") as caught:
        fallback = resolve_linear_backend("cpp", "cpu", torch.float32)
        resolve_linear_backend(None, "cpu", torch.float32)
        assert not cpp_supported("cpu", torch.float32)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert fallback == ("onednn" if onednn_supported("cpu", torch.float32) else "torch")


def test_disabled_extension_is_silent(monkeypatch):
    monkeypatch.setenv(cpu_ext.CPU_EXT_ENV, "0")
    cpu_ext.load.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert cpu_ext.load() is None
    finally:
        monkeypatch.delenv(cpu_ext.CPU_EXT_ENV)
        cpu_ext.load.cache_clear()


PROMPTS = [[5, 9, 11, 3, 7] * k for k in (1, 3, 6)]


def _generate(arch="llama", **kwargs):
    llm = LLM(hf_config(arch), seed=3, num_kv_blocks=64, **kwargs)
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    return llm, [o.token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]


def test_engine_without_a_compiler_generates_the_reference_tokens(no_compiler):
    with pytest.warns(RuntimeWarning, match="unavailable"):
        llm, got = _generate(linear_backend="cpp")
    assert llm.model.linear_backend in ("onednn", "torch")
    assert llm.model.attention_backend().name == "torch"
    assert got == _generate(linear_backend="torch", attention_backend="torch")[1]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])  # qwen3: the LM head is the embedding
def test_engine_on_cpp_generates_the_reference_tokens(ext, arch, monkeypatch):
    monkeypatch.delenv(linear_module.LINEAR_BACKEND_ENV, raising=False)
    llm = LLM(hf_config(arch), seed=3, num_kv_blocks=64)  # auto
    assert llm.model.linear_backend == "cpp" and llm.model.attention_backend().name == "cpp"
    assert isinstance(llm.model._tied_head_pack, CppPackedWeight) == (arch == "qwen3")
    spy = _Spy(ext)
    for module in llm.model.modules():
        if isinstance(module, Linear):
            module.packed._ext = spy
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    got = [o.token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    assert len(PROMPTS) in spy.rows  # the decode steps of the three prompts ran on it
    assert got == _generate(arch, linear_backend="torch", attention_backend="torch")[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_models_packs_share_one_allocation_in_forward_order(ext, dtype):
    from core.model import load_model
    from tests.model.conftest import hf_config

    model, _ = load_model(hf_config("llama"), seed=1)
    model = model.to(dtype)
    model.set_linear_backend("cpp")
    packs = [m.packed for m in model.modules() if isinstance(m, Linear)]
    assert all(isinstance(p, CppPackedWeight) for p in packs)
    base = packs[0].packed.untyped_storage().data_ptr()
    starts = [p.packed.data_ptr() for p in packs]
    assert all(p.packed.untyped_storage().data_ptr() == base for p in packs)
    assert starts == sorted(starts)  # layer by layer, the LM head last
    for a, b in zip(packs[:-1], packs[1:], strict=True):  # back to back
        assert (
            a.packed.data_ptr() + a.packed.numel() * a.packed.element_size() == b.packed.data_ptr()
        )
    x = torch.randn(3, model.config.hidden_size).to(dtype)
    head = model.lm_head
    _close(head(x), _reference(x, head.weight, None))  # the moved pack still computes the product
