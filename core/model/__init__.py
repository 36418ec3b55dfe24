"""Models: ModelSpec (shapes -> bytes and FLOPs), layers, architectures, HF checkpoint I/O.

The config parser (:mod:`.config`), :class:`ModelSpec`, the presets and the errors import
without torch, so the simulator can use them; the torch classes and the checkpoint loaders
(everything in ``_TORCH`` below) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import MambaConfig, ModelConfig, MoEConfig, RopeConfig, config_from_hf, load_config
from .errors import (
    CheckpointError,
    ConfigError,
    MissingCheckpointFileError,
    MissingWeightError,
    UnknownArchitectureError,
)
from .presets import PRESETS, preset_config, preset_names
from .spec import ModelSpec

# name -> the submodule that defines it; these need torch.
_TORCH = {
    "CausalLM": "base",
    "ForwardBatch": "batch",
    "ForwardContext": "batch",
    "KVCache": "cache",
    "StatePool": "cache",
    "build_random_model": "checkpoint",
    "hf_state_dict": "checkpoint",
    "load_model": "checkpoint",
    "load_tokenizer": "checkpoint",
    "load_weights": "checkpoint",
    "save_model": "checkpoint",
    "BambaForCausalLM": "hybrid",
    "LlamaForCausalLM": "llama",
    "MixtralForCausalLM": "mixtral",
    "model_class": "registry",
    "register_architecture": "registry",
    "supported_model_types": "registry",
}

if TYPE_CHECKING:
    from .base import CausalLM
    from .batch import ForwardBatch, ForwardContext
    from .cache import KVCache, StatePool
    from .checkpoint import (
        build_random_model,
        hf_state_dict,
        load_model,
        load_tokenizer,
        load_weights,
        save_model,
    )
    from .hybrid import BambaForCausalLM
    from .llama import LlamaForCausalLM
    from .mixtral import MixtralForCausalLM
    from .registry import model_class, register_architecture, supported_model_types


def __getattr__(name: str) -> Any:  # PEP 562: import the torch parts on first use
    if name not in _TORCH:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(f".{_TORCH[name]}", __name__)
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in ("torch", "transformers", "safetensors"):
            raise
        raise ModuleNotFoundError(
            f"{__name__}.{name} needs {e.name}, from the engine extra: pip install "
            "'servelab[engine]' (install torch first, see the README)",
            name=e.name,
        ) from e
    value = globals()[name] = getattr(module, name)
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_TORCH])


__all__ = [
    "PRESETS",
    "BambaForCausalLM",
    "CausalLM",
    "CheckpointError",
    "ConfigError",
    "ForwardBatch",
    "ForwardContext",
    "KVCache",
    "LlamaForCausalLM",
    "MambaConfig",
    "MissingCheckpointFileError",
    "MissingWeightError",
    "MixtralForCausalLM",
    "ModelConfig",
    "ModelSpec",
    "MoEConfig",
    "RopeConfig",
    "StatePool",
    "UnknownArchitectureError",
    "build_random_model",
    "config_from_hf",
    "hf_state_dict",
    "load_config",
    "load_model",
    "load_tokenizer",
    "load_weights",
    "model_class",
    "preset_config",
    "preset_names",
    "register_architecture",
    "save_model",
    "supported_model_types",
]
