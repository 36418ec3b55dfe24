"""Models: ModelSpec (shapes -> bytes and FLOPs), layers, architectures, HF checkpoint I/O."""

from .base import CausalLM
from .batch import ForwardBatch, ForwardContext
from .cache import KVCache, StatePool
from .checkpoint import (
    build_random_model,
    hf_state_dict,
    load_config,
    load_model,
    load_tokenizer,
    load_weights,
    save_model,
)
from .config import MambaConfig, ModelConfig, MoEConfig, RopeConfig
from .errors import (
    CheckpointError,
    ConfigError,
    MissingCheckpointFileError,
    MissingWeightError,
    UnknownArchitectureError,
)
from .hybrid import BambaForCausalLM
from .llama import LlamaForCausalLM
from .mixtral import MixtralForCausalLM
from .registry import model_class, register_architecture, supported_model_types
from .spec import ModelSpec

__all__ = [
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
    "hf_state_dict",
    "load_config",
    "load_model",
    "load_tokenizer",
    "load_weights",
    "model_class",
    "register_architecture",
    "save_model",
    "supported_model_types",
]

