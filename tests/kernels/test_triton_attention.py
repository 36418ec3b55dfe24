"""The Triton paged-attention backend equals the torch reference, run here on CPU tensors in
Triton's interpreter (``TRITON_INTERPRET=1``), plus a check that its kernels compile for CUDA.

Triton reads ``TRITON_INTERPRET`` whenever a function is decorated with ``triton.jit``: its own
library (``tl.zeros``, ...) when ``triton`` is imported, the backend's kernels at its first
forward. So the variable is set before this module imports triton, removed again so other
test modules never see it, and set for each test here by an autouse fixture. Shapes are tiny:
the interpreter runs every program instance in Python.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

_before = os.environ.get("TRITON_INTERPRET")
if "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    triton = pytest.importorskip(
        "triton", reason="optional Triton attention backend: triton is not installed"
    )
finally:
    if _before is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _before
# tl.zeros stays a compiled-only JITFunction if triton was imported without the interpreter
interpreted = pytest.mark.skipif(
    isinstance(triton.language.zeros, triton.runtime.JITFunction),
    reason="triton was imported before TRITON_INTERPRET=1 was set (e.g. by torch.compile)",
)

from core.kernels import (  # noqa: E402
    ATTENTION_BACKEND_ENV,
    TorchPagedAttention,
    attention_backends,
    get_attention_backend,
    paged_attention,
)
from core.kernels.triton_attention import TritonPagedAttention  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# 16-wide tiles so that contexts of a few dozen tokens span several tiles (online softmax)
SMALL_TILES = TritonPagedAttention(block_m=16, block_n=16)


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(ATTENTION_BACKEND_ENV, raising=False)


def compare(
    specs,
    heads,
    kv_heads,
    *,
    block_size,
    head_dim=16,
    window=None,
    seed=0,
    dtype=torch.float32,
    backend=SMALL_TILES,
    padding=0,
):
    """specs: per sequence (cached tokens, new tokens). Builds a random paged batch (shuffled
    block ids, unused blocks full of noise), runs the reference and ``backend`` on copies of
    the caches and returns the max abs difference of their outputs; the caches must match."""
    gen = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-(c + n) // block_size) for c, n in specs) + 3
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(dtype)
    v_cache = torch.randn(shape, generator=gen).to(dtype)
    free = list(range(num_blocks))
    random.Random(seed).shuffle(free)
    tables, slots, starts = [], [], [0]
    for cached, new in specs:
        table = [free.pop() for _ in range(-(-(cached + new) // block_size))]
        tables.append(table)
        slots += [
            table[p // block_size] * block_size + p % block_size
            for p in range(cached, cached + new)
        ]
        starts.append(starts[-1] + new)
    rows = starts[-1] + padding  # padding rows: slot -1, past query_start_loc[-1]
    width = max(len(t) for t in tables)
    batch = dict(
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor([c + n for c, n in specs], dtype=torch.int32),
        block_tables=torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int32),
        slot_mapping=torch.tensor(slots + [-1] * padding),
        sliding_window=window,
    )
    q = torch.randn(rows, heads, head_dim, generator=gen).to(dtype)
    k = torch.randn(rows, kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(rows, kv_heads, head_dim, generator=gen).to(dtype)
    outs, caches = [], []
    for be in (TorchPagedAttention(), backend):
        kc, vc = k_cache.clone(), v_cache.clone()
        outs.append(paged_attention(q, k, v, kc, vc, backend=be, **batch))
        caches.append((kc, vc))
    assert torch.equal(caches[0][0], caches[1][0]) and torch.equal(caches[0][1], caches[1][1])
    assert outs[1].dtype == dtype and outs[1].shape == q.shape
    if padding:
        assert not outs[1][starts[-1] :].any()  # padding rows come back zero, as in the reference
    return (outs[0].double() - outs[1].double()).abs().max().item()


# prefill from scratch, chunks after a cached context, decodes; lengths off the block grid
MIXED = [(0, 7), (5, 1), (9, 4), (0, 1), (12, 1), (3, 1), (16, 19)]


@interpreted
@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (6, 1)])
def test_mixed_batch_matches_reference(block_size, heads, kv_heads):
    assert compare(MIXED, heads, kv_heads, block_size=block_size, seed=block_size) < 1e-5


@interpreted
@pytest.mark.parametrize("window,block_size", [(1, 4), (3, 16), (8, 5), (20, 4)])
def test_sliding_window(window, block_size):
    specs = [(30, 1), (2, 1), (21, 12), (0, 18), (40, 1)]
    assert compare(specs, 8, 2, block_size=block_size, window=window, seed=window) < 1e-5


@interpreted
def test_long_decode_and_prefill_only_batches_with_default_tiles():
    specs = [(70, 1), (1, 1), (33, 1), (100, 1)]  # several 32-key tiles per sequence
    assert compare(specs, 4, 2, block_size=16, backend=TritonPagedAttention()) < 1e-5
    assert compare(specs, 4, 2, block_size=16) < 1e-5
    specs = [(0, 40), (37, 29)]  # several 32-row query tiles
    assert compare(specs, 4, 1, block_size=4, backend=TritonPagedAttention()) < 1e-5


@interpreted
def test_head_dim_not_a_power_of_two_and_padding_rows():
    assert compare([(6, 1), (3, 5)], 4, 2, block_size=4, head_dim=24, padding=3) < 1e-5


@interpreted
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_half_precision(dtype, tol):  # a couple of ulps of outputs of magnitude ~1
    assert compare(MIXED, 8, 2, block_size=4, window=6, dtype=dtype) < tol


@interpreted
@pytest.mark.parametrize("seed", range(3))
def test_random_batches(seed):
    rng = random.Random(seed)
    specs = [
        (rng.randint(0, 40), rng.choice([1, 1, rng.randint(2, 20)]))
        for _ in range(rng.randint(1, 6))
    ]
    group = rng.choice([1, 2, 4])
    window = rng.choice([None, 2, 7])
    assert (
        compare(specs, 4, 4 // group, block_size=rng.choice([2, 4, 16]), window=window, seed=seed)
        < 1e-5
    )


# -- selection ---------------------------------------------------------------------------


def test_selected_by_name_never_automatically_on_cpu(monkeypatch):
    assert "triton" in attention_backends()
    assert "triton" in attention_backends("cpu")  # in the interpreter only
    assert get_attention_backend().name != "triton"  # auto skips it on CPU
    assert type(get_attention_backend("triton")) is TritonPagedAttention
    monkeypatch.setenv(ATTENTION_BACKEND_ENV, "triton")
    assert type(get_attention_backend()) is TritonPagedAttention
    assert TritonPagedAttention.auto_selectable(torch.device("cuda"))
    assert not TritonPagedAttention.auto_selectable(torch.device("cpu"))
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "triton" not in attention_backends("cpu")
    with pytest.raises(RuntimeError, match="'triton' is not available on cpu"):
        get_attention_backend("triton")


FRESH_PROCESS = """
import sys
import core.kernels, core.model

