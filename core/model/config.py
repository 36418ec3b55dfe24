"""ModelConfig: one normalized, typed view of a Hugging Face ``config.json``; torch-free.

Hugging Face configs differ by family and by transformers version (``rope_theta`` and
``rope_scaling`` in 4.x, ``rope_parameters`` in 5.x; ``layer_types`` or ``max_window_layers``
for sliding windows; Bamba's ``attn_layer_indices``; NemotronH's ``hybrid_override_pattern`` or
``layers_block_type``). One parser per family (:data:`PARSERS`) reads a ``config.json`` dict
into a :class:`ModelConfig`, so the torch layers and :class:`~core.model.spec.ModelSpec` (bytes
and FLOPs) read the same plain fields and never look at HF names. The original dict is kept in
``hf_config`` and written back unchanged on save, so transformers loads what we save.

Keys a config leaves out take the defaults of the transformers (5.x) config class of its family,
so a dict and the transformers config object built from it parse alike; an explicit ``null``
falls back to what transformers derives (``num_key_value_heads``: the query heads; ``head_dim``:
``hidden_size // num_attention_heads``). Special token ids are only read, never defaulted. A value
of the wrong type or inconsistent shapes raise :class:`ConfigError` naming the key; an unknown
``model_type`` raises :class:`UnknownArchitectureError`. Features a config may ask for but our
torch modules do not implement (a GELU MLP, YaRN RoPE) parse fine: the model refuses to build.
"""

from __future__ import annotations

import builtins
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, MissingCheckpointFileError, UnknownArchitectureError

__all__ = [
    "PARSERS",
    "SUPPORTED_MODEL_TYPES",
    "MambaConfig",
    "ModelConfig",
    "MoEConfig",
    "RopeConfig",
    "config_from_hf",
    "decode_floats",
    "load_config",
    "parse_rope",
    "read_hf_config",
    "read_json",
]

# A layer's token mixer (``layer_types``) and its MLP (``mlp_types``); NemotronH layers have one
# of the two, the other is NONE.
ATTENTION, MAMBA, NONE = "attention", "mamba", "none"
DENSE, MOE = "dense", "moe"


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding: ``rope_type`` as the config names it (our layers implement
    ``default``, ``linear`` and ``llama3``).

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
    """A sparse mixture of experts: a linear router (``num_experts x hidden``, no bias) picks
    ``top_k`` of ``num_experts`` MLPs of ``intermediate_size`` each (Mixtral: softmax over the
    router logits, keep the ``top_k`` largest, renormalize them to sum to one).

    ``gated``: SwiGLU experts (gate, up, down) or not (NemotronH's ReLU^2: up, down). NemotronH
    also has an always-on shared expert of ``shared_intermediate_size`` (0: none) and optional
    latent projections (``latent_size``: the experts then work in that width); ``bias`` applies to
    the shared expert and the latent projections.
    """

    num_experts: int
    top_k: int
    intermediate_size: int
    gated: bool = True
    shared_intermediate_size: int = 0
    latent_size: int | None = None
    bias: bool = False


