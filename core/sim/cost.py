"""Cost models: how long one serving step takes, behind one interface.

A :class:`CostModel` turns a batch (prefill chunks with their cached contexts, and decode
tokens with theirs) into seconds; the simulator asks it once per scheduler step through
:meth:`CostModel.step_time_for`. :class:`RooflineCostModel` (here) prices a step from the
model's operators (:meth:`core.model.spec.ModelSpec.operators`) and a GPU's datasheet, scaled
by :class:`Efficiency` factors (fitted ones from ``data/profiles/gpu-efficiency.json`` when the
GPU has an entry); :class:`~core.sim.profiled.ProfiledCostModel` uses measured tables. Bad
configurations raise one ``ValueError`` in the constructor naming the values. The fast path
equals :meth:`RooflineCostModel.step_time_reference` to ~1e-15 relative, and
:meth:`RooflineCostModel.decode_run_times` is bit-identical to step-by-step times.

Formulas, efficiency factors, fast path and what is not modelled: docs/core/sim.md.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.model.spec import (
    ModelSpec,
    Operator,
    OpKind,
    _attended_sum,
    _kv_tokens_read,
    dtype_bytes,
)
from core.sim.hardware import Hardware, dtype_key, get_hardware

__all__ = [
    "EFFICIENCY_FILE",
    "FEATURES",
    "CostModel",
    "Efficiency",
    "OpTime",
    "RooflineCostModel",
    "chunks_of",
    "combine",
    "load_efficiency",
    "op_ceilings",
    "ring_seconds",
    "roofline_seconds",
]

GiB = 1 << 30


# --------------------------------------------------------------------------------------------
# Efficiency factors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Efficiency:
    """The named factors that turn datasheet peaks into achieved rates.

    Fractions (``0 < f <= 1``) of a ceiling: ``gemm_compute``, ``attention_compute``,
    ``vector_compute``, ``memory``, ``elementwise_memory``, ``gather_memory``, ``comm``;
    ``ridge_blend`` in [0, 1] (0: ``max``, the classic roofline; 1: the sum); fixed costs in
    seconds: ``kernel_launch_s`` per kernel, ``collective_launch_s`` per collective call and
    ``step_overhead_s`` per scheduler step. Defaults and where they come from: docs/core/sim.md.
    """

    gemm_compute: float = 0.70
    attention_compute: float = 0.50
    vector_compute: float = 0.50
    memory: float = 0.80
    elementwise_memory: float = 0.50
    gather_memory: float = 0.15
    comm: float = 0.70
    ridge_blend: float = 0.0
    kernel_launch_s: float = 4e-6
    collective_launch_s: float = 20e-6
    step_overhead_s: float = 1e-3

    FRACTIONS = (
        "gemm_compute",
        "attention_compute",
        "vector_compute",
        "memory",
        "elementwise_memory",
        "gather_memory",
        "comm",
    )
    SECONDS = ("kernel_launch_s", "collective_launch_s", "step_overhead_s")

    def __post_init__(self) -> None:
        for name in self.FRACTIONS:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise ValueError(f"Efficiency.{name} must be in (0, 1], got {v!r}")
        if not (isinstance(self.ridge_blend, (int, float)) and 0 <= self.ridge_blend <= 1):
            raise ValueError(f"Efficiency.ridge_blend must be in [0, 1], got {self.ridge_blend!r}")
        for name in self.SECONDS:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise ValueError(f"Efficiency.{name} must be a finite number >= 0, got {v!r}")

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "efficiency") -> Efficiency:
        """Defaults overridden by ``values``; unknown keys raise ``ValueError`` naming them and
        ``where``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{where}: unknown efficiency factors {unknown}; known: {sorted(known)}"
            )
        return cls(**{k: float(v) for k, v in values.items()})

    def with_(self, **changes: float) -> Efficiency:
        """A copy with some factors changed."""
        return replace(self, **changes)


EFFICIENCY_FILE = "profiles/gpu-efficiency.json"
"""Where fitted factors live, under the data folder (``data/`` or ``$SERVELAB_DATA``)."""


def _default_efficiency_file() -> Path:
    from core.data import DATA_DIR

    return Path(DATA_DIR) / EFFICIENCY_FILE


_efficiency_cache: dict[tuple[str, float], dict[str, Any]] = {}


