"""ModelSpec: a model's shapes, and from them its bytes and FLOPs.

A :class:`ModelSpec` describes a decoder-only LLM well enough for memory planning (weights, KV
cache, SSM state) and for cost models (FLOPs and bytes moved per operator of a serving step),
derived from a :class:`~core.model.config.ModelConfig` (no weights needed). Families:
``llama``, ``mistral``, ``qwen2``, ``qwen3``, ``mixtral``, ``bamba``, ``nemotron_h``; anything
else raises ``UnknownArchitectureError`` (a ``ValueError``), attention windows that differ
between layers a ``ConfigError``. Units: parameter counts are scalars (``int``), memory sizes
bytes (``int``, rounded up), FLOPs count a multiply-add as 2 (``float``); a *dtype* is a name,
a ``torch.dtype`` or bytes per value (:func:`dtype_bytes`).

Family details and the FLOP and byte model: docs/core/model.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Any

from .config import (
    ATTENTION,
    MAMBA,
    SUPPORTED_MODEL_TYPES,
    MambaConfig,
    ModelConfig,
    MoEConfig,
    config_from_hf,
    read_hf_config,
)
from .errors import ConfigError
from .presets import PRESETS, preset_config, preset_key, preset_names

__all__ = [
    "DType",
    "AttentionSpec",
    "DenseMLPSpec",
    "LayerSpec",
    "Mamba2Spec",
    "MLPKind",
    "Mixer",
    "ModelSpec",
    "MoESpec",
    "Operator",
    "OpKind",
    "PRESETS",
    "SUPPORTED_MODEL_TYPES",
    "dtype_bytes",
    "preset_config",
    "preset_names",
]

Mamba2Spec = MambaConfig
"""The Mamba2 mixer shapes (:class:`~core.model.config.MambaConfig`, the same class)."""
MoESpec = MoEConfig
"""The mixture-of-experts shapes (:class:`~core.model.config.MoEConfig`, the same class)."""

DType = str | int | float | Any
"""A dtype: a name (``"bf16"``), a ``torch.dtype``, or bytes per value (``2``, ``0.5``)."""

# fmt: off
_DTYPE_BYTES: dict[str, float] = {
    "float64": 8, "fp64": 8, "double": 8,
    "float32": 4, "fp32": 4, "float": 4, "tf32": 4,
    "float16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2,
    "float8": 1, "fp8": 1, "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1,
    "float8_e5m2fnuz": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1, "uint8": 1,
    "int4": 0.5, "uint4": 0.5, "fp4": 0.5, "nf4": 0.5, "float4_e2m1fn_x2": 1,
}
# fmt: on


def dtype_bytes(dtype: DType) -> float:
    """Bytes per value of ``dtype``.

    Accepts a name (case-insensitive, ``torch.`` prefix allowed: ``"bfloat16"``, ``"bf16"``,
    ``"fp8"``, ``"int4"`` -> 0.5, ...), a ``torch.dtype`` (``torch.float16`` -> 2;
    ``float4_e2m1fn_x2`` packs two values in its one byte, so it counts 1 per element of the
    packed tensor), or a positive
    number of bytes per value, returned as is. Raises ``ValueError`` for anything else.
    """
    if isinstance(dtype, bool):
        raise ValueError(f"not a dtype: {dtype!r}")
    if isinstance(dtype, (int, float)):
        if dtype <= 0 or not math.isfinite(dtype):
            raise ValueError(f"bytes per value must be a positive number, got {dtype!r}")
        return float(dtype)
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(sorted(_DTYPE_BYTES))}")
    return float(_DTYPE_BYTES[key])


def _ceil_bytes(x: float) -> int:
    # Sizes are exact products of integers and bytes per value (multiples of 0.5): ceil is exact.
    return math.ceil(x - 1e-9)


# --------------------------------------------------------------------------------------------
# Layer kinds and block shapes
# --------------------------------------------------------------------------------------------


class Mixer(str, Enum):
    """The token mixer of a layer: causal self-attention, a Mamba2 (SSD) mixer, or none (a
    NemotronH MLP-only layer)."""

    ATTENTION = "attention"
    MAMBA2 = "mamba2"
    NONE = "none"


class MLPKind(str, Enum):
    """The channel mixer of a layer: a dense MLP, a mixture of experts, or none (a NemotronH
    mixer-only layer)."""

    DENSE = "dense"
    MOE = "moe"
    NONE = "none"


@dataclass(frozen=True)
class LayerSpec:
    """One decoder layer: its mixer and its MLP (either may be ``NONE``, not both). Each present
    sub-block has its own pre-RMSNorm of ``hidden_size`` weights and a residual add."""

    mixer: Mixer
    mlp: MLPKind

    def __post_init__(self) -> None:
        if self.mixer is Mixer.NONE and self.mlp is MLPKind.NONE:
            raise ValueError("a layer needs a mixer or an MLP")


@dataclass(frozen=True)
class AttentionSpec:
    """Shapes of the (grouped-query) attention blocks, shared by all attention layers.

    ``head_dim`` is the config's explicit ``head_dim`` when it has one, else
    ``hidden_size // n_heads``. ``qkv_bias``/``o_bias``: whether those projections have biases.
    ``qk_norm``: per-head RMSNorm on q and k (Qwen3). ``sliding_window``: tokens a query attends at
    most (``None``: full causal attention).
    """

    n_heads: int
    n_kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None

    @property
    def q_dim(self) -> int:
        """Width of the query projection output: ``n_heads * head_dim``."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projection outputs: ``n_kv_heads * head_dim``."""
        return self.n_kv_heads * self.head_dim