@dataclass(frozen=True)
class MambaConfig:
    """A Mamba2 (SSD) mixer, the same in every Mamba layer.

    ``n_heads`` (H) x ``head_dim`` (P) = ``d_inner``; ``d_state`` (N) is the SSM state size per
    channel; B and C are shared by the heads of each of ``n_groups`` groups; ``d_conv`` is the
    width of the causal depthwise conv over ``conv_dim = d_inner + 2 * n_groups * d_state``
    channels; ``expand`` is as the config states it (Bamba: ``d_inner = expand * hidden_size``;
    NemotronH sets ``d_inner`` by heads x head_dim); ``chunk_size`` is the SSD kernel's chunk;
    ``time_step_limit`` clamps ``dt`` after the softplus.

    Per sequence and layer an engine keeps the SSM state (``H*P*N`` values) and the conv state
    (``conv_dim * (d_conv - 1)`` values: the last inputs the conv needs).
    """

    n_heads: int
    head_dim: int
    d_state: int
    n_groups: int
    d_conv: int
    chunk_size: int
    conv_bias: bool = True
    proj_bias: bool = False
    expand: float = 2
    time_step_limit: tuple[float, float] = (0.0, math.inf)

    @property
    def d_inner(self) -> int:
        """Inner (expanded) width: ``n_heads * head_dim``."""
        return self.n_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        """Channels through the conv: x, then B and C of every group."""
        return self.d_inner + 2 * self.n_groups * self.d_state

    @property
    def in_proj_dim(self) -> int:
        """Output width of ``in_proj``: z (``d_inner``), xBC (``conv_dim``) and dt (``n_heads``)."""
        return self.d_inner + self.conv_dim + self.n_heads

    @property
    def state_numel(self) -> int:
        """Values in one layer's SSM state for one sequence: ``n_heads * head_dim * d_state``."""
        return self.n_heads * self.head_dim * self.d_state

    @property
    def conv_state_numel(self) -> int:
        """Values in one layer's conv state for one sequence: ``conv_dim * (d_conv - 1)``."""
        return self.conv_dim * (self.d_conv - 1)


