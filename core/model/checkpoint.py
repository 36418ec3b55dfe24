"""Hugging Face checkpoint directories in and out, and seeded random models.

A checkpoint directory holds ``config.json``, the weights as ``model.safetensors`` or as shards
``model-0000i-of-0000n.safetensors`` listed in ``model.safetensors.index.json``, and optionally
``tokenizer.json``. :func:`load_model` reads one (or builds a random model from a config);
:func:`save_model` writes the same layout back, which ``transformers`` loads with
``AutoModelForCausalLM.from_pretrained``. Our fused parameters (``qkv_proj``, ``gate_up_proj``)
map to and from the separate HF tensors through ``CausalLM.hf_weight_map``.

Every problem with a directory raises one :class:`~core.model.errors.CheckpointError` whose
message names the missing directory, file or weight, or the unsupported ``model_type``.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .base import CausalLM
from .config import ModelConfig, load_config, read_json
from .errors import ConfigError, MissingCheckpointFileError, MissingWeightError
from .layers import GatedRMSNorm, RMSNorm
from .registry import model_class

__all__ = [
    "CONFIG_FILE",
    "INDEX_FILE",
    "SINGLE_FILE",
    "TOKENIZER_FILE",
    "build_random_model",
    "hf_state_dict",
    "load_config",
    "load_model",
    "load_tokenizer",
    "load_weights",
    "save_model",
]

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"

PathLike = str | os.PathLike[str]
ConfigSource = PathLike | ModelConfig | dict[str, Any] | Any  # Any: a transformers config


def _checkpoint_dir(path: PathLike) -> Path:
    d = Path(path)
    if not d.is_dir():
        raise MissingCheckpointFileError(f"checkpoint directory not found: {d}")
    return d


def load_model(
    source: ConfigSource,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[CausalLM, ModelConfig]:
    """Our model for ``source``, on ``device`` in ``dtype``, for inference (eval mode, no
    parameter requires grad).

    ``source`` is a checkpoint directory (weights loaded from it) or a config (a dict, a
    transformers config, a ModelConfig): then the weights are random, drawn from ``seed`` on
    the CPU, so a seed gives the same model on every device.
    """
    config = load_config(source)
    if isinstance(source, (str, os.PathLike)):
        cls = model_class(config.model_type)
        with torch.device("meta"):  # no memory, no init: every weight comes from the files
            model = cls(config).to(dtype)
        model = model.to_empty(device=device)
        load_weights(model, source)
        model.requires_grad_(False).eval()
    else:
        model = build_random_model(config, dtype, device, seed)
    return model, config


def build_random_model(
    config: ModelConfig,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> CausalLM:
    """A randomly initialized model: N(0, initializer_range) matrices, unit norms, zero
    biases, and the Mamba defaults transformers uses (A = -1..-n_heads, D = 1, dt_bias = 1)."""
    model = model_class(config.model_type)(config)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    std = config.initializer_range
    with torch.no_grad():
        for mod in model.modules():
            for name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, (RMSNorm, GatedRMSNorm)) or name in ("D", "dt_bias"):
                    p.fill_(1.0)
                elif name == "A_log":
                    p.copy_(torch.log(torch.arange(1, p.numel() + 1, dtype=torch.float32)))
                elif name == "bias":
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.to(device=device, dtype=dtype).requires_grad_(False).eval()


class _WeightFiles:
    """Name -> tensor over a single safetensors file or an index of shards."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        index = directory / INDEX_FILE
        single = directory / SINGLE_FILE
        if index.is_file():
            self.source = INDEX_FILE
            self.file_of: dict[str, str] = read_json(index).get("weight_map", {})
        elif single.is_file():
            self.source = SINGLE_FILE
            with safe_open(single, framework="pt") as f:
                self.file_of = dict.fromkeys(f.keys(), SINGLE_FILE)
        else:
            raise MissingCheckpointFileError(
                f"{directory}: no weights file ({SINGLE_FILE} or {INDEX_FILE})"
            )
        self._open: dict[str, Any] = {}
        self.used: set[str] = set()

    def get(self, name: str) -> torch.Tensor:
        if name not in self.file_of:
            raise MissingWeightError(f"{self.directory / self.source}: weight {name!r} not found")
        fname = self.file_of[name]
        if fname not in self._open:
            path = self.directory / fname
            if not path.is_file():
                raise MissingCheckpointFileError(f"{path}: shard listed in {INDEX_FILE} not found")
            self._open[fname] = safe_open(path, framework="pt")
        f = self._open[fname]
        if name not in f.keys():
            raise MissingWeightError(f"{self.directory / fname}: weight {name!r} not found")
        self.used.add(name)
        return f.get_tensor(name)