@dataclass(frozen=True)
class DenseMLPSpec:
    """Shapes of the dense MLP blocks: ``intermediate_size``; ``gated`` (SwiGLU: gate, up, down
    projections) or not (NemotronH's ReLU^2: up, down); ``bias`` on its projections."""

    intermediate_size: int
    gated: bool = True
    bias: bool = False


class OpKind(str, Enum):
    """What kind of work an :class:`Operator` is, for a roofline model to pick its ceiling."""

    GEMM = "gemm"
    ATTENTION = "attention"
    SCAN = "scan"
    ELEMENTWISE = "elementwise"
    MEMORY = "memory"
    COMM = "comm"


@dataclass(frozen=True)
class Operator:
    """One operator of a serving step, summed over the ``count`` layers that run it.

    ``flops``, ``bytes_read`` and ``bytes_written`` are totals over those layers, for one
    tensor-parallel rank; ``comm_bytes`` is the payload of a collective (the size of the tensor
    being all-reduced or all-gathered, per rank, summed over layers), 0 for compute operators.
    """

    name: str
    kind: OpKind
    flops: float
    bytes_read: float
    bytes_written: float
    comm_bytes: float = 0.0
    count: int = 1

    @property
    def bytes(self) -> float:
        """Bytes moved to or from memory: ``bytes_read + bytes_written``."""
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOPs per byte moved (``inf`` if no bytes move)."""
        return self.flops / self.bytes if self.bytes else math.inf


# --------------------------------------------------------------------------------------------
# ModelSpec
# --------------------------------------------------------------------------------------------


def _attended_sum(new: int, before: int, window: int | None) -> int:
    """Sum over the chunk's tokens (positions ``before+1 .. before+new``) of the keys each
    attends: ``min(position, window)``."""
    if new <= 0:
        return 0
    lo, hi = before + 1, before + new
    if window is None or hi <= window:
        return (lo + hi) * new // 2
    if lo > window:
        return new * window
    return (lo + window) * (window - lo + 1) // 2 + (hi - window) * window


def _kv_tokens_read(new: int, before: int, window: int | None) -> int:
    """Distinct cached + new tokens whose K/V a chunk's queries read (each read once)."""
    total = before + new
    return total if window is None else min(total, window + new - 1)


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only model's shapes, and its parameter, memory and FLOP counts.

    Build one with :meth:`from_config` (a parsed :class:`~core.model.config.ModelConfig`),
    :meth:`from_hf_config` or :meth:`from_preset`. The per-layer structure is
    ``layers`` (a mixer and an MLP kind per layer); the block shapes shared by all layers of a
    kind are ``attention``, ``mamba``, ``mlp`` and ``moe`` (``None`` when no layer uses them).

    Contract of the counting methods: parameters are exactly those of the transformers (5.x)
    ``*ForCausalLM`` module built from the same config (``nn.Parameter`` scalars), with two
    deliberate NemotronH exceptions: ``tie_word_embeddings=true`` is honoured (transformers
    ignores it for NemotronH) and ``n_shared_experts=0`` means no shared expert (transformers
    builds one anyway); the router's correction-bias buffer is not a parameter and not counted.
    Memory sizes are bytes; FLOPs follow the model in docs/core/model.md and are whole-model totals
    (tensor parallelism only splits them in :meth:`operators`). Specs are frozen and hashable;
    two specs are equal when all shapes and the name are.
    """

    name: str
    family: str
    vocab_size: int
    hidden_size: int
    layers: tuple[LayerSpec, ...]
    attention: AttentionSpec | None = None
    mamba: Mamba2Spec | None = None
    mlp: DenseMLPSpec | None = None
    moe: MoESpec | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048

    def __post_init__(self) -> None:
        kinds = {(layer.mixer, layer.mlp) for layer in self.layers}
        need = {
            "attention": any(m is Mixer.ATTENTION for m, _ in kinds),
            "mamba": any(m is Mixer.MAMBA2 for m, _ in kinds),
            "mlp": any(f is MLPKind.DENSE for _, f in kinds),
            "moe": any(f is MLPKind.MOE for _, f in kinds),
        }
        for field_name, needed in need.items():
            if needed and getattr(self, field_name) is None:
                raise ValueError(f"{self.name}: layers use {field_name} but its spec is missing")
        if not self.layers:
            raise ValueError(f"{self.name}: a model needs at least one layer")

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: ModelConfig, *, name: str | None = None) -> ModelSpec:
        """The spec of a parsed config. ``name`` defaults to the config's ``_name_or_path``,
        then its ``model_type``. Raises ConfigError if attention layers have different sliding
        windows (the FLOP model has one window)."""
        c = config
        name = name or c.hf_config.get("_name_or_path") or c.model_type
        mixers = {ATTENTION: Mixer.ATTENTION, MAMBA: Mixer.MAMBA2}
        layers = tuple(
            LayerSpec(mixers.get(m, Mixer.NONE), MLPKind(f))
            for m, f in zip(c.layer_types, c.mlp_types, strict=True)
        )
        windows = {c.sliding_windows[i] for i in c.attention_layers}
        if len(windows) > 1:
            raise ConfigError(
                f"{name} ({c.model_type}): attention layers have different sliding windows "
                f"{sorted(windows, key=str)}; ModelSpec counts one window for all"
            )
        attention = None
        if windows:
            attention = AttentionSpec(
                n_heads=c.num_heads,
                n_kv_heads=c.num_kv_heads,
                head_dim=c.head_dim,
                qkv_bias=c.qkv_bias,
                o_bias=c.o_bias,
                qk_norm=c.qk_norm,
                sliding_window=windows.pop(),
            )
        dense = DenseMLPSpec(c.intermediate_size, gated=c.mlp_gated, bias=c.mlp_bias)
        kinds = {layer.mlp for layer in layers}
        return cls(
            name=name,
            family=c.model_type,
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            layers=layers,
            attention=attention,
            mamba=c.mamba if c.mamba_layers else None,
            mlp=dense if MLPKind.DENSE in kinds else None,
            moe=c.moe if MLPKind.MOE in kinds else None,
            tie_word_embeddings=c.tie_word_embeddings,
            max_position_embeddings=c.max_position_embeddings,
        )

    @classmethod
    def from_hf_config(
        cls, config: Mapping[str, Any] | Any | str | os.PathLike[str], *, name: str | None = None
    ) -> ModelSpec:
        """Build a spec from a Hugging Face config, parsed by
        :func:`~core.model.config.config_from_hf` as for the torch models.

        ``config`` is a ``config.json`` dict, a ``transformers.PretrainedConfig``, a path to a
        checkpoint directory or to its ``config.json``, or a parsed ``ModelConfig``. Keys the
        config leaves out take the defaults of the transformers (5.x) config class of its family,
        so a dict and the config object built from it give equal specs. ``name`` defaults to the
        config's ``_name_or_path``, then the directory name for a path, then the ``model_type``.

        Raises ``MissingCheckpointFileError`` (a ``FileNotFoundError``) for a missing path,
        ``ConfigError`` (a ``ValueError``) for unreadable JSON or inconsistent shapes, and
        ``UnknownArchitectureError`` (a ``ConfigError``) for an unsupported ``model_type``.
        """
        if isinstance(config, ModelConfig):
            return cls.from_config(config, name=name)
        hf, file = read_hf_config(config)
        name = name or hf.get("_name_or_path") or (file.parent.name if file else None)
        return cls.from_config(config_from_hf(hf, str(file or name or "config.json")), name=name)

    @classmethod
    def from_preset(cls, name: str) -> ModelSpec:
        """The spec of a preset (see :data:`~core.model.presets.PRESETS`). ``name`` is a preset
        name, case-insensitive, ``_`` and ``-`` alike, or the preset's Hugging Face repo id;
        unknown names raise ``ValueError`` listing the known ones."""
        key = preset_key(name)
        return cls.from_config(config_from_hf(preset_config(key), source=key), name=key)

    # ---- structure ------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        """Number of decoder layers (for NemotronH each block is its own layer)."""
        return len(self.layers)

    @property
    def attention_layer_indices(self) -> tuple[int, ...]:
        """Indices of the layers whose mixer is attention."""
        return tuple(i for i, lyr in enumerate(self.layers) if lyr.mixer is Mixer.ATTENTION)

    @property
    def ssm_layer_indices(self) -> tuple[int, ...]:
        """Indices of the layers whose mixer is Mamba2."""
        return tuple(i for i, lyr in enumerate(self.layers) if lyr.mixer is Mixer.MAMBA2)

    @property
    def n_attention_layers(self) -> int:
        """Number of attention layers (Marconi's N_attn)."""
        return len(self.attention_layer_indices)

    @property
    def n_ssm_layers(self) -> int:
        """Number of Mamba2 layers (Marconi's N_ssm)."""
        return len(self.ssm_layer_indices)

    @property
    def n_mlp_layers(self) -> int:
        """Number of layers with an MLP, dense or MoE (Marconi's N_mlp)."""
        return sum(lyr.mlp is not MLPKind.NONE for lyr in self.layers)

    @property
    def n_moe_layers(self) -> int:
        """Number of layers whose MLP is a mixture of experts."""
        return sum(lyr.mlp is MLPKind.MOE for lyr in self.layers)

    @property
    def is_hybrid(self) -> bool:
        """True if the model has SSM layers."""
        return self.n_ssm_layers > 0

    @property
    def is_moe(self) -> bool:
        """True if the model has MoE layers."""
        return self.n_moe_layers > 0

    @property
    def n_heads(self) -> int:
        """Attention query heads (0 without attention layers)."""
        return self.attention.n_heads if self.attention else 0

    @property
    def n_kv_heads(self) -> int:
        """Attention key/value heads (0 without attention layers)."""
        return self.attention.n_kv_heads if self.attention else 0

    @property
    def head_dim(self) -> int:
        """Attention head dimension (0 without attention layers)."""
        return self.attention.head_dim if self.attention else 0

    @property
    def intermediate_size(self) -> int:
        """Dense MLP intermediate size, else the MoE expert's (0 if neither)."""
        if self.mlp:
            return self.mlp.intermediate_size
        return self.moe.intermediate_size if self.moe else 0

    @property
    def num_experts(self) -> int:
        """Routed experts per MoE layer (0 for dense models)."""
        return self.moe.num_experts if self.moe else 0

    @property
    def top_k(self) -> int:
        """Routed experts per token per MoE layer (0 for dense models)."""
        return self.moe.top_k if self.moe else 0

    # ---- parameters -----------------------------------------------------------------------

    def _attn_params(self) -> tuple[int, int]:
        """(matmul params incl. biases, other params) of one attention block."""
        a, d = self.attention, self.hidden_size
        assert a is not None
        qkv = d * (a.q_dim + 2 * a.kv_dim) + (a.q_dim + 2 * a.kv_dim if a.qkv_bias else 0)
        o = a.q_dim * d + (d if a.o_bias else 0)
        return qkv + o, (2 * a.head_dim if a.qk_norm else 0)

    def _mamba_params(self) -> tuple[int, int]:
        """(matmul params incl. biases, other params) of one Mamba2 mixer."""
        m, d = self.mamba, self.hidden_size
        assert m is not None
        in_proj = d * m.in_proj_dim + (m.in_proj_dim if m.proj_bias else 0)
        out_proj = m.d_inner * d + (d if m.proj_bias else 0)
        conv = m.conv_dim * m.d_conv + (m.conv_dim if m.conv_bias else 0)
        # dt_bias, A_log, D: one per head; the gated RMSNorm: d_inner weights.
        return in_proj + out_proj, conv + 3 * m.n_heads + m.d_inner

    @staticmethod
    def _mlp_params(d: int, inter: int, gated: bool, bias: bool) -> int:
        up = (2 if gated else 1) * inter
        return d * up + inter * d + ((up + d) if bias else 0)

    def _moe_params(self) -> dict[str, int]:
        """Params of one MoE block by part: router, routed experts (all), one expert, shared
        expert plus latent projections."""
        e, d = self.moe, self.hidden_size
        assert e is not None
        width = e.latent_size or d
        one = self._mlp_params(width, e.intermediate_size, e.gated, False)
        shared = (
            self._mlp_params(d, e.shared_intermediate_size, e.gated, e.bias)
            if e.shared_intermediate_size
            else 0
        )
        if e.latent_size:  # fc1: d -> latent, fc2: latent -> d
            shared += 2 * d * e.latent_size + ((e.latent_size + d) if e.bias else 0)
        return {
            "router": e.num_experts * d,
            "experts": e.num_experts * one,
            "expert": one,
            "shared": shared,
        }

    def param_breakdown(self) -> dict[str, int]:
        """Total parameters by part: ``embedding``, ``lm_head`` (0 when tied), ``attention``
        (projections, biases, q/k-norm), ``ssm`` (projections, conv, dt/A/D, gated norm),
        ``mlp`` (dense), ``moe_router``, ``moe_experts`` (all routed experts), ``moe_shared``
        (shared expert and latent projections), ``norms`` (per-block pre-norms and the final
        norm)."""
        d = self.hidden_size
        out = dict.fromkeys(
            (
                "embedding",
                "lm_head",
                "attention",
                "ssm",
                "mlp",
                "moe_router",
                "moe_experts",
                "moe_shared",
                "norms",
            ),
            0,
        )
        out["embedding"] = self.vocab_size * d
        out["lm_head"] = 0 if self.tie_word_embeddings else self.vocab_size * d
        if self.attention:
            out["attention"] = self.n_attention_layers * sum(self._attn_params())
        if self.mamba:
            out["ssm"] = self.n_ssm_layers * sum(self._mamba_params())
        if self.mlp:
            n_dense = sum(lyr.mlp is MLPKind.DENSE for lyr in self.layers)
            out["mlp"] = n_dense * self._mlp_params(
                d, self.mlp.intermediate_size, self.mlp.gated, self.mlp.bias
            )
        if self.moe:
            p = self._moe_params()
            out["moe_router"] = self.n_moe_layers * p["router"]
            out["moe_experts"] = self.n_moe_layers * p["experts"]
            out["moe_shared"] = self.n_moe_layers * p["shared"]
        sub_blocks = sum(
            (lyr.mixer is not Mixer.NONE) + (lyr.mlp is not MLPKind.NONE) for lyr in self.layers
        )
        out["norms"] = (sub_blocks + 1) * d
        return out

    @property
    def num_params(self) -> int:
        """Total parameters (embedding and, if untied, lm_head included)."""
        return sum(self.param_breakdown().values())

    @property
    def num_active_params(self) -> int:
        """Parameters used per token: all but the routed experts, plus ``top_k`` of them per MoE
        layer (Mixtral-8x7B: ~12.9e9 of 46.7e9). Equals :attr:`num_params` for dense models."""
        if not self.moe:
            return self.num_params
        return (
            self.num_params
            - self.param_breakdown()["moe_experts"]
            + self.n_moe_layers * self.moe.top_k * self._moe_params()["expert"]
        )

    def weight_bytes(self, dtype: DType) -> int:
        """Bytes of all weights stored in ``dtype`` (a tied embedding is stored once)."""
        return _ceil_bytes(self.num_params * dtype_bytes(dtype))

    # ---- state memory ---------------------------------------------------------------------

    def kv_bytes_per_token(self, dtype: DType) -> int:
        """KV-cache bytes one token holds over all attention layers:
        ``n_attention_layers * 2 (K, V) * n_kv_heads * head_dim * bytes(dtype)``. 0 without
        attention. (A sliding window bounds how many tokens are needed, not this size.)"""
        if not self.attention:
            return 0
        per = 2 * self.attention.kv_dim * dtype_bytes(dtype)
        return _ceil_bytes(self.n_attention_layers * per)

    def ssm_state_bytes(self, dtype: DType = "float32", conv_dtype: DType | None = None) -> int:
        """Bytes of one sequence's recurrent state over all Mamba2 layers, independent of its
        length: per layer ``n_heads * head_dim * d_state`` SSM-state values in ``dtype`` plus
        ``conv_dim * (d_conv - 1)`` conv-state values in ``conv_dtype`` (default: ``dtype``).

        The dtype is separate from the KV cache's because engines usually keep the SSM state in
        float32 (transformers' NemotronH ``mamba_ssm_cache_dtype``; vLLM's
        ``mamba_ssm_cache_dtype``) and the conv state in the model dtype:
        ``ssm_state_bytes("float32", conv_dtype="bfloat16")``. 0 without SSM layers.
        """
        if not self.mamba:
            return 0
        m = self.mamba
        conv = dtype_bytes(dtype if conv_dtype is None else conv_dtype)
        per = m.state_numel * dtype_bytes(dtype) + m.conv_state_numel * conv
        return _ceil_bytes(self.n_ssm_layers * per)

    # ---- FLOPs ----------------------------------------------------------------------------

    def prefill_flops(
        self, new_tokens: int, context_before: int = 0, *, all_logits: bool = False
    ) -> float:
        """FLOPs of prefilling a chunk of ``new_tokens`` tokens of one sequence whose first
        ``context_before`` tokens are already cached (KV and SSM state).

        Equal to the sum of :meth:`operators` for that chunk (computed in O(1)): linear layers
        ``2 * active matmul params`` per token, attention ``4 * n_heads * head_dim`` per attended
        key, the SSM conv and scan per token, elementwise work; the lm_head on the chunk's last
        token only, or on all of them with ``all_logits=True``. So
        ``prefill_flops(n, 0, all_logits=True)`` equals ``sum(decode_flops(c) for c in
        range(n))``, and chunking a prefill changes only the lm_head term.
        """
        if new_tokens < 0 or context_before < 0:
            raise ValueError(f"token counts must be >= 0, got ({new_tokens}, {context_before})")
        if new_tokens == 0:
            return 0.0
        per_token, per_key, per_logit_row = self._flop_coefficients
        window = self.attention.sliding_window if self.attention else None
        return (
            per_token * new_tokens
            + per_key * _attended_sum(new_tokens, context_before, window)
            + per_logit_row * (new_tokens if all_logits else 1)
        )

    def decode_flops(self, context_len: int) -> float:
        """FLOPs of generating one token for a sequence with ``context_len`` tokens already
        cached: the new token attends ``context_len + 1`` keys (capped by a sliding window)."""
        return self.prefill_flops(1, context_len)

    @cached_property
    def _flop_coefficients(self) -> tuple[float, float, float]:
        """(FLOPs per token outside attention and lm_head, per attended key, per logits row).

        Every operator's FLOPs are linear in exactly one of these three counts, so these
        coefficients, read off a one-token step, give :meth:`prefill_flops` in O(1) and equal to
        the sum of :meth:`operators`."""
        ops = self.operators(prefill_chunks=[(1, 0)])  # 1 token, 1 attended key, 1 logits row
        per_key = sum(o.flops for o in ops if o.kind is OpKind.ATTENTION)
        per_row = sum(o.flops for o in ops if o.name == "lm_head")
        return sum(o.flops for o in ops) - per_key - per_row, per_key, per_row

    def operators(
        self,
        prefill_chunks: Sequence[tuple[int, int]] = (),
        decode_contexts: Sequence[int] = (),
        *,
        tp: int = 1,
        dtype: DType = "bfloat16",
        kv_dtype: DType | None = None,
        ssm_dtype: DType = "float32",
        conv_dtype: DType | None = None,
        all_logits: bool = False,
    ) -> list[Operator]:
        """The operators of one forward step over a batch, for a roofline cost model.

        Batch: ``prefill_chunks`` lists ``(new_tokens, context_before)`` per sequence being
        prefilled, ``decode_contexts`` lists ``context_len`` per sequence decoding one token (the
        same as a chunk ``(1, context_len)``). Each entry is a distinct sequence.

        Returns one :class:`Operator` per kind of operator (summed over the ``count`` layers of
        that kind), in forward order, with FLOPs and bytes **per tensor-parallel rank** for a
        ``tp``-way Megatron-style split; with ``tp > 1`` the list also has ``*_allreduce``
        operators and an ``lm_head_allgather``. Byte model, constants, what is not modelled and the
        operator names: docs/core/model.md.
        """
        if tp < 1 or int(tp) != tp:
            raise ValueError(f"tp must be a positive integer, got {tp!r}")
        chunks = [(int(n), int(c)) for n, c in prefill_chunks]
        chunks += [(1, int(c)) for c in decode_contexts]
        for n, c in chunks:
            if n < 0 or c < 0:
                raise ValueError(f"token counts must be >= 0, got chunk (new={n}, context={c})")
        chunks = [(n, c) for n, c in chunks if n > 0]
        T = sum(n for n, _ in chunks)
        if T == 0:
            return []  # an empty batch runs no step
        S = len(chunks)
        logit_rows = T if all_logits else S
        d, V = self.hidden_size, self.vocab_size
        a = dtype_bytes(dtype)
        w = a
        kvb = dtype_bytes(kv_dtype if kv_dtype is not None else dtype)
        ops: list[Operator] = []

        def add(
            name: str,
            kind: OpKind,
            count: int,
            flops: float,
            rd: float,
            wr: float,
            comm: float = 0.0,
        ) -> None:
            if count > 0:
                ops.append(
                    Operator(name, kind, count * flops, count * rd, count * wr, count * comm, count)
                )

        def allreduce(name: str, count: int) -> None:
            if tp > 1:
                add(name, OpKind.COMM, count, 0.0, 0.0, 0.0, T * d * a)

        def gemm(
            name: str,
            count: int,
            tokens: float,
            k_in: int,
            n_out: int,
            bias: bool,
            out_sharded: bool,
            weight_sets: float = 1.0,
        ) -> None:
            """tokens x k_in @ k_in x n_out (+bias), split by tp on n_out (column-parallel,
            output sharded) or on k_in (row-parallel, input sharded, full output); reads
            ``weight_sets`` copies of such a weight (distinct MoE experts hit)."""
            params = k_in * n_out + (n_out if bias else 0)
            in_b = tokens * k_in * a / (1 if out_sharded else tp)
            out_b = tokens * n_out * a / (tp if out_sharded else 1)
            add(
                name,
                OpKind.GEMM,
                count,
                2 * tokens * params / tp,
                weight_sets * params * w / tp + in_b,
                out_b,
            )

        def mlp_ops(
            prefix: str,
            count: int,
            tokens: float,
            width: int,
            inter: int,
            gated: bool,
            bias: bool,
            weight_sets: float = 1.0,
        ) -> None:
            up = (2 if gated else 1) * inter
            gemm(f"{prefix}_up", count, tokens, width, up, bias, True, weight_sets)
            per = 5 if gated else 2
            add(
                f"{prefix}_act",
                OpKind.ELEMENTWISE,
                count,
                per * tokens * inter / tp,
                tokens * up * a / tp,
                tokens * inter * a / tp,
            )
            gemm(f"{prefix}_down", count, tokens, inter, width, bias, False, weight_sets)

        layers = self.layers
        n_attn, n_ssm = self.n_attention_layers, self.n_ssm_layers
        n_dense = sum(lyr.mlp is MLPKind.DENSE for lyr in layers)
        n_moe = self.n_moe_layers
        n_norms = (
            sum((lyr.mixer is not Mixer.NONE) + (lyr.mlp is not MLPKind.NONE) for lyr in layers) + 1
        )

        # Embedding: a gather of T rows; vocab-parallel, so each rank finds ~T/tp of them.
        add("embedding", OpKind.MEMORY, 1, 0.0, T * d * a / tp, T * d * a)
        allreduce("embedding_allreduce", 1)
        add("norm", OpKind.ELEMENTWISE, n_norms, 5 * T * d, 2 * T * d * a + d * w, 2 * T * d * a)

        if self.attention and n_attn:
            at = self.attention
            qkv_out = at.q_dim + 2 * at.kv_dim
            heads = at.n_heads / tp
            kv_heads = math.ceil(at.n_kv_heads / tp)
            gemm("qkv_proj", n_attn, T, d, qkv_out, at.qkv_bias, True)
            rot = T * (heads + kv_heads) * at.head_dim
            if at.qk_norm:
                add(
                    "qk_norm",
                    OpKind.ELEMENTWISE,
                    n_attn,
                    4 * rot,
                    rot * a + 2 * at.head_dim * w,
                    rot * a,
                )
            add("rope", OpKind.ELEMENTWISE, n_attn, 3 * rot, rot * a, rot * a)
            win = at.sliding_window
            attended = sum(_attended_sum(n, c, win) for n, c in chunks)
            kv_read = sum(_kv_tokens_read(n, c, win) for n, c in chunks)
            kv_row = 2 * kv_heads * at.head_dim * kvb  # K and V of one token, one layer
            q_bytes = T * heads * at.head_dim * a
            add(
                "attention",
                OpKind.ATTENTION,
                n_attn,
                4 * heads * at.head_dim * attended,
                q_bytes + kv_read * kv_row,
                q_bytes + T * kv_row,
            )
            gemm("o_proj", n_attn, T, at.q_dim, d, at.o_bias, False)
            allreduce("attention_allreduce", n_attn)

        if self.mamba and n_ssm:
            m = self.mamba
            sb = dtype_bytes(ssm_dtype)
            cb = dtype_bytes(conv_dtype if conv_dtype is not None else dtype)
            gemm("ssm_in_proj", n_ssm, T, d, m.in_proj_dim, m.proj_bias, True)
            cd = m.conv_dim / tp
            conv_w = (m.d_conv + (1 if m.conv_bias else 0)) * cd * w
            conv_state = S * cd * (m.d_conv - 1) * cb
            add(
                "ssm_conv",
                OpKind.ELEMENTWISE,
                n_ssm,
                (2 * m.d_conv + 4) * T * cd,
                T * cd * a + conv_w + conv_state,
                T * cd * a + conv_state,
            )
            hpn = m.state_numel / tp
            di = m.d_inner / tp
            state = S * hpn * sb
            scan_in = T * (di + 2 * m.n_groups * m.d_state + m.n_heads / tp) * a
            add(
                "ssm_scan",
                OpKind.SCAN,
                n_ssm,
                T * (5 * hpn + 3 * di),
                scan_in + 3 * (m.n_heads / tp) * w + state,
                T * di * a + state,
            )
            add(
                "ssm_gated_norm",
                OpKind.ELEMENTWISE,
                n_ssm,
                9 * T * di,
                2 * T * di * a + di * w,
                T * di * a,
            )
            gemm("ssm_out_proj", n_ssm, T, m.d_inner, d, m.proj_bias, False)
            allreduce("ssm_allreduce", n_ssm)

        if self.mlp and n_dense:
            mlp_ops("mlp", n_dense, T, d, self.mlp.intermediate_size, self.mlp.gated, self.mlp.bias)
            allreduce("mlp_allreduce", n_dense)

        if self.moe and n_moe:
            e = self.moe
            E, k = e.num_experts, e.top_k
            # Router: replicated on every rank (small), fp32 logits not distinguished.
            add("moe_router", OpKind.GEMM, n_moe, 2 * T * d * E, d * E * w + T * d * a, T * E * a)
            width = e.latent_size or d
            if e.latent_size:
                gemm("moe_latent_in", n_moe, T, d, e.latent_size, e.bias, False)
            hits = E * (1 - (1 - k / E) ** T)  # expected distinct experts hit per layer
            mlp_ops(
                "moe_experts",
                n_moe,
                T * k,
                width,
                e.intermediate_size,
                e.gated,
                False,
                weight_sets=hits,
            )
            # The weighted combine of the k expert outputs of each token.
            add(
                "moe_combine",
                OpKind.ELEMENTWISE,
                n_moe,
                2 * T * k * width,
                T * k * width * a,
                T * width * a,
            )
            if e.latent_size:
                gemm("moe_latent_out", n_moe, T, e.latent_size, d, e.bias, False)
            if e.shared_intermediate_size:
                mlp_ops("moe_shared", n_moe, T, d, e.shared_intermediate_size, e.gated, e.bias)
            allreduce("moe_allreduce", n_moe)

        if logit_rows:
            gemm("lm_head", 1, logit_rows, d, V, False, True)
            if tp > 1:
                add("lm_head_allgather", OpKind.COMM, 1, 0.0, 0.0, 0.0, logit_rows * V * a)
        return ops