def load_efficiency(
    hardware: str | Hardware, path: str | Path | None = None
) -> tuple[Efficiency, str] | None:
    """The fitted :class:`Efficiency` of ``hardware`` from the efficiency file and a text
    naming its source, or ``None`` if the file or the hardware's entry is absent.

    ``path`` defaults to ``<data>/profiles/gpu-efficiency.json``. The file is JSON:
    ``{"schema": "servelab.gpu-efficiency/1", "hardware": {"<name>": {"efficiency": {factor:
    value, ...}, "fitted_on": "...", ...}}}``; factors an entry leaves out keep their
    defaults. The file is opened through :func:`core.data.open_data_file` (recorded for
    provenance). A malformed file raises ``ValueError`` naming it."""
    name = hardware.name if isinstance(hardware, Hardware) else str(hardware)
    file = Path(path) if path is not None else _default_efficiency_file()
    if not file.is_file():
        return None
    key = (str(file.resolve()), file.stat().st_mtime)
    doc = _efficiency_cache.get(key)
    if doc is None:
        from core.data import open_data_file

        with open_data_file(file) as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{file}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("hardware"), dict):
            raise ValueError(f"{file}: expected an object with a 'hardware' object")
        _efficiency_cache[key] = doc
    entry = doc["hardware"].get(name)
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("efficiency"), dict):
        raise ValueError(f"{file}: hardware[{name!r}] needs an 'efficiency' object")
    eff = Efficiency.from_dict(entry["efficiency"], where=f"{file}: hardware[{name!r}]")
    how = entry.get("fitted_on", "fitted")
    return eff, f"{file.name} [{name}]: {how}"


# --------------------------------------------------------------------------------------------
# The per-operator formulas (work on floats and on numpy arrays alike)
# --------------------------------------------------------------------------------------------


def combine(t_compute: float, t_memory: float, ridge_blend: float = 0.0) -> float:
    """Time of work whose compute takes ``t_compute`` and memory traffic ``t_memory`` alone:
    ``max`` for ``ridge_blend == 0``, else ``(t_c^(1/b) + t_m^(1/b))^b`` (``b = 1``: the sum).
    Monotone in both times."""
    m = t_compute if t_compute > t_memory else t_memory
    if ridge_blend <= 0 or m <= 0:
        return m
    n = 1.0 / ridge_blend
    return m * ((t_compute / m) ** n + (t_memory / m) ** n) ** ridge_blend


def roofline_seconds(
    flops: Any,
    nbytes: Any,
    *,
    peak: Any,
    bandwidth: Any,
    compute_eff: Any,
    memory_eff: Any,
    ridge_blend: float = 0.0,
    launches: Any = 1,
    launch_s: Any = 0.0,
) -> Any:
    """:func:`combine` of ``flops / (peak * compute_eff)`` and ``nbytes / (bandwidth *
    memory_eff)``, plus ``launches * launch_s``; broadcasts over numpy arrays (returns a float
    for scalar inputs)."""
    t_c = np.asarray(flops, dtype=float) / (np.asarray(peak) * compute_eff)
    t_m = np.asarray(nbytes, dtype=float) / (np.asarray(bandwidth) * memory_eff)
    m = np.maximum(t_c, t_m)
    if ridge_blend > 0:
        n = 1.0 / ridge_blend
        safe = np.where(m > 0, m, 1.0)
        m = m * ((t_c / safe) ** n + (t_m / safe) ** n) ** ridge_blend
    out = m + np.asarray(launches) * launch_s
    return float(out) if np.ndim(out) == 0 else out


def ring_seconds(
    nbytes: Any,
    tp: Any,
    *,
    bandwidth: Any,
    latency_s: Any,
    comm_eff: Any,
    launches: Any = 1,
    launch_s: Any = 0.0,
    collective: str = "all_reduce",
) -> Any:
    """Seconds of ``launches`` ring collectives over ``tp`` ranks moving ``nbytes`` of payload
    in total (all-reduce: ``2 (p-1)/p`` of it crosses each link in ``2 (p-1)`` steps;
    all-gather: ``(p-1)/p`` in ``p-1`` steps; payload = the full tensor); 0 when ``tp == 1``.
    Broadcasts over numpy arrays."""
    if collective not in ("all_reduce", "all_gather"):
        raise ValueError(f"collective must be 'all_reduce' or 'all_gather', got {collective!r}")
    p = np.asarray(tp, dtype=float)
    k = 2.0 if collective == "all_reduce" else 1.0
    volume = k * (p - 1) / p * np.asarray(nbytes, dtype=float)
    t = volume / (np.asarray(bandwidth) * comm_eff)
    t = t + np.asarray(launches) * (k * (p - 1) * latency_s + launch_s)
    t = np.where(p > 1, t, 0.0)
    return float(t) if np.ndim(t) == 0 else t


def op_ceilings(
    kind: OpKind, hardware: Hardware, dtype: Any, efficiency: Efficiency
) -> tuple[float, float, float, float]:
    """``(peak FLOP/s, compute efficiency, bandwidth, memory efficiency)`` for an operator of
    ``kind`` (see the table in docs/core/sim.md). ``COMM`` operators use :func:`ring_seconds`."""
    bw = hardware.memory_bandwidth
    if kind is OpKind.GEMM:
        return hardware.peak(dtype), efficiency.gemm_compute, bw, efficiency.memory
    if kind is OpKind.ATTENTION:
        return hardware.peak(dtype), efficiency.attention_compute, bw, efficiency.memory
    if kind in (OpKind.ELEMENTWISE, OpKind.SCAN):
        return hardware.peak("fp32"), efficiency.vector_compute, bw, efficiency.elementwise_memory
    if kind is OpKind.MEMORY:
        return hardware.peak("fp32"), efficiency.vector_compute, bw, efficiency.gather_memory
    raise ValueError(
        f"no roofline ceilings for operator kind {kind!r} (collectives use ring_seconds)"
    )


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