@dataclass(frozen=True)
class ModelConfig:
    """Everything the layers and the cost model need, with one name per concept.

    Layer ``i`` has the token mixer ``layer_types[i]`` (``"attention"``, ``"mamba"`` or
    ``"none"``) and then the MLP ``mlp_types[i]`` (``"dense"``, ``"moe"`` or ``"none"``; NemotronH
    layers have one of the two). ``sliding_windows[i]`` is the attention window of layer ``i``
    (None: full causal). The attention fields are shared by all attention layers, ``moe`` by all
    MoE layers and ``mamba`` by all Mamba layers. ``hidden_act`` is the MLP activation,
    ``mlp_gated`` whether the MLP gates it (SwiGLU) or not (NemotronH's ReLU^2). ``hf_config`` is
    the ``config.json`` dict this was parsed from.
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
    mlp_types: tuple[str, ...]
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    hidden_act: str = "silu"
    mlp_gated: bool = True
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


# --------------------------------------------------------------------------------------------
# Reading a config from a dict, a transformers config object or a checkpoint directory
# --------------------------------------------------------------------------------------------


def decode_floats(value: Any) -> Any:
    """transformers 5 writes non-finite floats as ``{"__float__": "Infinity"}``."""
    if isinstance(value, Mapping):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: decode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_floats(v) for v in value]
    return value


def read_hf_config(source: Any) -> tuple[dict[str, Any], Path | None]:
    """The ``config.json`` dict of ``source`` and the file it came from (None if not a file).

    ``source`` is a dict, a ``transformers.PretrainedConfig`` (its full JSON form), a checkpoint
    directory or a path to its ``config.json``. A missing path raises
    :class:`MissingCheckpointFileError`, unreadable JSON :class:`ConfigError`.
    """
    if isinstance(source, Mapping):
        return dict(source), None
    if hasattr(source, "to_json_string"):  # transformers.PretrainedConfig
        return json.loads(source.to_json_string(use_diff=False)), None
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a config dict, PretrainedConfig or path, got {type(source)}")
    path = Path(source)
    if not path.exists() and path.suffix != ".json":
        raise MissingCheckpointFileError(f"checkpoint directory not found: {path}")
    file = path / "config.json" if path.is_dir() else path
    hf = read_json(file)
    if not isinstance(hf, dict):
        raise ConfigError(f"{file}: a config must be a JSON object, got {type(hf).__name__}")
    return hf, file


def read_json(file: Path) -> Any:
    """The JSON in ``file``: MissingCheckpointFileError if absent, ConfigError if invalid."""
    if not file.is_file():
        raise MissingCheckpointFileError(f"{file}: file not found")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file}: not valid JSON ({e})") from None


def load_config(source: Any) -> ModelConfig:
    """A :class:`ModelConfig` from a checkpoint directory or its ``config.json``, a
    ``config.json`` dict, a transformers config object, or a ModelConfig (returned as is)."""
    if isinstance(source, ModelConfig):
        return source
    hf, file = read_hf_config(source)
    return config_from_hf(hf, source=str(file) if file else "config.json")


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """Parse a ``config.json`` dict with the parser of its family: its ``model_type``, or
    without one the first known class in ``architectures``. ``source`` names it in errors."""
    family = _family(hf, source)
    r = _Reader(decode_floats(dict(hf)), family, source)
    fields = PARSERS[family](r)  # the family's own fields; the shared ones follow
    d, heads = r.int("hidden_size"), r.int("num_attention_heads")
    kv_heads = r.int("num_key_value_heads", heads)
    dim_keys = ("head_dim", "attention_head_dim") if family == "nemotron_h" else ("head_dim",)
    head_dim = next((r.int(k) for k in dim_keys if r.raw(k) is not None), None)
    if ATTENTION in fields["layer_types"]:
        if head_dim is None and d % heads:
            raise r.error(
                f"hidden_size {d} is not a multiple of num_attention_heads {heads}; give head_dim"
            )
        if heads % kv_heads:
            raise r.error(
                f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
    shared = dict(
        model_type=family,
        vocab_size=r.int("vocab_size"),
        hidden_size=d,
        intermediate_size=r.int("intermediate_size"),
        num_layers=len(fields["layer_types"]),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim or d // heads,
        rms_norm_eps=r.float("layer_norm_epsilon" if family == "nemotron_h" else "rms_norm_eps"),
        rope=parse_rope(
            r.hf, r.defaults["rope_theta"], r.defaults.get("partial_rotary_factor", 1.0)
        ),
        max_position_embeddings=r.int("max_position_embeddings"),
        tie_word_embeddings=r.flag("tie_word_embeddings"),
        hidden_act=str(r.raw("hidden_act", "silu")),
        initializer_range=r.float("initializer_range", 0.02),
        bos_token_id=r.hf.get("bos_token_id"),
        eos_token_id=r.hf.get("eos_token_id"),
        pad_token_id=r.hf.get("pad_token_id"),
        hf_config=dict(hf),
    )
    return ModelConfig(**{**shared, **fields})


def parse_rope(
    hf: Mapping[str, Any], default_theta: float = 10000.0, partial_rotary_factor: float = 1.0
) -> RopeConfig:
    """Read rope settings from either the 5.x ``rope_parameters`` or 4.x ``rope_theta`` and
    ``rope_scaling``; a scaling type's required parameters missing raise ConfigError."""
    params: dict[str, Any] = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if params and all(isinstance(v, Mapping) for v in params.values()):
        raise ConfigError("config.json: per-layer-type rope_parameters are not supported")
    rope_type = params.get("rope_type", params.get("type", "default"))
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    rope = RopeConfig(
        theta=float(params.get("rope_theta", hf.get("rope_theta", default_theta))),
        rope_type=rope_type,
        partial_rotary_factor=float(partial_rotary_factor if partial is None else partial),
    )
    needed = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}
    missing = [k for k in needed.get(rope_type, ()) if params.get(k) is None]
    if missing:
        raise ConfigError(f"config.json: rope type {rope_type!r} needs {', '.join(missing)}")
    if rope_type == "linear":
        return replace(rope, factor=float(params["factor"]))
    if rope_type == "llama3":
        original = params.get(
            "original_max_position_embeddings",
            hf.get("original_max_position_embeddings", hf.get("max_position_embeddings")),
        )
        return replace(
            rope,
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(original),
        )
    return rope


# --------------------------------------------------------------------------------------------
# The parsers, one per family, and the defaults of the transformers (5.x) config classes
# --------------------------------------------------------------------------------------------

# fmt: off
_QWEN = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768,
             rms_norm_eps=1e-6, rope_theta=10000.0, sliding_window=4096,
             max_window_layers=28)
