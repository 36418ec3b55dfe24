"""Linear layers: ``F.linear`` as the reference, and a oneDNN path with prepacked weights for CPU.

Why: PyTorch's CPU ``F.linear`` goes to MKL's sgemm, which on AMD CPUs (no Intel dispatch) and
at the small row counts of decoding (1-64 tokens) runs far below the machine's peak; on the
2-core AVX2 EPYC this was written on, a ``[16, 768] x [768, 32000]`` product ran at 16 GFLOP/s
through MKL and at 55 GFLOP/s through oneDNN with the weight reordered once into its blocked
layout (1.1-5x for 4-37 rows, most at 4 rows and on the wide MLP and LM-head products;
10-30% for 256+; ``python -m scripts.bench engine`` measures the
effect end to end). vLLM's CPU backend takes the same route. The oneDNN op is the one
``torch.compile``'s CPU backend emits for frozen linears (``torch.ops.mkldnn``).

oneDNN pays a fixed cost per call (~50 us here) that MKL does not, so products smaller than
:data:`PACKED_MIN_MACS` multiply-adds still go to ``F.linear``: with one thread, a tiny model's
``[1, 256] x [256, 256]`` ran 5x slower through oneDNN, while from ~1.5M multiply-adds up
(the 125M model's 1-row MLP and LM head, any of its products at 4+ rows) oneDNN was as fast or
faster.

Contract: :func:`linear` returns ``F.linear(x, weight, bias)`` up to fp32 rounding (oneDNN
accumulates in another order), whatever it is given. A :class:`PackedWeight` is a reordered copy
of one weight tensor; it is used only while that tensor is unchanged (same storage, same
version counter: a checkpoint load or an in-place edit makes it stale and :func:`linear` falls
back to ``F.linear`` until it is packed again), for CPU inputs of the weight's dtype, and
without autograd (the op has no backward). Packing costs one extra copy of the weights in
memory.

Backends, chosen per model by :func:`resolve_linear_backend`: ``"torch"`` (``F.linear``
everywhere), ``"onednn"`` (packed weights where :func:`onednn_supported` says the device and
dtype allow it: CPU fp32 on any x86 with AVX2; bf16 only on CPUs with AVX512-BF16 / AVX-NE-
CONVERT) or ``"cpp"`` (:class:`CppPackedWeight`: the C++ kernel of :mod:`core.kernels.cpu_ext`
for products of up to :func:`cpp_max_rows` rows, the decode sizes, where it streams the weights
near the memory bandwidth (bf16 on AVX512-BF16 CPUs: weights in k-pairs for its dot-product
instructions); oneDNN above that where it runs; CPU fp32 and bf16; the model's small
per-layer ops then run on C++ kernels too, see :mod:`core.kernels.layer_ops`). The name comes
from the caller, else ``$SERVELAB_LINEAR_BACKEND``, else ``"auto"``: ``"cpp"`` where the
extension builds, else oneDNN where supported, torch elsewhere. Asking for ``"cpp"`` where the
extension cannot be built (no compiler) warns once and runs what ``"auto"`` would without it.
"""

from __future__ import annotations

import functools
import os
import sys
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_ext
from .memory import huge_page_empty

__all__ = [
    "CPP_MAX_ROWS",
    "CPP_MAX_ROWS_BF16_DOT",
    "LINEAR_BACKEND_ENV",
    "LINEAR_BACKENDS",
    "PACKED_MIN_MACS",
    "CppPackedWeight",
    "Linear",
    "PackedWeight",
    "WeightPack",
    "cpp_max_rows",
    "cpp_supported",
    "linear",
    "onednn_supported",
    "pack_contiguously",
    "pack_weight",
    "resolve_linear_backend",
]

LINEAR_BACKEND_ENV = "SERVELAB_LINEAR_BACKEND"
LINEAR_BACKENDS = ("auto", "torch", "onednn", "cpp")
# below this many multiply-adds (rows x in x out) a product goes to F.linear (see above)
PACKED_MIN_MACS = 1_500_000
# the C++ kernel takes products of up to this many rows, per weight dtype; above, oneDNN
# (docs/core/kernels.md has the measurements behind these). bf16: 64 where the CPU has
# AVX512-BF16 dot products (the kernel then uses them, as oneDNN does), else 4.
CPP_MAX_ROWS = {torch.float32: 64, torch.bfloat16: 4}
CPP_MAX_ROWS_BF16_DOT = 64


