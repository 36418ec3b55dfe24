"""Calibrate the simulator's profiled cost model on this device: ``python -m scripts.calibrate``.

The real engine (:class:`core.engine.LLM` with a random-initialized model built from a config)
runs crafted batches; every ``Engine.step()`` is timed (the whole step: scheduling, forward,
sampling, bookkeeping) and the composition the scheduler actually ran is recorded with it.
:func:`scripts.calibrate.fit.fit_tables` turns the samples into the tables of a
:class:`core.sim.profiled.ProfiledCostModel` (robust means of repeats, made monotone), and the
profile is written as JSON with its provenance: device, model config, dtype, threads, torch
version, date, engine settings, grid and every raw sample. See :mod:`scripts.calibrate.measure`
for how each kind of step is produced and :mod:`scripts.calibrate.fit` for the fit.

Public pieces (the fidelity benchmark uses them): :data:`MODELS`, :class:`EngineSettings`,
:class:`Grid` (:data:`DEFAULT_GRID`, :data:`QUICK_GRID`), :func:`model_config`,
:func:`build_llm`, :func:`device_info`, :func:`default_profile_path`, :func:`calibrate`.
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from core.model.presets import llama_config
from core.sim.profiled import cpu_device_slug, cpu_model_name

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_MODEL",
    "MODELS",
    "QUICK_GRID",
    "EngineSettings",
    "Grid",
    "build_llm",
    "calibrate",
    "default_profile_path",
    "default_settings",
    "device_info",
    "device_slug",
    "model_config",
]


_TOKEN_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


MODELS: dict[str, dict[str, Any]] = {
    # The fidelity model: the architecture of tiny-llama-125m (GQA, RoPE, SwiGLU, a 32k
    # vocabulary), narrowed to 19.5M parameters so that a 2-core CPU serves a few requests a
    # second and the whole fidelity benchmark runs in minutes.
    "tiny-llama-20m": llama_config(
        hidden_size=256,
        intermediate_size=768,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=256 // 4,
        vocab_size=32000,
        max_position_embeddings=2048,
        **_TOKEN_IDS,
    ),
    # For tests and smoke runs only: steps of a few milliseconds, mostly Python overhead.
    "tiny-llama-smoke": llama_config(
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64 // 4,
        vocab_size=512,
        max_position_embeddings=512,
        **_TOKEN_IDS,
    ),
}
"""Models the calibration builds by name (random weights from a seed); any preset of
:func:`core.model.spec.preset_config` (e.g. ``tiny-llama-125m``) or a ``config.json`` path
works too."""

DEFAULT_MODEL = "tiny-llama-20m"


def model_config(name: str) -> dict[str, Any]:
    """The config dict of ``name``: a key of :data:`MODELS`, a core preset, or a path to a
    ``config.json``. Raises ``ValueError`` naming what is unknown."""
    if name in MODELS:
        return dict(MODELS[name])
    path = Path(name)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise ValueError(f"{path}: no such model config file")
        try:
            cfg = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a JSON model config ({exc})") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: a model config must be a JSON object")
        return cfg
    from core.model.spec import preset_config

    try:
        return preset_config(name)
    except (KeyError, ValueError):
        raise ValueError(
            f"unknown model {name!r}: use one of {sorted(MODELS)}, a core preset "
            "(core.model.spec.PRESETS) or a config.json path"
        ) from None


@dataclass(frozen=True)
class EngineSettings:
    """The engine configuration a profile is measured with, and that a simulation must use to
    be calibrated: KV block size and blocks, token budget and sequence limit of a step, context
    limit, prefix caching, attention and linear backends (``None``: the engine's default; a
    profile records the linear backend the engine resolved), seed."""

    block_size: int = 16
    num_kv_blocks: int = 2048
    max_num_batched_tokens: int = 512
    max_num_seqs: int = 64
    max_model_len: int = 2048
    enable_prefix_caching: bool = False
    attention_backend: str | None = None
    linear_backend: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "block_size",
            "num_kv_blocks",
            "max_num_batched_tokens",
            "max_num_seqs",
            "max_model_len",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"engine setting {name} must be an integer >= 1, got {v!r}")

    @property
    def kv_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "engine settings") -> EngineSettings:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown engine settings {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class Grid:
    """Where step times are measured (see :mod:`core.sim.profiled` for what each axis means),
    how often, and the limits of the measurement.

    ``repeats``: recorded steps per cell (the table holds their mean without the extremes);
    ``warmup``: unrecorded passes over the cells (prefill, mixed, chunks) or unrecorded steps
    (decode) first;
    ``max_decode_kv_tokens``: decode cells whose batch x context exceeds this are not measured
    (prefilling them is what costs time) but extrapolated along the context axis;
    ``chunk_cells``: ``(tokens, chunks)`` steps that measure the cost of an extra prefill chunk.
    """

    prefill_tokens: tuple[int, ...]
    prefill_contexts: tuple[int, ...]
    decode_batches: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    repeats: int = 7
    warmup: int = 1
    max_decode_kv_tokens: int = 16384
    chunk_cells: tuple[tuple[int, int], ...] = ((64, 2), (256, 2), (256, 4))
    checks: bool = True

    def axes(self) -> dict[str, list[int]]:
        return {
            "prefill_tokens": list(self.prefill_tokens),
            "prefill_contexts": list(self.prefill_contexts),
            "decode_batches": list(self.decode_batches),
            "decode_contexts": list(self.decode_contexts),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunk_cells"] = [list(c) for c in self.chunk_cells]
        return d

    def with_repeats(self, repeats: int | None) -> Grid:
        return self if repeats is None else replace(self, repeats=int(repeats))


DEFAULT_GRID = Grid(
    prefill_tokens=(1, 16, 64, 128, 256, 512),
    prefill_contexts=(0, 256, 768, 1500),
    decode_batches=(1, 2, 4, 8, 16, 32, 64),
    decode_contexts=(16, 256, 768, 1536),
)
"""What ``python -m scripts.calibrate`` measures: covers the fidelity workload (prompts up to
the 2,048-token context, decode batches up to the 64-sequence limit); ~2-3 minutes on 2 cores."""

QUICK_GRID = Grid(
    prefill_tokens=(1, 8, 32),
    prefill_contexts=(0, 32),
    decode_batches=(1, 2, 4),
    decode_contexts=(8, 40),
    repeats=1,
    warmup=1,
    chunk_cells=((16, 2),),
)
"""A few seconds with ``tiny-llama-smoke``: for tests, not for numbers."""


def device_info(device: Any, threads: int) -> dict[str, Any]:
    """What the timings depend on: device type and name (the CPU model or the GPU), torch
    threads, cores this process may use, CPU capability, host name."""
    import torch

    dev = torch.device(device)
    info: dict[str, Any] = {"type": dev.type}
    if dev.type == "cuda":
        info["name"] = torch.cuda.get_device_name(dev)
    else:
        info["name"] = cpu_model_name()
    info["threads"] = int(threads)
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["usable_cpus"] = os.cpu_count()
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["hostname"] = platform.node()
    return info


def device_slug(info: dict[str, Any]) -> str:
    """A file-name part for a device: ``cpu-amd-epyc-1t`` (CPU name and threads, the name
    :func:`core.sim.profiled.cpu_profile_path` looks for) or the GPU's name
    (``cuda-nvidia-a100-sxm4-80gb``)."""
    if info.get("type") == "cpu":
        return cpu_device_slug(str(info.get("name", "")), int(info.get("threads", 1)))
    name = re.sub(r"[^a-z0-9]+", "-", str(info.get("name", "")).lower()).strip("-") or "unknown"
    return f"{info.get('type', 'dev')}-{name}"


def default_profile_path(info: dict[str, Any], model: str) -> Path:
    """``data/profiles/<device>-<model>.json`` (under ``$SERVELAB_DATA`` when set)."""
    from core.data import DATA_DIR

    model_part = re.sub(
        r"[^A-Za-z0-9.]+", "-", Path(model).stem if model.endswith(".json") else model
    ).strip("-")
    return Path(DATA_DIR) / "profiles" / f"{device_slug(info)}-{model_part}.json"


def build_llm(
    config: dict[str, Any],
    settings: EngineSettings,
    *,
    dtype: str = "float32",
    device: str | None = None,
) -> Any:
    """The engine of a profile: ``LLM`` with a random-initialized model from ``config``
    (seeded by ``settings.seed``) and exactly ``settings``."""
    from core.engine import LLM

    return LLM(
        dict(config),
        dtype=dtype,
        device=device,
        seed=settings.seed,
        block_size=settings.block_size,
        num_kv_blocks=settings.num_kv_blocks,
        enable_prefix_caching=settings.enable_prefix_caching,
        prefix_cache="auto",  # radix for hybrid models
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        max_model_len=settings.max_model_len,
        enable_chunked_prefill=True,
        attention_backend=settings.attention_backend,
        linear_backend=settings.linear_backend,
    )


def calibrate(
    model: str = DEFAULT_MODEL,
    *,
    settings: EngineSettings | None = None,
    grid: Grid = DEFAULT_GRID,
    dtype: str = "float32",
    device: str | None = None,
    threads: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure a step profile of ``model`` on this device and return it (a JSON-ready dict; see
    :mod:`core.sim.profiled`). ``threads`` sets torch's thread count (default: leave it)."""
    from .measure import run_calibration

    if settings is None:
        settings = default_settings(model_config(model), seed=seed)
    return run_calibration(
        model,
        settings=settings,
        grid=grid,
        dtype=dtype,
        device=device,
        threads=threads,
        seed=seed,
        progress=progress,
    )


def default_settings(config: dict[str, Any], **changes: Any) -> EngineSettings:
    """:class:`EngineSettings` defaults with ``changes``, the context limit at most the model's
    positions (``max_position_embeddings``)."""
    positions = int(config.get("max_position_embeddings") or EngineSettings.max_model_len)
    changes.setdefault("max_model_len", min(EngineSettings.max_model_len, positions))
    return EngineSettings(**changes)
