"""Which of our torch model classes implements each Hugging Face ``model_type``.

To add an architecture: a parser in :data:`core.model.config.PARSERS` (torch-free; ModelSpec
then knows the family too), a :class:`~core.model.base.CausalLM` subclass with
``hf_architectures = {model_type: "TransformersClassName"}`` and ``hf_weights`` on its layers,
then :func:`register_architecture` it here.
"""

from __future__ import annotations

from .base import CausalLM
from .errors import UnknownArchitectureError
from .hybrid import BambaForCausalLM
from .llama import LlamaForCausalLM
from .mixtral import MixtralForCausalLM

__all__ = ["model_class", "register_architecture", "supported_model_types"]

_REGISTRY: dict[str, type[CausalLM]] = {}


def register_architecture(cls: type[CausalLM]) -> type[CausalLM]:
    """Make ``cls`` the implementation of every ``model_type`` in ``cls.hf_architectures``."""
    for model_type in cls.hf_architectures:
        _REGISTRY[model_type] = cls
    return cls


for _cls in (LlamaForCausalLM, MixtralForCausalLM, BambaForCausalLM):
    register_architecture(_cls)


def supported_model_types() -> list[str]:
    """The ``model_type`` values a torch model can be built for."""
    return sorted(_REGISTRY)


def model_class(model_type: str) -> type[CausalLM]:
    """Our class for ``model_type``; UnknownArchitectureError names it and lists the known."""
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise UnknownArchitectureError(
            f"model_type {model_type!r} is not supported by the torch models (ModelSpec may "
            f"still count it); supported: {', '.join(supported_model_types())}"
        ) from None