def chunks_of(out: Any) -> tuple[list[tuple[int, int]], list[int]]:
    """``(prefill_chunks, decode_contexts)`` of a scheduler step
    (:class:`core.sched.scheduler.SchedulerOutput`): a chunk of one token after ``start > 0``
    cached ones is a decode with context ``start``; any other chunk is a prefill chunk
    ``(num_tokens, start)``."""
    prefill: list[tuple[int, int]] = []
    decode: list[int] = []
    for c in out.chunks:
        if c.num_tokens == 1 and c.start > 0:
            decode.append(int(c.start))
        elif c.num_tokens > 0:
            prefill.append((int(c.num_tokens), int(c.start)))
    return prefill, decode


class CostModel(ABC):
    """Seconds one serving step takes on one replica.

    Contract: :meth:`step_time` is a pure function of the batch (same batch, same time), is 0
    for an empty batch, and does not decrease when a token or a cached context token is
    added. ``prefill_chunks`` lists ``(new_tokens, cached_context)`` per sequence being
    prefilled this step; ``decode_contexts`` lists the cached context of each sequence
    decoding one token. Each entry is a distinct sequence.
    """

    @abstractmethod
    def step_time(
        self, prefill_chunks: Sequence[tuple[int, int]] = (), decode_contexts: Sequence[int] = ()
    ) -> float:
        """Seconds of one step over the batch."""

    def step_time_for(self, out: Any) -> float:
        """Seconds of the step a scheduler planned (a ``SchedulerOutput``); see
        :func:`chunks_of`."""
        prefill, decode = chunks_of(out)
        return self.step_time(prefill, decode)

    def decode_run_times(self, context_lens: Sequence[int], k: int) -> np.ndarray:
        """Seconds of ``k`` consecutive pure-decode steps over the same sequences: step ``i``
        (0-based) decodes one token of each sequence, whose cached context is
        ``context_lens[j] + i`` (a context of 0 is a one-token prefill, as in
        :func:`chunks_of`). Element ``i`` equals :meth:`step_time_for` of that step exactly
        (here by asking it; subclasses may vectorize, keeping that equality)."""
        ctx = [int(c) for c in context_lens]
        out = np.empty(max(0, int(k)))
        for i in range(out.size):
            prefill = [(1, 0) for c in ctx if c + i == 0]
            decode = [c + i for c in ctx if c + i > 0]
            out[i] = self.step_time(prefill, decode)
        return out


@dataclass(frozen=True)
class OpTime:
    """The cost of one :class:`~core.model.spec.Operator` of a step: ``seconds`` in total over
    its ``count`` layers, split into the roofline terms (``compute_s`` and ``memory_s`` are
    the two sides of the ``max``, ``comm_s`` the collective's time, ``overhead_s`` the
    launches), and which one bound it."""

    name: str
    kind: OpKind
    count: int
    seconds: float
    compute_s: float
    memory_s: float
    comm_s: float
    overhead_s: float

    @property
    def per_layer(self) -> float:
        """Seconds of one instance (one layer's worth): ``seconds / count``."""
        return self.seconds / self.count if self.count else 0.0

    @property
    def bound(self) -> str:
        """``"comm"``, ``"compute"``, ``"memory"``, or ``"overhead"`` when the launches cost
        more than the work."""
        if self.kind is OpKind.COMM:
            return "comm"
        work = max(self.compute_s, self.memory_s)
        if self.overhead_s > work:
            return "overhead"
        return "compute" if self.compute_s >= self.memory_s else "memory"


# --------------------------------------------------------------------------------------------
# The fast path: operators as linear functions of a few batch features
# --------------------------------------------------------------------------------------------

FEATURES = ("one", "tokens", "seqs", "attended", "kv_read", "moe_hits")
"""The batch features every operator's FLOPs, bytes and payload are linear in (see the module
doc): 1, new tokens ``T``, sequences ``S``, attended keys ``A``, distinct K/V tokens read
``K``, expected distinct MoE experts hit per layer ``H(T)``."""

# Small batches whose features span the feature space (no position beyond 3, so no sliding
# window clips them unless it is tiny; a singular system turns the fast path off).
_BASIS = ([(1, 0)], [(1, 1)], [(2, 0)], [(1, 0), (1, 0)], [(3, 0)], [(1, 0), (1, 0), (1, 0)])
# Larger batches the coefficients are checked on: long prompts, long contexts (beyond common
# sliding windows), mixed batches.
_CHECKS = (
    [(7, 0)],
    [(1, 100), (1, 5000), (300, 2000), (2048, 0)],
    [(1, 9000), (1, 1), (1, 2), (1, 4095), (1, 4096), (1, 4097), (5, 4093)],
    [(1, c) for c in range(1, 400, 7)],
    [(8192, 10000), (100, 40000)],
)
_SNAP = 1e-12  # coefficients that contribute less than this, relatively, are rounding noise
_CHECK_RTOL = 1e-12