# Keys a config.json leaves out take these; None for num_key_value_heads / head_dim means
# "derive it" (the query heads; hidden_size // num_attention_heads).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                  num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=2048,
                  rms_norm_eps=1e-6, rope_theta=10000.0),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                    max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=10000.0,
                    sliding_window=4096),
    "mixtral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                    max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=1e6,
                    sliding_window=None, num_local_experts=8, num_experts_per_tok=2),
    "qwen2": _QWEN,
    "qwen3": {**_QWEN, "head_dim": 128},
    "bamba": dict(vocab_size=128000, hidden_size=4096, intermediate_size=14336,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                  max_position_embeddings=262144, rms_norm_eps=1e-5, rope_theta=10000.0,
                  partial_rotary_factor=0.5, mamba_n_heads=128, mamba_d_head="auto",
                  mamba_n_groups=1, mamba_d_state=256, mamba_d_conv=4, mamba_expand=2,
                  mamba_chunk_size=256),
    "nemotron_h": dict(vocab_size=131072, hidden_size=4096, intermediate_size=21504,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=4096, layer_norm_epsilon=1e-5, rope_theta=10000.0,
                       mlp_hidden_act="relu2", mamba_num_heads=128, mamba_head_dim=64,
                       ssm_state_size=128, n_groups=8, conv_kernel=4, expand=2, chunk_size=128,
                       n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=7688,
                       moe_shared_expert_intermediate_size=7688, n_shared_experts=1),
}
# fmt: on

_ARCH_TO_TYPE = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "BambaForCausalLM": "bamba",
    "NemotronHForCausalLM": "nemotron_h",
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_DEFAULTS))
"""The ``model_type`` values :func:`config_from_hf` parses."""


def _family(hf: Mapping[str, Any], source: str) -> str:
    model_type = hf.get("model_type")
    archs = list(hf.get("architectures") or [])
    if model_type in _DEFAULTS:
        return str(model_type)
    known = f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (architectures {sorted(_ARCH_TO_TYPE)})"
    if not model_type:
        for arch in archs:
            if arch in _ARCH_TO_TYPE:
                return _ARCH_TO_TYPE[arch]
        raise ConfigError(
            f"{source}: no 'model_type' key, cannot tell the architecture "
            f"(architectures={archs!r}); {known}"
        )
    raise UnknownArchitectureError(
        f"{source}: model_type {model_type!r} is not supported (architectures={archs!r}); {known}"
    )


class _Reader:
    """Typed reads of one config dict with its family's defaults; errors name the key."""

    def __init__(self, hf: dict[str, Any], family: str, source: str) -> None:
        self.hf, self.family, self.source = hf, family, source
        self.defaults = _DEFAULTS[family]

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.source} ({self.family}): {message}")

    def raw(self, key: str, default: Any = None) -> Any:
        """The value of ``key``; the family default if missing; ``default`` if that is None."""
        value = self.hf[key] if key in self.hf else self.defaults.get(key)
        return default if value is None else value

    def alias(self, key: str, old: str) -> str:
        """``old`` if the config spells ``key`` that way (NemotronH's ``mamba_*`` names)."""
        return old if key not in self.hf and old in self.hf else key

    def int(self, key: str, default: Any = None, *, minimum: int = 1) -> int:
        value = self.raw(key, default)
        if value is None:
            raise self.error(f"config has no {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise self.error(f"{key}={value!r} is not an integer")
        if value < minimum:
            raise self.error(f"{key}={value!r} must be >= {minimum}")
        return int(value)

    def float(self, key: str, default: Any = None) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"{key}={value!r} is not a number")
        return float(value)

    def flag(self, key: str, default: bool = False) -> bool:
        return bool(self.raw(key, default))

    def limit(self, key: str) -> tuple[builtins.float, builtins.float]:  # `float` here: the method
        lo, hi = self.raw(key, (0.0, math.inf))
        return float(lo), float(hi)