def load_weights(model: CausalLM, directory: PathLike) -> None:
    """Copy every parameter of ``model`` from the checkpoint in ``directory``.

    A weight missing from the files raises MissingWeightError naming it; a weight with the
    wrong shape raises CheckpointError naming both shapes. Checkpoint tensors the model does not
    use are reported with a warning.
    """
    directory = _checkpoint_dir(directory)
    files = _WeightFiles(directory)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for ours, parts in model.hf_weight_map().items():
            tensors = []
            for hf_name, rows in parts:
                t = files.get(hf_name)
                if rows is not None and t.shape[0] != rows:
                    raise ConfigError(
                        f"{directory}: weight {hf_name!r} has {t.shape[0]} rows, "
                        f"config.json implies {rows}"
                    )
                tensors.append(t)
            value = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
            target = params[ours]
            if value.shape != target.shape:
                raise ConfigError(
                    f"{directory}: weight {parts[0][0]!r} has shape {tuple(value.shape)}, "
                    f"config.json implies {tuple(target.shape)}"
                )
            target.copy_(value)
    unused = sorted(set(files.file_of) - files.used - _ignored(files.file_of))
    if unused:
        warnings.warn(f"{directory}: {len(unused)} unused weights, e.g. {unused[:3]}", stacklevel=2)


def _ignored(names: Any) -> set[str]:
    # Old checkpoints store RoPE frequencies, which we recompute.
    return {n for n in names if n.endswith("rotary_emb.inv_freq")}


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*$", re.IGNORECASE)
_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def _parse_size(size: int | str) -> int:
    """Bytes from an int or a string like ``"5GB"`` or ``"200KiB"`` (as transformers reads)."""
    if isinstance(size, int):
        return size
    m = _SIZE.match(size)
    if not m:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or e.g. '5GB'")
    return int(float(m.group(1)) * _UNITS.get((m.group(2) or "").lower(), 1))


def hf_state_dict(model: CausalLM) -> dict[str, torch.Tensor]:
    """Our parameters under their Hugging Face names, fused tensors split back (CPU copies)."""
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for ours, parts in model.hf_weight_map().items():
        value = params[ours].detach().to("cpu")
        sizes = [value.shape[0] if rows is None else rows for _, rows in parts]
        for (hf_name, _), piece in zip(parts, value.split(sizes, dim=0), strict=True):
            out[hf_name] = piece.contiguous().clone()  # safetensors refuses shared storage
    return out


def save_model(
    model: CausalLM,
    directory: PathLike,
    *,
    max_shard_size: int | str | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write ``model`` as a Hugging Face checkpoint directory and return its path.

    One ``model.safetensors``, or shards of at most ``max_shard_size`` (bytes or ``"5GB"``;
    a larger single tensor gets its own shard) with an index. ``tokenizer`` (a
    ``tokenizers.Tokenizer``) is saved as ``tokenizer.json``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    hf = config.to_hf_dict()
    hf["architectures"] = [type(model).hf_architectures[config.model_type]]
    hf["model_type"] = config.model_type
    hf["dtype"] = str(model.dtype).removeprefix("torch.")
    if "torch_dtype" in hf:
        hf["torch_dtype"] = hf["dtype"]
    (directory / CONFIG_FILE).write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")

    tensors = hf_state_dict(model)
    limit = None if max_shard_size is None else _parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if limit is not None and shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    for stale in [
        *directory.glob("model-*-of-*.safetensors"),
        directory / SINGLE_FILE,
        directory / INDEX_FILE,
    ]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], directory / SINGLE_FILE, metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, directory / fname, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, fname))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save(str(directory / TOKENIZER_FILE))
    return directory


def load_tokenizer(directory: PathLike) -> Any:
    """The ``tokenizers.Tokenizer`` in ``directory/tokenizer.json``, or None if absent."""
    path = _checkpoint_dir(directory) / TOKENIZER_FILE
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))