def _batch_features(
    chunks: Sequence[tuple[int, int]], window: int | None
) -> tuple[int, int, int, int]:
    """``(T, S, A, K)`` of a batch of ``(new_tokens, context_before)`` chunks (chunks with no
    new tokens do not count), exactly as :meth:`ModelSpec.operators` sums them."""
    T = S = A = K = 0
    for n, c in chunks:
        if n <= 0:
            continue
        T += n
        S += 1
        if window is None:
            A += (2 * c + n + 1) * n // 2
            K += c + n
        else:
            A += _attended_sum(n, c, window)
            K += _kv_tokens_read(n, c, window)
    return T, S, A, K


def _lin(terms: tuple[tuple[int, float], ...], x: Sequence[Any]) -> Any:
    """``sum(coef * x[i])`` over ``terms``, left to right from 0.0; the same float operations
    for scalars and for numpy arrays in ``x`` (so both give bit-identical values)."""
    v: Any = 0.0
    for i, c in terms:
        v = v + c * x[i]
    return v


def _solve_exact(
    rows: list[list[Fraction]], rhs: list[list[Fraction]]
) -> list[list[Fraction]] | None:
    """Solve ``rows @ X = rhs`` (square, exact rationals) for every right-hand column; None if
    singular."""
    n = len(rows)
    m = [list(r) + list(b) for r, b in zip(rows, rhs, strict=True)]
    for col in range(n):
        piv = next((r for r in range(col, n) if m[r][col] != 0), None)
        if piv is None:
            return None
        m[col], m[piv] = m[piv], m[col]
        p = m[col][col]
        m[col] = [v / p for v in m[col]]
        for r in range(n):
            if r != col and m[r][col] != 0:
                f = m[r][col]
                m[r] = [a - f * b for a, b in zip(m[r], m[col], strict=True)]
    return [row[n:] for row in m]


def _combine_arrays(t_compute: Any, t_memory: Any, ridge_blend: float) -> np.ndarray:
    """:func:`combine` elementwise, with exactly its float operations (so each element is
    bit-identical to calling it on that pair: the power is Python's, not numpy's, whose SIMD
    versions may round differently)."""
    if not isinstance(t_compute, np.ndarray) or not isinstance(t_memory, np.ndarray):
        t_compute, t_memory = np.broadcast_arrays(
            np.asarray(t_compute, dtype=float), np.asarray(t_memory, dtype=float)
        )
    if ridge_blend <= 0:
        return np.maximum(t_compute, t_memory)
    n, b = 1.0 / ridge_blend, ridge_blend
    return np.array(
        [
            m * ((c / m) ** n + (t / m) ** n) ** b if m > 0 else m
            for c, t in zip(t_compute.tolist(), t_memory.tolist(), strict=True)
            for m in (c if c > t else t,)
        ]
    )


@dataclass(frozen=True)
class _LinearOp:
    """One operator of the fast path: its quantities as ``(feature index, coefficient)`` terms,
    and the constants of its roofline."""

    name: str
    kind: OpKind
    count: int
    flops: tuple[tuple[int, float], ...]
    nbytes: tuple[tuple[int, float], ...]
    comm: tuple[tuple[int, float], ...]
    compute_rate: float  # peak * compute efficiency (0 for collectives)
    memory_rate: float  # bandwidth * memory efficiency (0 for collectives)
    launch_s: float  # count * kernel_launch_s
    dynamic: bool  # depends on A or K (changes from one decode step to the next)