core.kernels.get_attention_backend()
assert "triton" not in sys.modules, "importing core or choosing a backend imported triton"

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from core.kernels import triton_attention as ta

types = {"out_ptr": "*fp16", "q_ptr": "*fp16", "k_cache_ptr": "*fp16", "v_cache_ptr": "*fp16",
         "scale_log2e": "fp32", "window": "i32"}
consts = dict(PAGE_SIZE=16, GROUP=4, HEAD_DIM=128, BLOCK_D=128, BLOCK_N=64, F32_DOT=False)
for kernel, tile in zip(ta._kernels(), ({"BLOCK_H": 16}, {"BLOCK_M": 64})):
    assert isinstance(kernel, triton.runtime.JITFunction), type(kernel)
    sig = {a: types.get(a, "*i32" if a.endswith("_ptr") else "i32") for a in kernel.arg_names}
    sig.update(dict.fromkeys({**consts, **tile}, "constexpr"))
    compiled = triton.compile(ASTSource(kernel, sig, {**consts, **tile}),
                              target=GPUTarget("cuda", 80, 32))
    assert compiled.asm["cubin"]
"""


def test_fresh_process_imports_triton_only_when_needed_and_kernels_compile_for_cuda(tmp_path):
    """In a process that has not imported triton (this one has, in interpreter mode):

    - importing ``core`` and choosing a backend does not import triton;
    - the kernels compile (fp16, head_dim 128, GQA 4) to cubins for an A100 (sm_80) with the
      ptxas shipped in the triton wheel, no GPU needed: the interpreter accepts code that the
      compiler rejects, so the tests above alone do not show that the kernels build.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    subprocess.run([sys.executable, "-c", FRESH_PROCESS], cwd=ROOT, env=env, check=True)


# -- end to end --------------------------------------------------------------------------


@interpreted
def test_tiny_model_logits_match_reference():
    """A tiny Mistral (GQA, sliding window 5) over prefill, a chunked prefill beside decodes,
    and decode steps: same logits with either backend."""
    from core.model import load_model
    from tests.model.conftest import hf_config
    from tests.model.paged import PagedRunner

    model, _ = load_model(hf_config("mistral"))
    runners = {}
    for name in ("torch", "triton"):
        model.set_attention_backend(name)
        runners[name] = PagedRunner(model, num_blocks=32, block_size=4)
    steps = [
        {"a": [5, 9, 13, 4, 7, 21, 30, 8, 11], "b": [3, 17, 6, 40, 2, 9]},  # prompts
        {"a": [12], "b": [8], "c": [33, 7, 19, 4, 26]},  # decodes + a new prompt's 1st chunk
        {"a": [5], "b": [60], "c": [14, 9, 3, 71, 15, 2, 6]},  # decodes + its 2nd chunk
        {"a": [1], "b": [2], "c": [3]},
        {"a": [4], "b": [5], "c": [6]},
    ]
    for work in steps:
        outs = {}
        for name, runner in runners.items():
            model.set_attention_backend(name)
            outs[name] = runner.step(work)
        for key in work:
            assert torch.allclose(outs["torch"][key], outs["triton"][key], atol=1e-5, rtol=0)
    assert model.attention_backend().name == "triton"
