"""The servelab CPU extension: C++ kernels for CPU decoding, compiled on first use and cached.

:func:`load` returns the compiled module, or None (after one warning) when it cannot be built:
no compiler, a failed compile, or ``SERVELAB_CPU_EXT=0``. Callers then use the torch reference
of each kernel. The module offers (layouts and semantics in the C++ sources, ``ops.h``):

- ``pack_linear_weight(w)`` / ``packed_linear(x, packed, out_features, bias)``: small-M linear
  layers over a weight packed into groups of ``linear_group_width()`` output rows;
- ``write_kv``, ``paged_decode_attention`` and ``paged_multi_query_attention``: the paged-KV
  write, and attention read in place through the block table for one new token per sequence
  or a few (a speculative verify's k + 1, causal among themselves);
- ``paged_prefill_attention``: the same for prefill chunks of any length, a tiled
  (FlashAttention-style) kernel;
- ``rms_norm``, ``add_rms_norm``, ``rotary_``, ``silu_mul``: a decoder layer's small ops;
- ``llama_decode_layer``: a whole Llama decoder layer for a decode step, the kernels above in
  one call, and ``llama_decode_stack``: every layer of a model in one call
  (:mod:`core.kernels.fused_layer`);
- ``isa``: the vector ISA it was compiled for (``"avx512"``, ``"avx2"`` or ``"generic"``).

Build: ``torch.utils.cpp_extension`` with ``-O3 -march=native -fopenmp`` (threads are torch's
intra-op threads through ``at::parallel_for``; ``$SERVELAB_CPU_EXT_MARCH`` replaces ``native``,
e.g. ``haswell`` to build and test the AVX2 path on an AVX-512 machine), into
``$SERVELAB_CPU_EXT_DIR`` (default ``~/.cache/servelab/cpu_ext``) under a name keyed by the
sources, the flags, the torch and Python versions and this CPU's feature flags, so a changed
source or another CPU builds anew and everything else reuses the build.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["CPU_EXT_DIR_ENV", "CPU_EXT_ENV", "CPU_EXT_MARCH_ENV", "build_dir", "load"]

CPU_EXT_ENV = "SERVELAB_CPU_EXT"  # "0": never build or load the extension
CPU_EXT_DIR_ENV = "SERVELAB_CPU_EXT_DIR"
CPU_EXT_MARCH_ENV = "SERVELAB_CPU_EXT_MARCH"
_HERE = Path(__file__).resolve().parent
_SOURCES = (
    "bindings.cpp",
    "linear.cpp",
    "attention.cpp",
    "prefill_attention.cpp",
    "layer_ops.cpp",
    "decode_layer.cpp",
)
_HEADERS = ("ops.h", "vec.h")
_CFLAGS = ("-O3", "-fopenmp", "-std=c++17", "-Wno-unused-function")
_LDFLAGS = ("-fopenmp",)
_DONE = "built"  # marker written after a complete build; a half-built library is never loaded


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cflags() -> list[str]:
    return [*_CFLAGS, f"-march={os.environ.get(CPU_EXT_MARCH_ENV) or 'native'}"]


def _key() -> str:
    h = hashlib.sha256()
    for name in (*_SOURCES, *_HEADERS):
        h.update(name.encode() + b"\0" + (_HERE / name).read_bytes())
    for part in (*_cflags(), *_LDFLAGS, torch.__version__, sys.version, _cpu_flags()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def build_dir() -> Path:
    """Where this machine's build of the current sources lives."""
    root = os.environ.get(CPU_EXT_DIR_ENV) or Path.home() / ".cache" / "servelab" / "cpu_ext"
    return Path(root) / f"servelab_cpu_{_key()}"


def _import(name: str, path: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _build() -> ModuleType:
    directory = build_dir()
    name = directory.name
    library = directory / f"{name}.so"
    if (directory / _DONE).is_file() and library.is_file():
        return _import(name, library)
    from torch.utils import cpp_extension

    directory.mkdir(parents=True, exist_ok=True)
    print(f"servelab: compiling the CPU kernels into {directory} (once)", file=sys.stderr)
    start = time.perf_counter()
    module = cpp_extension.load(
        name=name,
        sources=[str(_HERE / s) for s in _SOURCES],
        extra_cflags=_cflags(),
        extra_ldflags=list(_LDFLAGS),
        build_directory=str(directory),
        verbose=False,
    )
    (directory / _DONE).write_text(f"{time.perf_counter() - start:.1f} s\n")
    return module


@functools.cache
def load() -> ModuleType | None:
    """The compiled extension, built on the first call of the process if needed; None (with
    one warning per process) when it cannot be built or ``$SERVELAB_CPU_EXT`` is ``0``."""
    if os.environ.get(CPU_EXT_ENV) == "0":
        return None
    try:
        return _build()
    except Exception as exc:  # no compiler, a compile error, a broken cache: use torch
        warnings.warn(
            f"servelab CPU extension unavailable, using the torch kernels: {exc}",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