class _FastRoofline:
    """The fast path of one :class:`RooflineCostModel` (see docs/core/sim.md)."""

    def __init__(
        self,
        model: RooflineCostModel,
        ops: list[_LinearOp],
        moe: tuple[int, int] | None,
        window: int | None,
    ) -> None:
        self.model = model
        self.efficiency = model.efficiency
        self.blend = model.efficiency.ridge_blend
        self.overhead = model.efficiency.step_overhead_s
        self.window = window
        self.moe = moe
        self.static_ops = [o for o in ops if not o.dynamic]
        self.dynamic_ops = [o for o in ops if o.dynamic]
        self._static: dict[tuple[int, int], float] = {}

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def build(cls, model: RooflineCostModel) -> tuple[_FastRoofline | None, str]:
        """The fast path of ``model``, or ``(None, reason)`` when the operator list is not
        linear in :data:`FEATURES` (then the model keeps using the operator list)."""
        spec = model.spec
        window = spec.attention.sliding_window if spec.attention else None
        moe = (spec.moe.num_experts, spec.moe.top_k) if spec.is_moe and spec.moe else None
        nfeat = 6 if moe else 5
        basis = _BASIS[:nfeat]
        probe = cls(model, [], moe, window)
        rows = [[Fraction(v) for v in probe.features(b)[:nfeat]] for b in basis]
        ref_ops = [model.operators(b) for b in basis]
        names = [(o.name, o.kind, o.count) for o in ref_ops[0]]
        if any([(o.name, o.kind, o.count) for o in r] != names for r in ref_ops):
            return None, "the operator list changes with the batch"
        quantities = ("flops", "bytes", "comm_bytes")
        rhs = [[Fraction(getattr(o, q)) for o in ops for q in quantities] for ops in ref_ops]
        sol = _solve_exact(rows, rhs)
        if sol is None:
            return None, "the basis batches do not determine the coefficients"
        scale_col = [max(abs(r[j]) for r in rows) for j in range(nfeat)]
        eff = model.efficiency
        lin_ops: list[_LinearOp] = []
        for i, (name, kind, count) in enumerate(names):
            terms = []
            for qi in range(len(quantities)):
                col = i * len(quantities) + qi
                coefs = [sol[j][col] for j in range(nfeat)]
                big = max(abs(r[col]) for r in rhs)
                terms.append(
                    tuple(
                        (j, float(c))
                        for j, c in enumerate(coefs)
                        if c != 0 and abs(c) * scale_col[j] > _SNAP * big
                    )
                )
            flops, nbytes, comm = terms
            if kind is OpKind.COMM:
                c_rate = m_rate = 0.0
                launch = 0.0
            else:
                peak, ce, bw, me = op_ceilings(kind, model.hardware, model.dtype, eff)
                c_rate, m_rate, launch = peak * ce, bw * me, count * eff.kernel_launch_s
            dynamic = any(j in (3, 4) for t in terms for j, _ in t)
            if dynamic and kind is OpKind.COMM:
                return None, f"collective {name} depends on the attended context"
            lin_ops.append(
                _LinearOp(name, kind, count, flops, nbytes, comm, c_rate, m_rate, launch, dynamic)
            )
        fast = cls(model, lin_ops, moe, window)
        problem = fast.check(_CHECKS)
        return (None, problem) if problem else (fast, "")

    def check(self, batches: Sequence[Sequence[tuple[int, int]]]) -> str:
        """'' when every operator's quantities and the step time agree with the operator list
        on ``batches``; else what disagrees."""
        m = self.model
        for b in batches:
            ref = m.operators(b)
            x = self.features(b)
            ops = self.static_ops + self.dynamic_ops
            by_name = {o.name: o for o in ops}
            if sorted(by_name) != sorted(o.name for o in ref):
                return f"operators differ on batch {b}"
            for o in ref:
                lo = by_name[o.name]
                for q, terms in (
                    ("flops", lo.flops),
                    ("bytes", lo.nbytes),
                    ("comm_bytes", lo.comm),
                ):
                    want, got = float(getattr(o, q)), float(_lin(terms, x))
                    if abs(got - want) > _CHECK_RTOL * max(abs(want), abs(got)):
                        return f"{o.name}.{q} is not linear in the features ({got!r} != {want!r})"
            fast, slow = self.step_time(x), m.step_time_reference(b)
            if abs(fast - slow) > _CHECK_RTOL * 10 * slow:
                return f"step time {fast!r} != {slow!r} on batch {b}"
        return ""

    # -- evaluation -------------------------------------------------------------------------

    def hits(self, tokens: int) -> float:
        """Expected distinct experts hit per MoE layer by ``tokens`` tokens (the formula of
        :meth:`ModelSpec.operators`)."""
        if self.moe is None:
            return 0.0
        E, k = self.moe
        return E * (1 - (1 - k / E) ** tokens)

    def features(self, chunks: Sequence[tuple[int, int]]) -> tuple[Any, ...]:
        T, S, A, K = _batch_features(chunks, self.window)
        return (1, T, S, A, K, self.hits(T))

    def _op_seconds(self, op: _LinearOp, x: Sequence[Any]) -> Any:
        if op.kind is OpKind.COMM:
            return self.model._collective_seconds(
                op.name, _lin(op.comm, x), op.count, self.efficiency
            )
        tc = _lin(op.flops, x) / op.compute_rate
        tm = _lin(op.nbytes, x) / op.memory_rate
        work: np.ndarray | float
        if isinstance(tc, np.ndarray) or isinstance(tm, np.ndarray):
            work = _combine_arrays(tc, tm, self.blend)
        else:
            work = combine(tc, tm, self.blend)
        return work + op.launch_s

    def static_seconds(self, T: int, S: int) -> float:
        """Seconds of the operators that do not depend on ``A``/``K``, memoized per ``(T, S)``."""
        key = (T, S)
        v = self._static.get(key)
        if v is None:
            x = (1, T, S, 0, 0, self.hits(T))
            v = 0.0
            for op in self.static_ops:
                v = v + self._op_seconds(op, x)
            if len(self._static) >= 200_000:
                self._static.clear()
            self._static[key] = v
        return v

    def step_time(self, x: Sequence[Any]) -> Any:
        """Seconds of a step with features ``x`` (``A`` and ``K`` may be arrays: one step each)."""
        if not x[1]:
            return 0.0
        dyn: Any = 0.0
        for op in self.dynamic_ops:
            dyn = dyn + self._op_seconds(op, x)
        return (self.static_seconds(x[1], x[2]) + dyn) + self.overhead

    def decode_run_times(self, ctx: np.ndarray, k: int) -> np.ndarray:
        n = int(ctx.size)
        if n == 0 or k <= 0:
            return np.zeros(max(0, k))
        i = np.arange(1, k + 1, dtype=np.int64)  # step i-1 attends context + i keys
        W = self.window
        if W is None:
            A = int(ctx.sum()) + n * i
        else:
            srt = np.sort(ctx)
            pref = np.concatenate(([0], np.cumsum(srt)))
            unclipped = np.searchsorted(srt, W - i, side="left")  # contexts + i < W
            A = pref[unclipped] + unclipped * i + W * (n - unclipped)
        Af = A.astype(np.float64)
        # one-token chunks: the K/V tokens read equal the attended keys
        x = (1, n, n, Af, Af, self.hits(n))
        out = self.step_time(x)
        if isinstance(out, np.ndarray):
            return out
        return np.full(k, out)


