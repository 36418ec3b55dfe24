"""What LoRA adds to a serving step, for the simulator: unmerged products, merges and unmerges.

:class:`LoRAProfile` prices the LoRA part of a step on top of the base model's step:

- an **unmerged** step adds ``unmerged_fixed_s + unmerged_per_adapter_s * adapters +
  unmerged_per_token_s * tokens`` (the shrink/expand launches, each distinct adapter's weights
  read once, the low-rank products of every token);
- a **merged** step costs what the base model costs (the adapter is in the weights);
- a **switch** costs ``merge_s`` per merge and ``unmerge_s`` per unmerge (dLoRA's ~0.02 s on 7B).

Profiles come from measurements (:meth:`LoRAProfile.fit`, fed by
:func:`core.lora.profile.measure_lora` on this CPU) or from a roofline of the adapter's shapes on
a GPU (:meth:`LoRAProfile.roofline`). :class:`LoRACostModel` wraps any step cost (roofline,
profiled table, :class:`LinearStepCost`) and reads the step's
:class:`~core.lora.scheduler.LoRAStep`; it is a pure function of the scheduler output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.model.spec import ModelSpec, dtype_bytes
from core.sim.cost import roofline_seconds
from core.sim.hardware import Hardware, get_hardware

__all__ = [
    "LinearStepCost",
    "LoRACostModel",
    "LoRAProfile",
    "lora_matrix_shapes",
    "nonnegative_lstsq",
]

# The projections an adapter usually targets: attention q, k, v, o (dLoRA's and S-LoRA's setup)
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def lora_matrix_shapes(spec: ModelSpec, targets: Sequence[str] = ATTENTION_TARGETS):
    """``(in, out)`` of every adapted projection in one layer of ``spec`` (dense models)."""
    att, d = spec.attention, spec.hidden_size
    if att is None:
        raise ValueError(f"{spec.name}: LoRA shapes need attention layers")
    inter = spec.intermediate_size
    shapes = {
        "q_proj": (d, att.q_dim),
        "k_proj": (d, att.kv_dim),
        "v_proj": (d, att.kv_dim),
        "o_proj": (att.q_dim, d),
        "gate_proj": (d, inter),
        "up_proj": (d, inter),
        "down_proj": (inter, d),
    }
    unknown = [t for t in targets if t not in shapes]
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; choose from {', '.join(shapes)}")
    return [shapes[t] for t in targets]


def nonnegative_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``argmin |x c - y|`` over ``c >= 0`` for a few columns: the best least-squares fit over
    every subset of columns whose solution is non-negative (exact; 2^columns small solves)."""
    n = x.shape[1]
    best, best_err = np.zeros(n), float(np.sum(y**2))
    for mask in range(1, 1 << n):
        cols = [j for j in range(n) if mask >> j & 1]
        sol, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
        if np.any(sol < 0):
            continue
        err = float(np.sum((x[:, cols] @ sol - y) ** 2))
        if err < best_err:
            best, best_err = np.zeros(n), err
            best[cols] = sol
    return best


