"""ModelConfig: one normalized, typed view of a Hugging Face ``config.json``.

Hugging Face configs differ by family and by transformers version (``rope_theta`` and
``rope_scaling`` in 4.x, ``rope_parameters`` in 5.x; ``layer_types`` or ``max_window_layers``
for sliding windows; Bamba's ``attn_layer_indices``). Each architecture parses its
``config.json`` dict into a :class:`ModelConfig` (see ``config_from_hf`` on the model classes),
so the layers read plain fields and never look at HF names. The original dict is kept in
``hf_config`` and written back unchanged on save, so transformers loads what we save.

A key the family requires (``hidden_size``...) raises :class:`ConfigError` naming it; optional
keys take the defaults of the transformers config class of that family.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = ["MambaConfig", "ModelConfig", "MoEConfig", "RopeConfig", "parse_rope", "require"]

ATTENTION = "attention"
MAMBA = "mamba"


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding: ``rope_type`` is ``default``, ``linear`` or ``llama3``.

    ``partial_rotary_factor < 1`` rotates only the first ``head_dim * factor`` channels of each
    head (Bamba rotates half).
    """

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None
    partial_rotary_factor: float = 1.0


@dataclass(frozen=True)
class MoEConfig:
    """Sparse mixture of experts (Mixtral): softmax over ``num_experts`` router logits, keep
    the ``top_k`` largest and renormalize them to sum to one."""

    num_experts: int
    top_k: int
    intermediate_size: int


@dataclass(frozen=True)
class MambaConfig:
    """A Mamba2 mixer: ``n_heads`` heads of ``head_dim`` channels, ``d_state`` state size,
    ``n_groups`` B/C groups, a depthwise conv of width ``d_conv``; ``time_step_limit`` clamps
    ``dt`` after the softplus."""

    n_heads: int
    head_dim: int
    d_state: int
    n_groups: int
    d_conv: int
    chunk_size: int
    conv_bias: bool = True
    proj_bias: bool = False
    time_step_limit: tuple[float, float] = (0.0, math.inf)

    @property
    def intermediate_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        """Channels through the conv: x, then B and C of every group."""
        return self.intermediate_size + 2 * self.n_groups * self.d_state


@dataclass(frozen=True)
class ModelConfig:
    """Everything the layers need, with one name per concept.

    ``layer_types[i]`` is ``"attention"`` or ``"mamba"``; ``sliding_windows[i]`` the attention
    window of layer ``i`` (None: full causal). ``moe`` is set for MoE models, ``mamba`` for
    hybrids. ``hf_config`` is the ``config.json`` dict this was parsed from.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    layer_types: tuple[str, ...]
    sliding_windows: tuple[int | None, ...]
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    moe: MoEConfig | None = None
    mamba: MambaConfig | None = None
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    hf_config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == ATTENTION]

    @property
    def mamba_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == MAMBA]

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` content (a copy of ``hf_config``)."""
        return json.loads(json.dumps(self.hf_config, default=_json_default))


def _json_default(obj: Any) -> Any:
    raise TypeError(f"config value {obj!r} is not JSON serializable")


def decode_floats(value: Any) -> Any:
    """transformers 5 writes non-finite floats as ``{"__float__": "Infinity"}``."""
    if isinstance(value, Mapping):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: decode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_floats(v) for v in value]
    return value


def require(hf: Mapping[str, Any], key: str) -> Any:
    """``hf[key]``, or ConfigError naming the key and the model type."""
    if hf.get(key) is None:
        raise ConfigError(
            f"config.json ({hf.get('model_type', '?')}): required key {key!r} is missing"
        )
    return hf[key]


def check_activation(hf: Mapping[str, Any], key: str = "hidden_act") -> None:
    act = hf.get(key, "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"config.json: {key}={act!r} is not supported (only silu)")


def parse_rope(
    hf: Mapping[str, Any], default_theta: float = 10000.0, partial_rotary_factor: float = 1.0
) -> RopeConfig:
    """Read rope settings from either the 5.x ``rope_parameters`` or 4.x ``rope_theta`` and
    ``rope_scaling``; unsupported scaling types raise ConfigError naming the type."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if params and all(isinstance(v, Mapping) for v in params.values()):
        raise ConfigError("config.json: per-layer-type rope_parameters are not supported")
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", hf.get("rope_theta", default_theta))
    partial = params.get(
        "partial_rotary_factor", hf.get("partial_rotary_factor", partial_rotary_factor)
    )
    if rope_type == "default":
        return RopeConfig(theta=float(theta), partial_rotary_factor=float(partial))
    if rope_type == "linear":
        return RopeConfig(float(theta), "linear", float(params["factor"]),
                          partial_rotary_factor=float(partial))
    if rope_type == "llama3":
        original = params.get(
            "original_max_position_embeddings",
            hf.get("original_max_position_embeddings", hf.get("max_position_embeddings")),
        )
        return RopeConfig(
            theta=float(theta),
            rope_type="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(original),
            partial_rotary_factor=float(partial),
        )
    raise ConfigError(
        f"config.json: rope type {rope_type!r} is not supported (default, linear, llama3)"
    )