# --------------------------------------------------------------------------------------------
# The roofline model
# --------------------------------------------------------------------------------------------


class RooflineCostModel(CostModel):
    """Step time of ``spec`` on ``tp`` devices of ``hardware`` from the roofline of each
    operator; see docs/core/sim.md for the formulas and the validation.

    ``spec``: a :class:`ModelSpec` or a preset name; ``hardware``: a :class:`Hardware` or a
    name (:func:`core.sim.hardware.get_hardware`); ``dtype``: weights and activations
    (``"bf16"``, ``"fp16"``, ``"fp8"``, ...); ``kv_dtype``: the KV cache (default ``dtype``);
    ``ssm_dtype``: the SSM state of hybrids. ``efficiency``: the factors; ``None`` loads the
    fitted ones for this hardware from ``efficiency_file`` (default
    ``data/profiles/gpu-efficiency.json``) when it has an entry, else the defaults.
    ``memory_utilization``: the fraction of device memory the engine may use (vLLM's
    ``gpu_memory_utilization``); ``min_kv_tokens``: KV the replica must hold besides the
    weights to be a valid configuration (default one 16-token block; pass the longest
    sequence to serve for vLLM's stricter check).
    """

    fast_path_reason: str = ""
    """Why :attr:`fast_path` is off ('' when it is on or not yet built)."""
    _fast: _FastRoofline | Literal[False]  # built on first use; False: no fast path

    def __init__(
        self,
        spec: ModelSpec | str,
        hardware: Hardware | str,
        tp: int = 1,
        dtype: str = "bf16",
        efficiency: Efficiency | None = None,
        *,
        kv_dtype: str | None = None,
        ssm_dtype: str = "float32",
        memory_utilization: float = 0.9,
        min_kv_tokens: int = 16,
        efficiency_file: str | Path | None = None,
    ) -> None:
        self.spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_preset(spec)
        self.hardware = get_hardware(hardware)
        if isinstance(tp, bool) or not isinstance(tp, (int, np.integer)) or tp < 1:
            raise ValueError(f"tp must be a positive integer, got {tp!r}")
        self.tp = int(tp)
        self.dtype = dtype_key(dtype)
        self.hardware.peak(self.dtype)  # a dtype the device has no peak for stops here
        self.kv_dtype = kv_dtype if kv_dtype is not None else dtype
        dtype_bytes(self.kv_dtype)
        self.ssm_dtype = ssm_dtype
        if not 0 < memory_utilization <= 1:
            raise ValueError(f"memory_utilization must be in (0, 1], got {memory_utilization}")
        self.memory_utilization = float(memory_utilization)
        if min_kv_tokens < 0:
            raise ValueError(f"min_kv_tokens must be >= 0, got {min_kv_tokens}")
        self.min_kv_tokens = int(min_kv_tokens)
        self._check_tp()
        self.link_bandwidth, self.link_latency_s = self.hardware.collective_link(self.tp)
        if efficiency is not None:
            if not isinstance(efficiency, Efficiency):
                raise TypeError(
                    f"efficiency must be an Efficiency, got {type(efficiency).__name__}"
                )
            self.efficiency, self.efficiency_source = efficiency, "given"
        else:
            loaded = load_efficiency(self.hardware, efficiency_file)
            self.efficiency, self.efficiency_source = (
                loaded if loaded is not None else (Efficiency(), "defaults")
            )
        self._check_memory()

    # ---- validation and memory planning -----------------------------------------------------

    def _check_tp(self) -> None:
        s, tp = self.spec, self.tp
        if tp == 1:
            return
        problems = []
        if s.attention is not None:
            h, kv = s.attention.n_heads, s.attention.n_kv_heads
            kv_ok = kv % tp == 0 or tp % kv == 0
            if h % tp or not kv_ok:
                problems.append(
                    f"{h} attention heads and {kv} KV heads (tp must divide the heads, "
                    "and divide the KV heads or be a multiple of them)"
                )
        if s.mamba is not None and s.mamba.n_heads % tp:
            problems.append(f"{s.mamba.n_heads} SSM heads")
        if problems:
            raise ValueError(f"tp={tp} does not split {s.name}: it has {'; '.join(problems)}")

    @property
    def weight_bytes_per_device(self) -> int:
        """Weight bytes one rank holds: embedding, lm_head, attention, SSM, MLP and experts split
        ``tp`` ways (Megatron-style, vocab-parallel embedding); norms and the MoE router
        replicated."""
        parts = self.spec.param_breakdown()
        replicated = parts["norms"] + parts["moe_router"]
        sharded = sum(parts.values()) - replicated
        return math.ceil((sharded / self.tp + replicated) * dtype_bytes(self.dtype))

    @property
    def kv_bytes_per_token_per_device(self) -> int:
        """KV-cache bytes one token holds on one rank (KV heads split, or replicated when fewer
        than ``tp``)."""
        s = self.spec
        if not s.attention:
            return 0
        kv_heads = math.ceil(s.attention.n_kv_heads / self.tp)
        per = (
            s.n_attention_layers * 2 * kv_heads * s.attention.head_dim * dtype_bytes(self.kv_dtype)
        )
        return math.ceil(per)

    @property
    def ssm_state_bytes_per_device(self) -> int:
        """Bytes of one sequence's SSM and conv state on one rank (0 without SSM layers)."""
        return math.ceil(self.spec.ssm_state_bytes(self.ssm_dtype, self.dtype) / self.tp)

    def _usable_bytes(self, memory_utilization: float | None) -> float:
        util = self.memory_utilization if memory_utilization is None else memory_utilization
        if not 0 < util <= 1:
            raise ValueError(f"memory_utilization must be in (0, 1], got {util}")
        return self.hardware.memory_bytes * util

    def _check_memory(self) -> None:
        need = (
            self.weight_bytes_per_device
            + self.min_kv_tokens * self.kv_bytes_per_token_per_device
            + self.ssm_state_bytes_per_device
        )
        have = self._usable_bytes(None)
        if need > have:
            raise ValueError(
                f"{self.spec.name} does not fit on {self.hardware.name} with tp={self.tp} in "
                f"{self.dtype}: each device needs {self.weight_bytes_per_device:,} bytes of weights "
                f"({self.weight_bytes_per_device / GiB:.1f} GiB) + {self.min_kv_tokens} tokens of KV "
                f"({self.min_kv_tokens * self.kv_bytes_per_token_per_device:,} bytes) = {need:,} "
                f"bytes, but {self.memory_utilization:.0%} of its {self.hardware.memory_bytes:,} "
                f"bytes is {have:,.0f} ({have / GiB:.1f} GiB); use more tensor parallelism, a "
                "smaller dtype or a larger GPU"
            )

    def max_kv_tokens(self, memory_utilization: float | None = None) -> int:
        """Tokens of KV cache that fit on each rank next to the weights, with
        ``memory_utilization`` (default: the model's, 0.9) of device memory usable (activations
        and workspace are not subtracted: lower the utilisation to leave room for them).
        Raises ``ValueError`` for a model without attention layers (KV is not what bounds it)."""
        per = self.kv_bytes_per_token_per_device
        if per == 0:
            raise ValueError(f"{self.spec.name} has no attention layers: no KV cache to plan")
        free = self._usable_bytes(memory_utilization) - self.weight_bytes_per_device
        return max(0, int(free // per))

    def max_kv_blocks(self, block_size: int = 16, memory_utilization: float | None = None) -> int:
        """:meth:`max_kv_tokens` in whole blocks of ``block_size`` tokens (for a KV manager's
        ``num_kv_blocks``)."""
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        return self.max_kv_tokens(memory_utilization) // block_size

    # ---- timing -----------------------------------------------------------------------------

    def operators(
        self, prefill_chunks: Sequence[tuple[int, int]] = (), decode_contexts: Sequence[int] = ()
    ) -> list[Operator]:
        """The step's operators per rank (:meth:`ModelSpec.operators` with this model's ``tp``
        and dtypes)."""
        return self.spec.operators(
            prefill_chunks,
            decode_contexts,
            tp=self.tp,
            dtype=self.dtype,
            kv_dtype=self.kv_dtype,
            ssm_dtype=self.ssm_dtype,
        )

    def _collective_seconds(self, name: str, comm_bytes: Any, count: int, eff: Efficiency) -> Any:
        """Seconds of ``count`` collectives of operator ``name`` moving ``comm_bytes`` over this
        model's ``tp`` ranks and links with factors ``eff`` (:func:`ring_seconds`; an operator
        whose name ends in ``allgather`` is an all-gather, any other an all-reduce). The one
        pricing of a ``COMM`` operator, for :meth:`op_time` and the fast path alike
        (``comm_bytes`` may be an array there)."""
        collective = "all_gather" if name.endswith("allgather") else "all_reduce"
        return ring_seconds(
            comm_bytes,
            self.tp,
            bandwidth=self.link_bandwidth,
            latency_s=self.link_latency_s,
            comm_eff=eff.comm,
            launches=count,
            launch_s=eff.collective_launch_s,
            collective=collective,
        )

    def op_time(self, op: Operator) -> OpTime:
        """The cost of one operator (see docs/core/sim.md)."""
        eff = self.efficiency
        if op.kind is OpKind.COMM:
            t = self._collective_seconds(op.name, op.comm_bytes, op.count, eff)
            return OpTime(op.name, op.kind, op.count, t, 0.0, 0.0, t, 0.0)
        peak, ce, bw, me = op_ceilings(op.kind, self.hardware, self.dtype, eff)
        compute = op.flops / (peak * ce)
        memory = op.bytes / (bw * me)
        overhead = op.count * eff.kernel_launch_s
        work = combine(compute, memory, eff.ridge_blend)
        return OpTime(op.name, op.kind, op.count, work + overhead, compute, memory, 0.0, overhead)

    def per_layer_times(
        self, prefill_chunks: Sequence[tuple[int, int]] = (), decode_contexts: Sequence[int] = ()
    ) -> list[OpTime]:
        """The cost of each operator of the step, in forward order (``OpTime.per_layer`` is one
        layer's share). The step time is their sum plus ``step_overhead_s``."""
        return [self.op_time(op) for op in self.operators(prefill_chunks, decode_contexts)]

    def step_time_reference(
        self, prefill_chunks: Sequence[tuple[int, int]] = (), decode_contexts: Sequence[int] = ()
    ) -> float:
        """:meth:`step_time` from the operator list (the definition; slow: it builds every
        :class:`Operator`). The fast path agrees with it to ~1e-15 relative."""
        ops = self.per_layer_times(prefill_chunks, decode_contexts)
        if not ops:
            return 0.0
        return sum(o.seconds for o in ops) + self.efficiency.step_overhead_s

    def _fast_model(self) -> _FastRoofline | None:
        fast: _FastRoofline | Literal[False] | None = self.__dict__.get("_fast")
        if fast is None or (fast is not False and fast.efficiency is not self.efficiency):
            built, self.fast_path_reason = _FastRoofline.build(self)
            fast = self._fast = built if built is not None else False
        return fast or None

    @property
    def fast_path(self) -> bool:
        """Whether :meth:`step_time` uses the fast path (see docs/core/sim.md); if not,
        ``fast_path_reason`` says why."""
        return self._fast_model() is not None

    def step_time(
        self, prefill_chunks: Sequence[tuple[int, int]] = (), decode_contexts: Sequence[int] = ()
    ) -> float:
        fast = self._fast_model()
        if fast is None:
            return self.step_time_reference(prefill_chunks, decode_contexts)
        chunks = [(int(n), int(c)) for n, c in prefill_chunks]
        chunks += [(1, int(c)) for c in decode_contexts]
        if any(n < 0 or c < 0 for n, c in chunks):
            return self.step_time_reference(prefill_chunks, decode_contexts)  # raises
        return float(fast.step_time(fast.features(chunks)))

    def step_time_for(self, out: Any) -> float:
        fast = self._fast_model()
        if fast is None:
            return super().step_time_for(out)
        return float(fast.step_time(fast.features([(c.num_tokens, c.start) for c in out.chunks])))

    def decode_run_times(self, context_lens: Sequence[int], k: int) -> np.ndarray:
        """See :meth:`CostModel.decode_run_times`; vectorized over the ``k`` steps on the fast
        path (bit-identical to :meth:`step_time_for` of each step)."""
        fast = self._fast_model()
        if fast is None:
            return super().decode_run_times(context_lens, k)
        return fast.decode_run_times(np.asarray(context_lens, dtype=np.int64), int(k))

    def describe(self) -> dict[str, Any]:
        """What the model is, for provenance: model, hardware, tp, dtypes, the factors and
        their source, memory plan."""
        out: dict[str, Any] = {
            "cost_model": "roofline",
            "model": self.spec.name,
            "hardware": self.hardware.name,
            "hardware_source": self.hardware.source,
            "tp": self.tp,
            "dtype": self.dtype,
            "kv_dtype": str(self.kv_dtype),
            "efficiency": self.efficiency.to_dict(),
            "efficiency_source": self.efficiency_source,
            "weight_bytes_per_device": self.weight_bytes_per_device,
            "kv_bytes_per_token_per_device": self.kv_bytes_per_token_per_device,
            "memory_utilization": self.memory_utilization,
        }
        if self.kv_bytes_per_token_per_device:
            out["max_kv_tokens"] = self.max_kv_tokens()
        return out

    def __repr__(self) -> str:
        return (
            f"RooflineCostModel({self.spec.name!r}, {self.hardware.name!r}, tp={self.tp}, "
            f"dtype={self.dtype!r}, efficiency={self.efficiency_source})"
        )