@functools.cache
def onednn_supported(device_type: str, dtype: torch.dtype) -> bool:
    """True when oneDNN can pack and multiply weights of ``dtype`` on this machine's CPU."""
    if device_type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    op = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    if op is None:
        return False
    try:
        w = op(torch.ones(8, 8, dtype=dtype), None)
        y = torch.ops.mkldnn._linear_pointwise(
            torch.ones(2, 8, dtype=dtype), w, None, "none", [], ""
        )
    except (RuntimeError, NotImplementedError):
        return False  # e.g. bf16 without AVX512-BF16 / AVX-NE-CONVERT
    return bool(torch.all(y == 8))


def cpp_max_rows(dtype: torch.dtype, ext: ModuleType) -> int:
    """The most rows a product of ``dtype`` weights takes on the C++ kernel (see above)."""
    if dtype == torch.bfloat16 and ext.linear_bf16_dot():
        return CPP_MAX_ROWS_BF16_DOT
    return CPP_MAX_ROWS.get(dtype, 0)


def cpp_supported(device_type: str, dtype: torch.dtype) -> bool:
    """True when the C++ kernel can take weights of ``dtype`` here (CPU, fp32 or bf16, and the
    extension builds; building it is the first call's cost, see :mod:`core.kernels.cpu_ext`)."""
    return (
        device_type == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and cpu_ext.load() is not None
    )


def resolve_linear_backend(name: str | None, device: torch.device | str, dtype: torch.dtype) -> str:
    """``"torch"``, ``"onednn"`` or ``"cpp"``: what ``name`` (or ``$SERVELAB_LINEAR_BACKEND``,
    or auto) means for weights of ``dtype`` on ``device``.

    Raises ValueError for an unknown name and RuntimeError when ``"onednn"`` or ``"cpp"`` is
    asked for a device or dtype it cannot take. ``"cpp"`` where only the extension is missing
    (it could not be built; its loader has warned) falls back as ``"auto"`` would.
    """
    name = name or os.environ.get(LINEAR_BACKEND_ENV) or "auto"
    if name not in LINEAR_BACKENDS:
        raise ValueError(
            f"unknown linear backend {name!r}; choose from {', '.join(LINEAR_BACKENDS)}"
        )
    device_type = torch.device(device).type
    supported = onednn_supported(device_type, dtype)
    if name == "onednn" and not supported:
        raise RuntimeError(
            f"linear backend 'onednn' cannot run {dtype} weights on {device_type} here "
            "(CPU only; bf16 needs AVX512-BF16 or AVX-NE-CONVERT); use 'torch' or 'auto'"
        )
    if name == "cpp" and (device_type != "cpu" or dtype not in (torch.float32, torch.bfloat16)):
        raise RuntimeError(
            f"linear backend 'cpp' cannot run {dtype} weights on {device_type} "
            "(CPU fp32 or bf16 only); use 'torch' or 'auto'"
        )
    if name in ("auto", "cpp"):
        if cpp_supported(device_type, dtype):
            return "cpp"
        return "onednn" if supported else "torch"
    return name


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except (
        RuntimeError
    ):  # inference-mode tensors have no version counter (nor in-place edits outside it)
        return -1


class WeightPack:
    """A reordered copy of one ``[out, in]`` weight tensor, tied to it: valid for a call while
    the source keeps its storage and version (see the module contract)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self._ptr = weight.data_ptr()
        self._version = _version(weight)
        self.dtype = weight.dtype

    def valid_for(self, weight: torch.Tensor) -> bool:
        return weight.data_ptr() == self._ptr and _version(weight) == self._version

    def accepts(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """Whether this call may go through the pack: CPU input of the weight's dtype, a
        valid pack, no autograd."""
        return (
            x.device.type == "cpu"
            and x.dtype == self.dtype
            and self.valid_for(weight)
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        )

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ weight.T + bias`` for ``x`` of shape ``[..., in]``."""
        raise NotImplementedError


