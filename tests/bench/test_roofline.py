"""Roofline math and measurement helpers of scripts/bench/roofline.py."""

from __future__ import annotations

import math

import pytest

from core.model.spec import ModelSpec
from scripts.bench import roofline as rf


def test_gemm_flops_counts_multiply_and_add():
    assert rf.gemm_flops(2, 3, 4) == 48


def test_compute_and_memory_bounds():
    assert rf.compute_time(1e12, 1e11) == pytest.approx(10.0)
    assert rf.memory_time(5e9, 1e10) == pytest.approx(0.5)
    assert rf.compute_time(0, 1e9) == 0


def test_roofline_time_is_the_larger_bound():
    # compute bound: 1 TFLOP at 100 GFLOP/s = 10 s > 1 GB at 10 GB/s = 0.1 s
    assert rf.roofline_time(1e12, 1e9, peak_flops=1e11, bandwidth=1e10) == pytest.approx(10.0)
    # memory bound: 1 GFLOP = 0.01 s < 1 GB = 0.1 s
    assert rf.roofline_time(1e9, 1e9, peak_flops=1e11, bandwidth=1e10) == pytest.approx(0.1)
    # compute only without a bandwidth
    assert rf.roofline_time(1e9, peak_flops=1e11) == pytest.approx(0.01)


def test_roofline_throughput_and_percent():
    # 1000 tokens, 1 TFLOP, at 100 GFLOP/s: >= 10 s, so <= 100 tokens/s
    assert rf.roofline_throughput(1000, 1e12, peak_flops=1e11) == pytest.approx(100.0)
    bound = rf.roofline_time(1e12, peak_flops=1e11)
    # measured 40 s against a 10 s bound: 25% of roofline == 25 tok/s of 100 tok/s
    assert rf.percent_of_roofline(40.0, bound) == pytest.approx(25.0)
    assert rf.percent_of_roofline(bound, bound) == pytest.approx(100.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: rf.compute_time(1.0, 0.0),
        lambda: rf.compute_time(-1.0, 1.0),
        lambda: rf.memory_time(1.0, math.inf),
        lambda: rf.roofline_time(1.0, 1.0, peak_flops=1.0),  # bytes but no bandwidth
        lambda: rf.roofline_throughput(1, 0.0, peak_flops=1.0),  # no work, no bound
        lambda: rf.percent_of_roofline(0.0, 1.0),
    ],
)
def test_bad_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


class _FakeSpec:
    """prefill of p tokens = 1000 p FLOPs; a decode at context c = 10 c + 1 FLOPs."""

    def prefill_flops(self, p):
        return 1000.0 * p

    def decode_flops(self, c):
        return 10.0 * c + 1


def test_workload_flops_sums_prefills_and_decodes():
    # request (3, 1): prefill only; request (2, 3): prefill + decodes at contexts 2 and 3
    got = rf.workload_flops(_FakeSpec(), [3, 2], [1, 3])
    assert got == 3000 + 2000 + (21 + 31)
    with pytest.raises(ValueError):
        rf.workload_flops(_FakeSpec(), [3], [1, 2])
    with pytest.raises(ValueError):
        rf.workload_flops(_FakeSpec(), [3], [0])


def test_workload_flops_on_the_model_spec_matches_token_by_token():
    spec = ModelSpec.from_preset("tiny-llama-125m")
    p, o = 40, 5
    # prefill_flops(n, all_logits=True) == sum of decode_flops over contexts 0..n-1
    one_by_one = spec.prefill_flops(p + o - 1, all_logits=True)
    expected = one_by_one - spec.prefill_flops(p, all_logits=True) + spec.prefill_flops(p)
    assert rf.workload_flops(spec, [p], [o]) == pytest.approx(expected, rel=1e-12)


def test_decode_step_cost_of_the_tiny_llama():
    spec = ModelSpec.from_preset("tiny-llama-125m")
    f1, b1 = rf.decode_step_cost(spec, [128], "float32")
    f4, b4 = rf.decode_step_cost(spec, [128] * 4, "float32")
    assert f1 == pytest.approx(spec.decode_flops(128), rel=1e-9)
    assert f4 == pytest.approx(4 * f1, rel=1e-9)
    # weights are read once per step (all but the embedding table, of which one row per token)
    emb = spec.vocab_size * spec.hidden_size * 4
    assert spec.weight_bytes("float32") - emb < b1 < spec.weight_bytes("float32")
    extra_kv = 3 * 128 * spec.kv_bytes_per_token("float32")
    assert extra_kv < b4 - b1 < 2 * extra_kv  # 3 more sequences' KV, plus their activations
    # at batch 1, on any CPU-like machine (100 GFLOP/s, 20 GB/s), decode is memory bound
    assert rf.memory_time(b1, 20e9) > rf.compute_time(f1, 100e9)
    # bf16 halves the bytes
    assert rf.decode_step_cost(spec, [128], "bfloat16")[1] == pytest.approx(b1 / 2, rel=1e-6)


def test_time_best_runs_once_untimed_then_repeats():
    calls = []
    best = rf.time_best(lambda: calls.append(1), repeats=3)
    assert len(calls) == 4 and best >= 0
    with pytest.raises(ValueError):
        rf.time_best(lambda: None, repeats=0)


def test_measure_gemm_peak_small():
    import torch

    out = rf.measure_gemm_peak(
        torch.float32, sizes=(32, 64), shapes=[(8, 32, 48)], repeats=2, budget_s=0.2
    )
    methods = {r["method"] for r in out["runs"]}
    assert methods == {"torch.matmul", "torch.nn.functional.linear"}
    assert {(r["m"], r["k"], r["n"]) for r in out["runs"]} == {
        (32, 32, 32),
        (64, 64, 64),
        (8, 32, 48),
    }
    assert out["peak_flops"] == max(r["flops_per_s"] for r in out["runs"]) > 0
    assert set(out["best"]) == {"method", "m", "k", "n"} and "2 m k n" in out["method"]
    with pytest.raises(ValueError):
        rf.measure_gemm_peak(torch.float32, sizes=())


def test_measure_gemm_peak_skips_products_predicted_too_slow():
    import torch

    out = rf.measure_gemm_peak(
        torch.float32, sizes=(16, 4096), shapes=[(4096, 64, 4096)], repeats=1, max_single_s=1e-9
    )
    assert {r["n"] for r in out["runs"]} == {16}
    assert len(out["skipped"]) == 4  # two products, two methods


def test_model_gemm_shapes_of_the_tiny_llama():
    spec = ModelSpec.from_preset("tiny-llama-125m")
    shapes = rf.model_gemm_shapes(spec, 64)
    assert shapes == [
        (64, 768, 768 + 2 * 256),
        (64, 768, 768),
        (64, 768, 4096),
        (64, 2048, 768),
        (64, 768, 32000),
    ]
    # per layer, the projections are the layer's matmul parameters
    per_layer = sum(k * n for _, k, n in shapes[:4])
    assert 12 * per_layer + 768 * 32000 == spec.num_params - 32000 * 768 - 25 * 768
    assert rf.model_gemm_shapes(ModelSpec.from_preset("tiny-mixtral"), 8) == [
        (8, 64, 64 + 2 * 32),
        (8, 64, 64),
        (8, 64, 256),
    ]  # MoE experts are not listed


def test_measure_bandwidth_small():
    out = rf.measure_bandwidth(mib=4, repeats=2)
    assert out["bandwidth"] == max(out["copy_bytes_per_s"], out["sum_bytes_per_s"]) > 0
    assert out["mib"] == 4
    with pytest.raises(ValueError):
        rf.measure_bandwidth(mib=0)