@dataclass(frozen=True)
class LoRAProfile:
    """Seconds LoRA adds to a step (see the module docstring); ``source`` says where the numbers
    come from. All terms are >= 0."""

    unmerged_fixed_s: float
    unmerged_per_adapter_s: float
    unmerged_per_token_s: float
    merge_s: float
    unmerge_s: float
    source: str = ""

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if key != "source" and not (value >= 0 and np.isfinite(value)):
                raise ValueError(f"LoRAProfile.{key} must be finite and >= 0, got {value}")

    def unmerged_extra_s(self, tokens: int, adapters: int) -> float:
        """Extra seconds of an unmerged step of ``tokens`` tokens over ``adapters`` adapters."""
        if adapters <= 0 or tokens <= 0:
            return 0.0
        return (
            self.unmerged_fixed_s
            + self.unmerged_per_adapter_s * adapters
            + self.unmerged_per_token_s * tokens
        )

    def switch_s(self, merges: int, unmerges: int) -> float:
        return self.merge_s * merges + self.unmerge_s * unmerges

    # -- sources --------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        unmerged: Sequence[tuple[int, int, float]],
        merge_s: float,
        unmerge_s: float,
        source: str = "measured",
    ) -> LoRAProfile:
        """Least-squares fit (non-negative) of ``(tokens, adapters, extra_seconds)`` samples of
        unmerged steps (extra = unmerged step time - base step time, same batch)."""
        if len(unmerged) < 3:
            raise ValueError(f"fitting a LoRA profile needs >= 3 samples, got {len(unmerged)}")
        x = np.array([[1.0, a, t] for t, a, _ in unmerged])
        y = np.array([max(0.0, e) for _, _, e in unmerged])
        coef = nonnegative_lstsq(x, y)
        return cls(float(coef[0]), float(coef[1]), float(coef[2]), merge_s, unmerge_s, source)

    @classmethod
    def roofline(
        cls,
        spec: ModelSpec | str,
        hardware: Hardware | str,
        *,
        rank: int = 16,
        targets: Sequence[str] = ATTENTION_TARGETS,
        dtype: str = "bf16",
        tp: int = 1,
        kernel_efficiency: float = 0.25,
        launch_s: float = 5e-6,
    ) -> LoRAProfile:
        """A GPU profile from shapes: per adapted projection and layer, an unmerged step runs a
        shrink and an expand kernel (``launch_s`` each), reads each adapter's ``A`` and ``B``
        once and does ``2 r (in + out)`` FLOPs per token, at ``kernel_efficiency`` of the
        roofline (gathered low-rank products run far below peak: Punica/S-LoRA report a few
        tens of percent). A merge reads and writes every adapted weight and multiplies
        ``B A`` (``2 r in out`` FLOPs); an unmerge is the same work."""
        spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_preset(spec)
        hw = get_hardware(hardware)
        shapes = lora_matrix_shapes(spec, targets)
        layers = spec.n_attention_layers
        item = dtype_bytes(dtype)
        peak, bw = hw.peak(dtype), hw.memory_bandwidth

        def t(flops: float, nbytes: float) -> float:
            return float(
                roofline_seconds(
                    flops / tp,
                    nbytes / tp,
                    peak=peak,
                    bandwidth=bw,
                    compute_eff=kernel_efficiency,
                    memory_eff=kernel_efficiency,
                )
            )

        low_rank = layers * sum(rank * (i + o) for i, o in shapes)  # A and B params per adapter
        per_token = t(2.0 * low_rank, layers * sum((i + o) * item for i, o in shapes))
        per_adapter = t(0.0, low_rank * item)
        fixed = 2 * len(shapes) * layers * launch_s
        dense = layers * sum(i * o for i, o in shapes)
        merge = t(2.0 * rank * dense, 2.0 * dense * item + low_rank * item) + fixed / 2
        return cls(
            fixed,
            per_adapter,
            per_token,
            merge,
            merge,
            f"roofline: {spec.name} on {hw.name} tp={tp}, rank {rank}, {'/'.join(targets)}, "
            f"kernel efficiency {kernel_efficiency}",
        )

    @classmethod
    def from_ratio(
        cls,
        base_step_s: float,
        rho: float,
        switch_s: float,
        source: str = "",
    ) -> LoRAProfile:
        """A profile that reproduces a measured ratio ``rho = t_merged / t_unmerged`` of a
        decode iteration whose base step takes ``base_step_s`` (dLoRA reports rho = 0.015 /
        0.027 and a 0.02 s switch on Llama-7B at its batch size). The extra is charged per
        unmerged iteration, whatever its size: it is the cost of the gathered LoRA kernels'
        launches and copies, which a long prefill chunk does not multiply."""
        if not 0 < rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {rho}")
        extra = base_step_s * (1.0 / rho - 1.0)
        return cls(extra, 0.0, 0.0, switch_s, switch_s, source)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "LoRA profile") -> LoRAProfile:
        names = [f for f in cls.__dataclass_fields__ if f != "source"]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        return cls(**{n: float(data[n]) for n in names}, source=str(data.get("source", where)))

    @classmethod
    def load(cls, path: str | Path) -> LoRAProfile:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read a LoRA profile ({e})") from None
        return cls.from_dict(data.get("lora", data), str(path))


@dataclass(frozen=True)
class LinearStepCost:
    """A base step cost linear in the batch: ``fixed_s + per_seq_s * seqs + per_token_s *
    tokens`` (a fit of measured steps of a small model, where attention over short contexts
    is a small part)."""

    fixed_s: float
    per_seq_s: float
    per_token_s: float

    def step_time_for(self, out: Any) -> float:
        if not out.chunks:
            return 0.0
        tokens = sum(c.num_tokens for c in out.chunks)
        return self.fixed_s + self.per_seq_s * len(out.chunks) + self.per_token_s * tokens


class LoRACostModel:
    """``base`` step time plus the LoRA part of :class:`LoRAProfile` for the step's
    :class:`~core.lora.scheduler.LoRAStep` (a step without one is unmerged over the adapters
    of its requests). Satisfies the simulator's ``StepCost``; ``swap_s`` passes through."""

    def __init__(self, base: Any, profile: LoRAProfile) -> None:
        self.base = base
        self.profile = profile
        if callable(getattr(base, "swap_s", None)):
            self.swap_s = base.swap_s

    def lora_seconds(self, out: Any) -> float:
        """The LoRA part of a step's time."""
        step = out.lora_step
        merged = step.merged if step is not None else None
        seconds = 0.0
        if step is not None and step.num_switch_ops:
            seconds += self.profile.switch_s(
                int(step.merged is not None), int(step.previous is not None)
            )
        if merged is None:
            adapted = [c for c in out.chunks if c.request.lora is not None]
            adapters = len({c.request.lora.lora_name for c in adapted})
            tokens = sum(c.num_tokens for c in adapted)
            seconds += self.profile.unmerged_extra_s(tokens, adapters)
        return seconds

    def step_time_for(self, out: Any) -> float:
        base = self.base.step_time_for(out) if out.chunks else 0.0
        return base + self.lora_seconds(out)
