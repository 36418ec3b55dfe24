"""Reading LoRA adapters saved in the PEFT format (``adapter_config.json`` +
``adapter_model.safetensors``, what ``peft``'s ``save_pretrained`` writes).

An adapter is kept as ``{hf_module: (A, B)}`` with ``hf_module`` the Hugging Face name of the
base linear it adapts (``model.layers.0.self_attn.q_proj``), ``A`` ``[r, in]`` and ``B``
``[out, r]`` with the scaling (``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA; per module
through ``rank_pattern`` / ``alpha_pattern``) already folded into ``B``. What is not plain LoRA
(DoRA, trained biases, ``modules_to_save``, ``fan_in_fan_out``) is refused with one error
naming the file and the key.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterFormatError",
    "LoRAAdapter",
    "load_adapter",
    "save_adapter",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")


class AdapterFormatError(ValueError):
    """A malformed or unsupported adapter folder; the message names the file and the value."""


@dataclass
class LoRAAdapter:
    """One loaded adapter: ``weights`` maps each adapted HF module to ``(A, B)`` (scaling folded
    into ``B``); ``rank`` is the largest rank over its modules."""

    name: str
    rank: int
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    path: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        """A copy with every tensor moved/cast (``self`` when nothing changes)."""
        moved = {
            k: (a.to(dtype=dtype, device=device), b.to(dtype=dtype, device=device))
            for k, (a, b) in self.weights.items()
        }
        return LoRAAdapter(self.name, self.rank, moved, self.path, self.config)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's per-module override: the first pattern matching the end of the module name."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise AdapterFormatError(f"{path}: missing (a PEFT LoRA adapter folder needs it)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise AdapterFormatError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    peft_type = cfg.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise AdapterFormatError(f"{path}: peft_type={peft_type!r} is not supported (only LORA)")
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise AdapterFormatError(f"{path}: 'r' must be a positive integer, got {r!r}")
    alpha = cfg.get("lora_alpha", r)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise AdapterFormatError(f"{path}: 'lora_alpha' must be a number, got {alpha!r}")
    unsupported = {
        "use_dora": cfg.get("use_dora"),
        "fan_in_fan_out": cfg.get("fan_in_fan_out"),
        "modules_to_save": cfg.get("modules_to_save"),
    }
    for key, value in unsupported.items():
        if value:
            raise AdapterFormatError(f"{path}: {key}={value!r} is not supported (plain LoRA only)")
    if cfg.get("bias", "none") != "none":
        raise AdapterFormatError(f"{path}: bias={cfg['bias']!r} is not supported (only 'none')")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(cfg.get(key) or {}, dict):
            raise AdapterFormatError(f"{path}: {key!r} must be an object, got {cfg[key]!r}")
    return cfg


def load_adapter(
    path: str | os.PathLike[str],
    name: str | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> LoRAAdapter:
    """Read a PEFT LoRA folder. Raises :class:`AdapterFormatError` naming the file and key for a
    missing file, bad JSON, an unsupported option, an unpaired or misshapen ``lora_A/B``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise AdapterFormatError(f"{folder}: not a directory (expected a PEFT adapter folder)")
    cfg = _read_config(folder)
    wpath = folder / ADAPTER_WEIGHTS
    if not wpath.is_file():
        hint = " (adapter_model.bin is not read: save with safetensors)"
        raise AdapterFormatError(
            f"{wpath}: missing{hint if (folder / 'adapter_model.bin').exists() else ''}"
        )
    try:
        tensors = load_file(str(wpath), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterFormatError(f"{wpath}: unreadable safetensors file ({e})") from None

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise AdapterFormatError(f"{wpath}: tensor {key!r} is not a lora_A/lora_B weight")
        module = m["module"].removeprefix(_PREFIX)
        pairs.setdefault(module, {})[m["ab"]] = t
    if not pairs:
        raise AdapterFormatError(f"{wpath}: holds no LoRA weights")

    use_rslora = bool(cfg.get("use_rslora", False))
    rank_pattern = cfg.get("rank_pattern") or {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise AdapterFormatError(f"{wpath}: {module} has no lora_{missing} weight")
        a, b = ab["A"], ab["B"]
        r = int(_pattern_value(rank_pattern, module, cfg["r"]))
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise AdapterFormatError(
                f"{wpath}: {module} lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} "
                f"do not have rank r={r}"
            )
        alpha = float(_pattern_value(alpha_pattern, module, cfg.get("lora_alpha", cfg["r"])))
        scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        a = a.to(dtype=dtype or a.dtype).contiguous()
        b = (b.float() * scaling).to(dtype=dtype or b.dtype).contiguous()
        weights[module] = (a, b)
    rank = max(a.shape[0] for a, _ in weights.values())
    return LoRAAdapter(name or folder.name, rank, weights, str(folder), cfg)


def save_adapter(
    path: str | os.PathLike[str],
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    lora_alpha: float | None = None,
    base_model: str = "",
) -> Path:
    """Write a PEFT LoRA folder: ``weights`` maps HF module names to ``(A [r, in], B [out, r])``
    *without* the scaling (``lora_alpha / r`` is applied when loaded; default alpha = r, a
    scaling of 1). All modules share one rank. Returns the folder."""
    from safetensors.torch import save_file

    ranks = {a.shape[0] for a, _ in weights.values()}
    if len(ranks) != 1:
        raise ValueError(f"save_adapter writes one rank for all modules, got ranks {sorted(ranks)}")
    r = ranks.pop()
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (a, b) in weights.items():
        tensors[f"{_PREFIX}{module}.lora_A.weight"] = a.detach().contiguous().cpu()
        tensors[f"{_PREFIX}{module}.lora_B.weight"] = b.detach().contiguous().cpu()
    save_file(tensors, str(folder / ADAPTER_WEIGHTS))
    targets = sorted({m.rsplit(".", 1)[-1] for m in weights})
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": lora_alpha if lora_alpha is not None else r,
        "target_modules": targets,
        "bias": "none",
        "lora_dropout": 0.0,
        "base_model_name_or_path": base_model,
        "task_type": "CAUSAL_LM",
    }
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return folder