class PackedWeight(WeightPack):
    """A ``[out, in]`` weight reordered into oneDNN's blocked layout, tied to its source tensor.

    Valid for a call while the source keeps its storage and version (see the module contract).
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__(weight)
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)

    def accepts(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        rows = x.numel() // max(x.shape[-1], 1)
        return rows * weight.numel() >= PACKED_MIN_MACS and super().accepts(x, weight)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if not rows.is_contiguous():
            rows = rows.contiguous()
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, bias, "none", [], "")
        return out.view(*x.shape[:-1], out.shape[-1])


class CppPackedWeight(WeightPack):
    """A ``[out, in]`` weight packed for the C++ small-M kernel (``cpu_ext.packed_linear``:
    groups of output rows, k-major), plus a oneDNN pack for products of more than
    ``CPP_MAX_ROWS`` rows where oneDNN runs (the C++ kernel takes every size elsewhere).

    Valid for a call while the source keeps its storage and version (see the module contract).
    Memory: one packed copy, two with the oneDNN pack.
    """

    def __init__(self, weight: torch.Tensor, ext: ModuleType) -> None:
        super().__init__(weight)
        with torch.no_grad():
            self.packed = ext.pack_linear_weight(weight.detach())
        self._ext = ext
        self.out_features = weight.shape[0]
        self.max_rows = cpp_max_rows(weight.dtype, ext)
        large = onednn_supported(weight.device.type, weight.dtype)
        self.large = PackedWeight(weight) if large else None

    @property
    def kernel_rows(self) -> int:
        """The most rows a product runs on the C++ kernel with (above: the oneDNN pack)."""
        return sys.maxsize if self.large is None else self.max_rows

    def in_kernel(self, rows: int) -> bool:
        """Whether a product of ``rows`` rows runs on the C++ kernel (else the oneDNN pack)."""
        return rows <= self.kernel_rows

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        flat = x.dim() == 2  # the engine's case: skip the reshapes (a few us a call at batch 1)
        rows = x if flat else x.reshape(-1, x.shape[-1])
        if not self.in_kernel(rows.shape[0]):
            assert self.large is not None  # in_kernel says no only when a oneDNN pack exists
            return self.large.matmul(x, bias)
        out = self._ext.packed_linear(rows, self.packed, self.out_features, bias)
        return out if flat else out.view(*x.shape[:-1], self.out_features)


def pack_contiguously(packs: list[WeightPack | None]) -> None:
    """Move the C++ packs among ``packs`` into one allocation per dtype, in the order given (a
    model passes its linears in forward order, the order a decode step streams them).

    Why: a decode step reads every pack once, front to back; packs made one by one at load
    sit wherever the allocator put them, between the oneDNN packs and other buffers, and a
    batch-1 decode step ran 13-15% faster with one thread once they were contiguous (fp32 and
    bf16, 125M Llama, interleaved A/B in one process; no change with two threads), and another
    1.11-1.28x once that buffer sat on huge pages (:mod:`core.kernels.memory`). Peak memory
    grows by one copy of the packs while they move."""
    for dtype in {p.packed.dtype for p in packs if isinstance(p, CppPackedWeight)}:
        group = [p for p in packs if isinstance(p, CppPackedWeight) and p.packed.dtype == dtype]
        arena = huge_page_empty((sum(p.packed.numel() for p in group),), dtype)
        offset = 0
        for p in group:
            n = p.packed.numel()
            view = arena[offset : offset + n].view(p.packed.shape)
            view.copy_(p.packed)
            p.packed = view
            offset += n


def pack_weight(weight: torch.Tensor, backend: str) -> WeightPack | None:
    """``weight`` packed for ``backend``; None for ``"torch"`` or where the backend cannot take
    this weight's device and dtype (that weight then runs on ``F.linear``)."""
    if backend == "cpp" and cpp_supported(weight.device.type, weight.dtype):
        ext = cpu_ext.load()
        if ext is not None:
            return CppPackedWeight(weight, ext)
    usable = backend == "onednn" and onednn_supported(weight.device.type, weight.dtype)
    return PackedWeight(weight) if usable else None


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    packed: WeightPack | None = None,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through ``packed`` when it is valid for this call (and,
    for oneDNN, large enough to gain from it)."""
    if packed is not None and packed.accepts(x, weight):
        return packed.matmul(x, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and init) that can run on a packed weight.

    ``set_backend("onednn")`` or ``("cpp")`` packs the current weight; ``"torch"`` drops the
    packed copy. A stale pack (the weight was reloaded or edited) is ignored, never used.
    """

    packed: WeightPack | None = None

    def set_backend(self, backend: str) -> None:
        self.packed = pack_weight(self.weight, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.packed)
