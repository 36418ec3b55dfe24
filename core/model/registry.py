"""Which of our model classes implements each Hugging Face ``model_type``.

To add an architecture: write a :class:`~core.model.base.CausalLM` subclass with
``hf_architectures = {model_type: "TransformersClassName"}``, a ``config_from_hf`` and
``hf_weights`` on its layers, then :func:`register_architecture` it here.
"""

from __future__ import annotations

from typing import Any

from .base import CausalLM
from .config import ModelConfig
from .errors import ConfigError, UnknownArchitectureError
from .hybrid import BambaForCausalLM
from .llama import LlamaForCausalLM
from .mixtral import MixtralForCausalLM

__all__ = ["config_from_hf", "model_class", "register_architecture", "supported_model_types"]

_REGISTRY: dict[str, type[CausalLM]] = {}


def register_architecture(cls: type[CausalLM]) -> type[CausalLM]:
    """Make ``cls`` the implementation of every ``model_type`` in ``cls.hf_architectures``."""
    for model_type in cls.hf_architectures:
        _REGISTRY[model_type] = cls
    return cls


for _cls in (LlamaForCausalLM, MixtralForCausalLM, BambaForCausalLM):
    register_architecture(_cls)


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def model_class(model_type: str) -> type[CausalLM]:
    """Our class for ``model_type``; UnknownArchitectureError names it and lists the known."""
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise UnknownArchitectureError(
            f"model_type {model_type!r} is not supported; supported: "
            f"{', '.join(supported_model_types())}"
        ) from None


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Parse a ``config.json`` dict with the parser of its ``model_type``."""
    model_type = hf.get("model_type")
    if not model_type:
        raise ConfigError(f"{source}: no 'model_type' key, cannot tell the architecture")
    return model_class(model_type).config_from_hf(hf)