def _dense(r: _Reader) -> dict[str, Any]:
    """Llama, Mistral, Qwen2, Qwen3 (dense) and Mixtral (MoE): attention and an MLP in every
    layer; they differ in biases, q/k norm and sliding windows."""
    family, n = r.family, r.int("num_hidden_layers")
    bias = r.flag("attention_bias")
    fields: dict[str, Any] = dict(
        layer_types=(ATTENTION,) * n,
        sliding_windows=_sliding_windows(r, n),
        mlp_types=(MOE if family == "mixtral" else DENSE,) * n,
        # As transformers builds them: Qwen2 always has q/k/v biases and no o bias; Llama and
        # Qwen3 put attention_bias on all four; Mistral and Mixtral have none.
        qkv_bias={"qwen2": True, "llama": bias, "qwen3": bias}.get(family, False),
        o_bias=bias if family in ("llama", "qwen3") else False,
        mlp_bias=r.flag("mlp_bias") if family == "llama" else False,
        qk_norm=family == "qwen3",
    )
    if family == "mixtral":
        experts, top_k = r.int("num_local_experts"), r.int("num_experts_per_tok")
        if top_k > experts:
            raise r.error(f"num_experts_per_tok {top_k} > num_local_experts {experts}")
        fields["moe"] = MoEConfig(experts, top_k, r.int("intermediate_size"))
    return fields


def _sliding_windows(r: _Reader, n: int) -> tuple[int | None, ...]:
    """Mistral and Mixtral apply ``sliding_window`` to every layer. Qwen2 and Qwen3 apply it only
    with ``use_sliding_window`` (transformers sets it to None otherwise), to the layers
    ``layer_types`` marks ``sliding_attention`` (default: from ``max_window_layers`` on)."""
    if r.family in ("mistral", "mixtral"):
        return (r.int("sliding_window") if r.raw("sliding_window") is not None else None,) * n
    if r.family not in ("qwen2", "qwen3"):
        return (None,) * n
    use = r.flag("use_sliding_window") and r.raw("sliding_window") is not None
    window = r.int("sliding_window") if use else None
    types = r.hf.get("layer_types")
    if types is None:
        first = r.int("max_window_layers", minimum=0)
        types = ["sliding_attention" if use and i >= first else "full_attention" for i in range(n)]
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if len(types) != n or unknown:
        raise r.error(
            f"layer_types must be {n} of full_attention, sliding_attention; "
            f"got {len(types)}, unknown {unknown}"
        )
    return tuple(window if t == "sliding_attention" else None for t in types)


def _bamba(r: _Reader) -> dict[str, Any]:
    """Bamba: each layer mixes with attention (indices in ``attn_layer_indices``) or Mamba2, then
    a gated MLP; attention rotates half of each head (partial RoPE 0.5)."""
    n = r.int("num_hidden_layers")
    attn = sorted(set(r.raw("attn_layer_indices", [])))
    bad = [i for i in attn if not (isinstance(i, int) and 0 <= i < n)]
    if bad:
        raise r.error(f"attn_layer_indices {bad} outside 0..{n - 1}")
    n_heads, expand = r.int("mamba_n_heads"), r.raw("mamba_expand")
    d_inner = int(expand * r.int("hidden_size"))
    head_dim = d_inner // n_heads if r.raw("mamba_d_head") == "auto" else r.int("mamba_d_head")
    if n_heads * head_dim != d_inner:
        raise r.error(
            f"mamba_n_heads {n_heads} x mamba_d_head {head_dim} != "
            f"mamba_expand * hidden_size = {d_inner}"
        )
    bias = r.flag("attention_bias")
    return dict(
        layer_types=tuple(ATTENTION if i in attn else MAMBA for i in range(n)),
        sliding_windows=(None,) * n,
        mlp_types=(DENSE,) * n,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=r.flag("mlp_bias"),
        mamba=MambaConfig(
            n_heads=n_heads,
            head_dim=head_dim,
            d_state=r.int("mamba_d_state"),
            n_groups=r.int("mamba_n_groups"),
            d_conv=r.int("mamba_d_conv", minimum=2),
            chunk_size=r.int("mamba_chunk_size"),
            conv_bias=r.flag("mamba_conv_bias", True),
            proj_bias=r.flag("mamba_proj_bias"),
            expand=expand,
            time_step_limit=r.limit("time_step_limit"),
        ),
    )


