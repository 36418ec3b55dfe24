"""The hardware table: lookup, datasheet figures (dense), errors, and the measured CPU entry."""

from __future__ import annotations

import pytest

import core.sim.hardware as hardware_mod
from core.sim.hardware import GPUS, Hardware, dtype_key, get_hardware, hardware_names, measure_cpu

TABLE = ["a100-40g", "a100-80g", "h100-sxm", "h200", "l40s", "a6000"]


def test_every_listed_gpu_is_in_the_table():
    assert sorted(GPUS) == sorted(TABLE)
    assert hardware_names() == [*sorted(TABLE), "cpu"]
    for name in TABLE:
        hw = get_hardware(name)
        assert hw.name == name and hw.source
        assert hw.peak("bf16") > hw.peak("tf32") > hw.peak("fp32")  # tensor cores beat CUDA cores
        assert hw.link_bandwidth < hw.memory_bandwidth
        assert hw.memory_bytes >= 40 * (1 << 30)


@pytest.mark.parametrize(
    "alias, name",
    [
        ("A100", "a100-80g"),
        ("a100_40g", "a100-40g"),
        ("H100", "h100-sxm"),
        ("H200 SXM", "h200"),
        ("rtx-a6000", "a6000"),
        ("L40S", "l40s"),
    ],
)
def test_aliases_and_spelling(alias, name):
    assert get_hardware(alias) is GPUS[name]


def test_a_hardware_object_passes_through():
    hw = GPUS["h200"]
    assert get_hardware(hw) is hw


def test_datasheet_figures_are_dense_not_sparse():
    a100, h100, h200 = GPUS["a100-80g"], GPUS["h100-sxm"], GPUS["h200"]
    assert a100.peak("bf16") == pytest.approx(312e12)  # 624 with sparsity
    assert a100.peak("tf32") == pytest.approx(156e12)
    assert a100.memory_bandwidth == pytest.approx(2039e9)
    assert GPUS["a100-40g"].memory_bandwidth == pytest.approx(1555e9)
    assert h100.peak("fp16") == pytest.approx(989.5e12)  # 1,979 with sparsity
    assert h100.peak("fp8") == pytest.approx(1979e12)  # 3,958 with sparsity
    assert h100.memory_bandwidth == pytest.approx(3.35e12)
    assert h200.peak("bf16") == h100.peak("bf16") and h200.memory_bandwidth == pytest.approx(4.8e12)
    assert h200.memory_bytes > h100.memory_bytes
    assert GPUS["l40s"].peak("fp8") == pytest.approx(733e12)
    assert GPUS["a6000"].peak("bf16") == pytest.approx(154.8e12)
    # NVLink quoted bidirectional (600 / 900 GB/s): one way is half
    assert a100.link_bandwidth == pytest.approx(300e9) and h100.link_bandwidth == pytest.approx(
        450e9
    )
    assert GPUS["l40s"].link == "pcie4" and GPUS["l40s"].link_bandwidth == pytest.approx(32e9)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown hardware 'tpu-v5'.*a100-80g.*h100-sxm.*cpu"):
        get_hardware("tpu-v5")


def test_missing_dtype_names_device_and_its_dtypes():
    with pytest.raises(ValueError, match=r"a100-80g has no fp8 .*fp32, tf32, fp16, bf16"):
        GPUS["a100-80g"].peak("float8_e4m3fn")
    with pytest.raises(ValueError, match="no peak FLOP/s for dtype 'int3'"):
        GPUS["h100-sxm"].peak("int3")


def test_dtype_keys():
    torch = pytest.importorskip("torch")
    assert dtype_key("bfloat16") == dtype_key(torch.bfloat16) == "bf16"
    assert dtype_key("torch.float16") == dtype_key("half") == "fp16"
    assert dtype_key("FP8_E4M3") == "fp8"
    assert dtype_key(torch.float32) == "fp32"


def test_collective_link_within_and_across_nodes():
    a100 = GPUS["a100-80g"]
    assert a100.collective_link(8) == (a100.link_bandwidth, a100.link_latency_s)
    assert a100.collective_link(16) == (a100.internode_bandwidth, a100.internode_latency_s)
    with pytest.raises(ValueError, match="tp=16 spans nodes of 8 l40s devices"):
        GPUS["l40s"].collective_link(16)


def test_validation_and_hashing():
    good = dict(
        name="x",
        peak_flops={"fp32": 1e12, "bfloat16": 2e12},
        memory_bandwidth=1e11,
        memory_bytes=1 << 30,
        link="pcie4",
        link_bandwidth=1e10,
        link_latency_s=1e-6,
    )
    hw = Hardware(**good)
    assert hw.dtypes == ("fp32", "bf16")  # keys normalised
    assert hash(hw) == hash(Hardware(**good)) and hw == Hardware(**good)
    assert hw.with_(memory_bandwidth=2e11).memory_bandwidth == 2e11
    with pytest.raises(ValueError, match="needs an 'fp32' entry"):
        Hardware(**{**good, "peak_flops": {"bf16": 1e12}})
    with pytest.raises(ValueError, match="memory_bandwidth must be a positive"):
        Hardware(**{**good, "memory_bandwidth": -1.0})
    with pytest.raises(ValueError, match="both internode_bandwidth and internode_latency_s"):
        Hardware(**{**good, "internode_bandwidth": 1e9})
    with pytest.raises(AttributeError):
        hw.name = "y"


def test_measure_cpu_small():
    hw = measure_cpu(dtypes=("fp32",), gemm_size=64, copy_mib=1, repeats=1, budget_s=0.05)
    assert hw.name == "cpu" and hw.devices_per_node == 1
    assert hw.peak("fp32") > 1e6 and hw.memory_bandwidth > 1e6 and hw.memory_bytes > 0
    assert "copy_s" in hw.measurements and "measured" in hw.source
    with pytest.raises(ValueError, match="cannot measure"):
        measure_cpu(dtypes=("fp8",), gemm_size=64, copy_mib=1)


def test_cpu_entry_is_measured_once(monkeypatch):
    calls = []

    def fake() -> Hardware:
        calls.append(1)
        return measure_cpu(dtypes=("fp32",), gemm_size=32, copy_mib=1, repeats=1, budget_s=0.01)

    monkeypatch.setattr(hardware_mod, "measure_cpu", fake)
    monkeypatch.setattr(hardware_mod, "_cpu_cache", None)
    first = get_hardware("cpu")
    assert get_hardware("CPU") is first and len(calls) == 1
