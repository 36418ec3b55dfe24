"""Accelerators for the cost models: peak FLOP/s per dtype, memory, interconnect.

A :class:`Hardware` is one device of a replica (one tensor-parallel rank) and the links between
such devices. The GPU table holds the vendor's published datasheet numbers, always the **dense**
figures (NVIDIA's tensor-core datasheets print the 2:4-sparsity number first or with an
asterisk; those are twice the dense ones and are never used here). ``get_hardware("cpu")``
measures this machine instead (:func:`measure_cpu`).

Units: FLOP/s, bytes/s, bytes, seconds. Conventions:

- ``peak_flops`` maps a dtype key to a peak rate: ``"fp32"`` is the non-tensor (CUDA-core)
  FP32 rate, also used for elementwise work; ``"tf32"``, ``"fp16"``, ``"bf16"`` and ``"fp8"``
  are dense tensor-core rates (FP32 accumulate). A dtype the device has no entry for
  (``fp8`` before Hopper/Ada) raises ``ValueError``.
- ``memory_bytes``: the datasheet's "GB" read as GiB, as ``nvidia-smi`` reports the devices
  (an A100-80GB shows 81920 MiB). Memory the driver or ECC reserves is left to the
  ``memory_utilization`` of memory planning.
- ``link_bandwidth``: bytes/s **per direction** per device on the intra-node link. NVIDIA
  quotes NVLink and PCIe as bidirectional totals (A100: "600 GB/s"), i.e. twice this. A ring
  all-reduce moves data one way around the ring, so the one-way figure is what it can use.
- ``link_latency_s``: the latency of one step of a ring collective. No datasheet gives it;
  the values are order-of-magnitude assumptions in the spirit of NCCL's own tuning model
  (~1 us per NVLink hop, ~2 us over PCIe). Fixed per-collective costs are an efficiency
  factor of the cost model (``Efficiency.collective_launch_s``), fitted to measurements.
- ``devices_per_node``: devices one node holds (an HGX/DGX board: 8). Tensor parallelism
  beyond it uses ``internode_bandwidth`` (per device, per direction) if the entry has one.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType
from typing import Any

__all__ = [
    "DTYPE_KEYS",
    "GPUS",
    "Hardware",
    "dtype_key",
    "get_hardware",
    "hardware_names",
    "measure_cpu",
]

GB = 1e9  # datasheet bandwidths are decimal GB/s
GiB = 1 << 30
TFLOPS = 1e12

DTYPE_KEYS: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16", "fp8")
"""The dtype keys of :attr:`Hardware.peak_flops`."""

_DTYPE_ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "tf32": "tf32",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp8": "fp8",
    "float8": "fp8",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "float8_e4m3fn": "fp8",
    "float8_e4m3fnuz": "fp8",
    "float8_e5m2": "fp8",
    "float8_e5m2fnuz": "fp8",
}


def dtype_key(dtype: Any) -> str:
    """The :data:`DTYPE_KEYS` entry of ``dtype``: a name (``"bfloat16"``, ``"bf16"``,
    ``"float8_e4m3fn"``, case-insensitive, ``torch.`` prefix allowed) or a ``torch.dtype``.
    Raises ``ValueError`` naming the dtype and the accepted ones."""
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise ValueError(
            f"no peak FLOP/s for dtype {dtype!r}; cost models know {', '.join(DTYPE_KEYS)} "
            f"(aliases: {', '.join(sorted(_DTYPE_ALIASES))})"
        )
    return _DTYPE_ALIASES[key]


@dataclass(frozen=True)
class Hardware:
    """One accelerator (a tensor-parallel rank) and its links; see the module doc for units.

    ``source`` says where the numbers come from (datasheet, or a measurement on this machine).
    Frozen and hashable.
    """

    name: str
    peak_flops: Mapping[str, float]
    memory_bandwidth: float
    memory_bytes: int
    link: str
    link_bandwidth: float
    link_latency_s: float
    devices_per_node: int = 8
    internode_bandwidth: float | None = None
    internode_latency_s: float | None = None
    source: str = ""
    measurements: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        flops = {dtype_key(k): float(v) for k, v in dict(self.peak_flops).items()}
        if "fp32" not in flops:
            raise ValueError(f"{self.name}: peak_flops needs an 'fp32' entry (elementwise work)")
        for key, value in flops.items():
            _check_positive(f"{self.name}: peak_flops[{key!r}]", value)
        object.__setattr__(self, "peak_flops", MappingProxyType(flops))
        object.__setattr__(self, "measurements", MappingProxyType(dict(self.measurements)))
        for attr in ("memory_bandwidth", "memory_bytes", "link_bandwidth"):
            _check_positive(f"{self.name}: {attr}", getattr(self, attr))
        if not (self.link_latency_s >= 0 and math.isfinite(self.link_latency_s)):
            raise ValueError(f"{self.name}: link_latency_s must be >= 0, got {self.link_latency_s}")
        if self.devices_per_node < 1:
            raise ValueError(f"{self.name}: devices_per_node must be >= 1")
        if (self.internode_bandwidth is None) != (self.internode_latency_s is None):
            raise ValueError(
                f"{self.name}: give both internode_bandwidth and internode_latency_s or neither"
            )

    def __hash__(self) -> int:
        return hash(
            (
                self.name,
                tuple(sorted(self.peak_flops.items())),
                self.memory_bandwidth,
                self.memory_bytes,
                self.link_bandwidth,
                self.link_latency_s,
            )
        )

    @property
    def dtypes(self) -> tuple[str, ...]:
        """The dtype keys this device has a peak rate for."""
        return tuple(k for k in DTYPE_KEYS if k in self.peak_flops)

    def peak(self, dtype: Any) -> float:
        """Peak dense FLOP/s in ``dtype`` (see :func:`dtype_key`); ``ValueError`` naming the
        device and its dtypes if it has none (e.g. fp8 on an A100)."""
        key = dtype_key(dtype)
        if key not in self.peak_flops:
            raise ValueError(
                f"{self.name} has no {key} peak (no {key} tensor cores); its dtypes: "
                f"{', '.join(self.dtypes)}"
            )
        return self.peak_flops[key]

    def collective_link(self, tp: int) -> tuple[float, float]:
        """``(bandwidth, step latency)`` of the slowest link a ``tp``-way ring crosses: the
        intra-node link when ``tp <= devices_per_node``, else the inter-node one; ``ValueError``
        when ``tp`` spans nodes and the device has no inter-node link."""
        if tp <= self.devices_per_node:
            return self.link_bandwidth, self.link_latency_s
        if self.internode_bandwidth is None or self.internode_latency_s is None:
            raise ValueError(
                f"tp={tp} spans nodes of {self.devices_per_node} {self.name} devices, "
                f"and {self.name} has no inter-node link in the table"
            )
        return self.internode_bandwidth, self.internode_latency_s

    def with_(self, **changes: Any) -> Hardware:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return replace(self, **changes)


def _check_positive(what: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")


# --------------------------------------------------------------------------------------------
# The GPU table: datasheet figures, dense (no sparsity)
# --------------------------------------------------------------------------------------------

_NVLINK_HOP_S = 1e-6  # assumed per-step ring latency over NVLink (see module doc)
_PCIE_HOP_S = 2e-6  # assumed per-step ring latency over PCIe
_IB_HOP_S = 5e-6  # assumed per-step ring latency over InfiniBand between nodes


def _a100(name: str, mem_gib: int, bandwidth_gbs: float) -> Hardware:
    # NVIDIA A100 Tensor Core GPU datasheet (SXM4 column), dense figures: FP32 19.5 TFLOPS;
    # TF32 Tensor Core 156 TFLOPS (312 with sparsity); BF16/FP16 Tensor Core 312 TFLOPS (624 with
    # sparsity); no FP8. HBM2e: 40GB at 1,555 GB/s, 80GB at 2,039 GB/s. NVLink (3rd gen):
    # 600 GB/s bidirectional = 300 GB/s each way. DGX A100: 8 GPUs, one 200 Gb/s HDR
    # InfiniBand port per GPU (25 GB/s each way).
    return Hardware(
        name=name,
        peak_flops={
            "fp32": 19.5 * TFLOPS,
            "tf32": 156 * TFLOPS,
            "fp16": 312 * TFLOPS,
            "bf16": 312 * TFLOPS,
        },
        memory_bandwidth=bandwidth_gbs * GB,
        memory_bytes=mem_gib * GiB,
        link="nvlink3",
        link_bandwidth=300 * GB,
        link_latency_s=_NVLINK_HOP_S,
        devices_per_node=8,
        internode_bandwidth=25 * GB,
        internode_latency_s=_IB_HOP_S,
        source=f"NVIDIA A100 Tensor Core GPU datasheet, SXM4 {mem_gib}GB column, dense figures",
    )


def _hopper(name: str, mem_gib: int, bandwidth_gbs: float, sheet: str) -> Hardware:
    # H100 SXM5 and H200 SXM datasheets (same compute): FP32 67 TFLOPS; TF32 Tensor Core 989
    # TFLOPS with sparsity = 494.5 dense; BF16/FP16 Tensor Core 1,979 with sparsity = 989.5
    # dense; FP8 Tensor Core 3,958 with sparsity = 1,979 dense. NVLink (4th gen): 900 GB/s
    # bidirectional = 450 GB/s each way. DGX/HGX H100/H200: 8 GPUs, one 400 Gb/s NDR
    # InfiniBand (ConnectX-7) port per GPU (50 GB/s each way).
    return Hardware(
        name=name,
        peak_flops={
            "fp32": 67 * TFLOPS,
            "tf32": 494.5 * TFLOPS,
            "fp16": 989.5 * TFLOPS,
            "bf16": 989.5 * TFLOPS,
            "fp8": 1979 * TFLOPS,
        },
        memory_bandwidth=bandwidth_gbs * GB,
        memory_bytes=mem_gib * GiB,
        link="nvlink4",
        link_bandwidth=450 * GB,
        link_latency_s=_NVLINK_HOP_S,
        devices_per_node=8,
        internode_bandwidth=50 * GB,
        internode_latency_s=_IB_HOP_S,
        source=f"{sheet}, dense figures",
    )


GPUS: Mapping[str, Hardware] = MappingProxyType(
    {
        "a100-40g": _a100("a100-40g", 40, 1555),
        "a100-80g": _a100("a100-80g", 80, 2039),
        # H100 SXM5 80GB: HBM3 at 3.35 TB/s.
        "h100-sxm": _hopper(
            "h100-sxm", 80, 3350, "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column"
        ),
        # H200 SXM 141GB: HBM3e at 4.8 TB/s.
        "h200": _hopper(
            "h200", 141, 4800, "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column"
        ),
        # NVIDIA L40S datasheet (Ada): FP32 91.6 TFLOPS; TF32 Tensor Core 183 (366 with sparsity);
        # BF16/FP16 Tensor Core 362.05 (733 with sparsity); FP8 Tensor Core 733 (1,466 with
        # sparsity). 48GB GDDR6 at 864 GB/s. No NVLink: PCIe Gen4 x16, 64 GB/s bidirectional =
        # 32 GB/s each way. Assumed 8 per server; no inter-node entry.
        "l40s": Hardware(
            name="l40s",
            peak_flops={
                "fp32": 91.6 * TFLOPS,
                "tf32": 183 * TFLOPS,
                "fp16": 362.05 * TFLOPS,
                "bf16": 362.05 * TFLOPS,
                "fp8": 733 * TFLOPS,
            },
            memory_bandwidth=864 * GB,
            memory_bytes=48 * GiB,
            link="pcie4",
            link_bandwidth=32 * GB,
            link_latency_s=_PCIE_HOP_S,
            devices_per_node=8,
            source="NVIDIA L40S datasheet, dense figures",
        ),
        # NVIDIA RTX A6000 datasheet (Ampere GA102): FP32 38.7 TFLOPS; Tensor performance 309.7
        # TFLOPS with sparsity = 154.8 dense BF16/FP16 (FP32 accumulate is full rate on this
        # professional board), TF32 77.4 dense; no FP8. 48GB GDDR6 at 768 GB/s. PCIe Gen4 x16:
        # 32 GB/s each way (the 2-way NVLink bridge, 112.5 GB/s bidirectional, joins pairs only
        # and is not modelled). Assumed 4 per workstation; no inter-node entry.
        "a6000": Hardware(
            name="a6000",
            peak_flops={
                "fp32": 38.7 * TFLOPS,
                "tf32": 77.4 * TFLOPS,
                "fp16": 154.8 * TFLOPS,
                "bf16": 154.8 * TFLOPS,
            },
            memory_bandwidth=768 * GB,
            memory_bytes=48 * GiB,
            link="pcie4",
            link_bandwidth=32 * GB,
            link_latency_s=_PCIE_HOP_S,
            devices_per_node=4,
            source="NVIDIA RTX A6000 datasheet, dense figures",
        ),
    }
)
"""The GPU table, by name (read-only)."""

_ALIASES = {
    "a100": "a100-80g",
    "a100-sxm": "a100-80g",
    "a100-sxm4-80gb": "a100-80g",
    "a100-80gb": "a100-80g",
    "a100-40gb": "a100-40g",
    "a100-sxm4-40gb": "a100-40g",
    "h100": "h100-sxm",
    "h100-sxm5": "h100-sxm",
    "h100-80gb": "h100-sxm",
    "h200-sxm": "h200",
    "h200-141gb": "h200",
    "l40s-48gb": "l40s",
    "rtx-a6000": "a6000",
    "a6000-48gb": "a6000",
}


def hardware_names() -> list[str]:
    """Names :func:`get_hardware` accepts (aliases excluded): the GPU table and ``"cpu"``."""
    return [*sorted(GPUS), "cpu"]


_cpu_lock = threading.Lock()
_cpu_cache: Hardware | None = None


def get_hardware(name: str | Hardware) -> Hardware:
    """The :class:`Hardware` called ``name`` (case-insensitive; ``_`` and spaces count as ``-``;
    aliases like ``"a100"`` -> ``"a100-80g"``, ``"h100"`` -> ``"h100-sxm"``), or ``name`` itself
    if it already is one. ``"cpu"`` measures this machine once per process
    (:func:`measure_cpu`, one to a few seconds) and returns the cached result afterwards.
    Unknown names raise ``ValueError`` listing the known ones."""
    global _cpu_cache
    if isinstance(name, Hardware):
        return name
    key = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    key = _ALIASES.get(key, key)
    if key in GPUS:
        return GPUS[key]
    if key == "cpu":
        with _cpu_lock:
            if _cpu_cache is None:
                _cpu_cache = measure_cpu()
            return _cpu_cache
    raise ValueError(
        f"unknown hardware {name!r}; known: {', '.join(hardware_names())} "
        f"(aliases: {', '.join(sorted(_ALIASES))})"
    )


# --------------------------------------------------------------------------------------------
# This machine's CPU, measured
# --------------------------------------------------------------------------------------------


def _best_time(fn: Callable[[], Any], repeats: int, budget_s: float) -> float:
    """Best wall time of ``fn()`` over up to ``repeats`` timed runs after an untimed one; runs
    stop once they have used ``budget_s`` (a slow kernel is timed once, not ``repeats`` times)."""
    t0 = time.perf_counter()
    fn()  # untimed: first-call setup, and a probe of how slow one run is
    single = time.perf_counter() - t0
    runs = max(1, min(int(repeats), int(budget_s / max(single, 1e-9))))
    best = math.inf
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return max(best, 1e-9)


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        return 16 * GiB


def measure_cpu(
    dtypes: Sequence[str] = ("fp32", "bf16"),
    gemm_size: int = 1024,
    copy_mib: int = 64,
    repeats: int = 3,
    budget_s: float = 0.5,
    name: str = "cpu",
) -> Hardware:
    """Measure this machine and return it as a :class:`Hardware` named ``name``.

    - peak FLOP/s per dtype in ``dtypes``: the rate (``2 n^3 / time``) of an ``n x n`` GEMM
      (``n = gemm_size``) through ``torch.nn.functional.linear``, the entry point of every
      model's projections (on CPUs without native bf16, ``torch.matmul`` takes a different
      kernel several times slower, so it is not the ceiling a model meets), best of
      ``repeats`` timed runs after an untimed one (fewer once a kernel's runs have used
      ``budget_s``), with all of torch's threads. ``"fp32"`` is always measured (it is the
      elementwise rate too). Sizes below ~1024 are distorted on a loaded machine (thread
      wake-ups dominate);
    - memory bandwidth: ``dst.copy_(src)`` of a ``copy_mib`` MiB float32 tensor (reads and
      writes: ``2 x size`` bytes over the best time);
    - memory: physical RAM. The "link" between ranks is shared memory at the copy bandwidth
      with a 10 us step latency (gloo-like), and ``devices_per_node=1``: this entry models one
      CPU engine, not tensor parallelism across sockets.

    These are achieved rates, not datasheet peaks, so efficiency factors near 1 apply. The
    raw numbers are kept in :attr:`Hardware.measurements`.
    """
    import torch
    import torch.nn.functional as F

    if gemm_size < 16 or copy_mib < 1:
        raise ValueError(f"gemm_size must be >= 16 and copy_mib >= 1, got {gemm_size}, {copy_mib}")
    torch_dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    keys = list(dict.fromkeys(["fp32", *(dtype_key(d) for d in dtypes)]))
    unsupported = [k for k in keys if k not in torch_dtypes]
    if unsupported:
        raise ValueError(
            f"cannot measure {unsupported} on a CPU; measurable: {sorted(torch_dtypes)}"
        )
    n = int(gemm_size)
    gen = torch.Generator().manual_seed(0)
    peaks: dict[str, float] = {}
    raw: dict[str, Any] = {
        "gemm_size": n,
        "copy_mib": int(copy_mib),
        "repeats": int(repeats),
        "torch_threads": torch.get_num_threads(),
    }
    with torch.inference_mode():
        for key in keys:
            a = torch.randn(n, n, generator=gen).to(torch_dtypes[key])
            b = torch.randn(n, n, generator=gen).to(torch_dtypes[key])
            t_lin = _best_time(partial(F.linear, a, b), repeats, budget_s)
            peaks[key] = 2.0 * n**3 / t_lin
            raw[f"gemm_{key}_s"] = t_lin
        numel = int(copy_mib) * (1 << 20) // 4
        src = torch.ones(numel, dtype=torch.float32)
        dst = torch.zeros_like(src)
        t_copy = _best_time(lambda: dst.copy_(src), repeats, budget_s)
        bandwidth = 2.0 * numel * 4 / t_copy
        raw["copy_s"] = t_copy
    return Hardware(
        name=name,
        peak_flops=peaks,
        memory_bandwidth=bandwidth,
        memory_bytes=_physical_memory(),
        link="shared-memory",
        link_bandwidth=bandwidth,
        link_latency_s=10e-6,
        devices_per_node=1,
        source=(
            f"measured on this machine: best of up to {repeats} {n}x{n} F.linear GEMMs per "
            f"dtype and a {copy_mib} MiB float32 copy"
        ),
        measurements=raw,
    )