# NemotronH block names: hybrid_override_pattern characters, transformers 5 layers_block_type
# values, and their legacy spellings -> (mixer, MLP).
_NEMOTRON_BLOCKS = {
    "M": (MAMBA, NONE),
    "*": (ATTENTION, NONE),
    "-": (NONE, DENSE),
    "E": (NONE, MOE),
    "linear_attention": (MAMBA, NONE),
    "mamba": (MAMBA, NONE),
    "full_attention": (ATTENTION, NONE),
    "attention": (ATTENTION, NONE),
    "mlp": (NONE, DENSE),
    "moe": (NONE, MOE),
}


def _nemotron_h(r: _Reader) -> dict[str, Any]:
    """NemotronH: each layer is one block (Mamba2, attention, ReLU^2 MLP or MoE) with its own
    pre-norm, from ``hybrid_override_pattern`` (``M * - E``) or ``layers_block_type``."""
    blocks, key = r.hf.get("layers_block_type") or r.hf.get("layer_types"), "layers_block_type"
    if blocks is None and r.hf.get("hybrid_override_pattern") is not None:
        blocks, key = list(r.hf["hybrid_override_pattern"]), "hybrid_override_pattern"
    if not blocks:
        raise r.error("config has neither hybrid_override_pattern nor layers_block_type")
    unknown = sorted({b for b in blocks if b not in _NEMOTRON_BLOCKS})
    if unknown:
        raise r.error(f"unknown block types {unknown} in {key}; known: {sorted(_NEMOTRON_BLOCKS)}")
    mixers, mlps = zip(*(_NEMOTRON_BLOCKS[b] for b in blocks), strict=True)
    mlp_bias = r.flag("mlp_bias")
    fields: dict[str, Any] = dict(
        layer_types=mixers,
        sliding_windows=(None,) * len(blocks),
        mlp_types=mlps,
        mlp_bias=mlp_bias,
        hidden_act=r.raw("mlp_hidden_act"),
        mlp_gated=False,
    )
    if MAMBA in mixers:
        fields["mamba"] = MambaConfig(
            n_heads=r.int("mamba_num_heads"),
            head_dim=r.int("mamba_head_dim"),
            d_state=r.int("ssm_state_size"),
            n_groups=r.int(r.alias("n_groups", "mamba_n_groups")),
            d_conv=r.int(r.alias("conv_kernel", "mamba_d_conv"), minimum=2),
            chunk_size=r.int(r.alias("chunk_size", "mamba_chunk_size")),
            conv_bias=r.flag(r.alias("use_conv_bias", "mamba_conv_bias"), True),
            proj_bias=r.flag("use_bias"),
            expand=r.raw(r.alias("expand", "mamba_expand")),
            time_step_limit=r.limit(r.alias("time_step_limit", "mamba_dt_limit")),
        )
    if MOE in mlps:
        experts = r.int(r.alias("n_routed_experts", "num_local_experts"))
        top_k = r.int("num_experts_per_tok")
        if top_k > experts:
            raise r.error(f"num_experts_per_tok {top_k} > n_routed_experts {experts}")
        shared = r.int("moe_shared_expert_intermediate_size", minimum=0)
        fields["moe"] = MoEConfig(
            num_experts=experts,
            top_k=top_k,
            intermediate_size=r.int("moe_intermediate_size"),
            gated=False,
            shared_intermediate_size=shared if r.int("n_shared_experts", minimum=0) else 0,
            latent_size=r.int("moe_latent_size") if r.raw("moe_latent_size") else None,
            bias=mlp_bias,
        )
    return fields


PARSERS: dict[str, Callable[[_Reader], dict[str, Any]]] = {
    "llama": _dense,
    "mistral": _dense,
    "mixtral": _dense,
    "qwen2": _dense,
    "qwen3": _dense,
    "bamba": _bamba,
    "nemotron_h": _nemotron_h,
}
"""``model_type`` -> the family parser: the family's own fields of :class:`ModelConfig` (layer
kinds, windows, biases, MoE, Mamba); :func:`config_from_hf` reads the shared ones."""
