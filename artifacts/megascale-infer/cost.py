"""MegaScale-Infer's cost side: the paper's closed-form iteration time, the iteration-time
model of each side, and the deployment planner.

A disaggregated MoE deployment runs ``n_a`` attention nodes (data parallel, ``tp_a`` GPUs each,
holding the KV cache) and one node per expert (``tp_e`` GPUs each). A decode iteration of a
global batch ``B`` splits each attention node's share into ``m`` micro-batches of
``b_a = B / (m n_a)`` sequences, scheduled by :func:`core.sim.pingpong.pingpong_timeline`.

- :func:`closed_form_iteration_s` is the paper's ``(T_a + T_e + 2 T_c) + T_f (m L - 1)``, equal
  to the schedule exactly when :func:`hides_communication` holds
  (``m T_f >= T_a + T_e + 2 T_c``).
- :class:`DisaggCostModel` prices ``T_a``, ``T_e`` and ``T_c`` of a micro-batch from the
  model's operators (:meth:`core.model.spec.ModelSpec.operators`) on each side's GPU with the
  roofline factors of :mod:`core.sim.cost`, checks memory, and evaluates a
  :class:`Deployment`; :func:`colocated_tp` and :func:`colocated_ep` price the baselines.
- :func:`plan` searches ``(tp_a, tp_e, n_a, m, B)`` under memory and a time-between-tokens SLO
  (largest feasible batch per shape, found by bisection: iteration time and memory grow with
  the batch); :func:`brute_force` tries every batch of a grid, for checking it.

Torch-free. Which formulas come from the paper and which are ours: this folder's README.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from core.model.spec import ModelSpec, Operator, OpKind, dtype_bytes
from core.sim.cost import Efficiency, combine, load_efficiency, op_ceilings, ring_seconds
from core.sim.hardware import Hardware, get_hardware
from core.sim.network import Link, NetworkModel, network_for
from core.sim.pingpong import check_times, pingpong_iteration_s


def iteration_s(t_a: float, t_e: float, t_c: float, m: int, layers: int) -> float:
    """The ping-pong iteration time: the paper's closed form where it is exact, else the
    schedule itself (:func:`core.sim.pingpong.pingpong_iteration_s`)."""
    if hides_communication(t_a, t_e, t_c, m):
        return closed_form_iteration_s(t_a, t_e, t_c, m, layers)
    return pingpong_iteration_s(t_a, t_e, t_c, m, layers)


def closed_form_iteration_s(t_a: float, t_e: float, t_c: float, m: int, layers: int) -> float:
    """The paper's iteration time ``(T_a + T_e + 2 T_c) + T_f (m L - 1)`` with
    ``T_f = max(T_a, T_e)``: the bottleneck side never idles after its first op. Exact when
    :func:`hides_communication` holds; below that it is a lower bound."""
    check_times(t_a, t_e, t_c, m, layers)
    return (t_a + t_e + 2 * t_c) + max(t_a, t_e) * (m * layers - 1)


def hides_communication(t_a: float, t_e: float, t_c: float, m: int) -> bool:
    """Whether ``m`` micro-batches keep the slower side busy: ``m T_f >= T_a + T_e + 2 T_c``
    (with ``T_a = T_e``: ``m >= 2 (1 + T_c / T_f)``)."""
    return m * max(t_a, t_e) >= t_a + t_e + 2 * t_c - 1e-15 * (t_a + t_e + t_c)


def min_microbatches(t_a: float, t_e: float, t_c: float) -> int:
    """The smallest ``m`` for which :func:`hides_communication` holds."""
    t_f = max(t_a, t_e)
    if t_f <= 0:
        return 1
    return max(1, math.ceil((t_a + t_e + 2 * t_c) / t_f - 1e-12))


# --------------------------------------------------------------------------------------------
# The cost of each side
# --------------------------------------------------------------------------------------------

# Operators of ModelSpec.operators that run on the attention side, once per layer.
_ATTN_LAYER_OPS = ("qkv_proj", "qk_norm", "rope", "attention", "o_proj", "attention_allreduce")
_ROUTER = "moe_router"
# Once per micro-batch per iteration, on the attention side (embedding, final norm, LM head).
_HEAD_OPS = ("embedding", "embedding_allreduce", "lm_head", "lm_head_allgather")


def _op_seconds(op: Operator, hw: Hardware, dtype: str, eff: Efficiency, tp: int) -> float:
    """One operator's seconds over its ``count`` layers, priced as
    :meth:`core.sim.cost.RooflineCostModel.op_time` prices it (that class also checks that the
    whole model fits on the ``tp`` GPUs, which a disaggregated side does not need)."""
    if op.kind is OpKind.COMM:
        bw, lat = hw.collective_link(tp)
        collective = "all_gather" if op.name.endswith("allgather") else "all_reduce"
        return float(
            ring_seconds(
                op.comm_bytes,
                tp,
                bandwidth=bw,
                latency_s=lat,
                comm_eff=eff.comm,
                launches=op.count,
                launch_s=eff.collective_launch_s,
                collective=collective,
            )
        )
    peak, ce, bw, me = op_ceilings(op.kind, hw, dtype, eff)
    work = combine(op.flops / (peak * ce), op.bytes / (bw * me), eff.ridge_blend)
    return work + op.count * eff.kernel_launch_s


_ASSUMED_NIC = Link(
    "nic-200g",
    bandwidth=25e9,
    hop_latency_s=5e-6,
    launch_s=20e-6,
    efficiency=0.7,
    source="assumed: one 200 Gb/s NIC per GPU, InfiniBand-like latency",
)


def network_of(hw: Hardware) -> NetworkModel:
    """The network of ``hw``'s nodes: :func:`core.sim.network.network_for` when it has one
    (A100, H100), else the datasheet intra-node link and an assumed 200 Gb/s NIC per GPU."""
    try:
        return network_for(hw.name)
    except ValueError:
        intra = Link(hw.link, hw.link_bandwidth, hw.link_latency_s, 20e-6, 0.7, hw.source)
        return NetworkModel(intra, _ASSUMED_NIC, hw.devices_per_node)


def _efficiency(hw: Hardware) -> Efficiency:
    loaded = load_efficiency(hw)
    return loaded[0] if loaded is not None else Efficiency()


@dataclass(frozen=True)
class Deployment:
    """A disaggregated deployment: ``n_a`` attention nodes of ``tp_a`` GPUs, one node of
    ``tp_e`` GPUs per expert, ``m`` micro-batches, global decode batch ``batch`` (sequences)."""

    tp_a: int
    tp_e: int
    n_a: int
    m: int
    batch: int

    def __post_init__(self) -> None:
        for name in ("tp_a", "tp_e", "n_a", "m", "batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Deployment.{name} must be a positive integer, got {v!r}")


class _Rates:
    """Throughput per GPU and per dollar of a priced deployment."""

    tokens_per_s: float
    gpus: int
    dollars_per_hour: float

    @property
    def per_gpu(self) -> float:
        return self.tokens_per_s / self.gpus

    @property
    def per_dollar(self) -> float:
        """Tokens per second per dollar per hour (0 when no price is known)."""
        return self.tokens_per_s / self.dollars_per_hour if self.dollars_per_hour else 0.0


@dataclass(frozen=True)
class Evaluation(_Rates):
    """A deployment priced: per-layer micro-batch times, the iteration, throughput, cost, and
    whether it fits (``why`` says what does not)."""

    deployment: Deployment
    t_a: float
    t_e: float
    t_c: float
    iteration_s: float
    tokens_per_s: float
    gpus: int
    dollars_per_hour: float
    feasible: bool
    why: str = ""

    def row(self) -> dict[str, Any]:
        d = self.deployment
        return {
            "tp_a": d.tp_a,
            "tp_e": d.tp_e,
            "n_a": d.n_a,
            "m": d.m,
            "batch": d.batch,
            "t_a_ms": self.t_a * 1e3,
            "t_e_ms": self.t_e * 1e3,
            "t_c_ms": self.t_c * 1e3,
            "iteration_ms": self.iteration_s * 1e3,
            "tokens_per_s": self.tokens_per_s,
            "gpus": self.gpus,
            "per_gpu": self.per_gpu,
            "per_dollar": self.per_dollar,
        }


@dataclass
class DisaggCostModel:
    """Prices a disaggregated deployment of ``spec`` (a MoE model) for decoding.

    - ``attention_gpu`` / ``expert_gpu``: each side's device (names or :class:`Hardware`);
    - ``context``: mean KV tokens a sequence attends during decode; ``max_context``: KV tokens
      reserved per sequence for memory planning;
    - ``T_a``: the attention side's per-layer operators (QKV, RoPE, attention over the KV
      cache, O projection, its all-reduce over ``tp_a``, two norms, the router) for ``b_a``
      sequences; ``T_e``: one expert's SiLU-gated MLP on the ``b_e = b_a n_a K / E`` tokens
      routed to it (balanced routing), split ``tp_e`` ways with an all-reduce;
      ``T_c``: one direction of the M2N exchange: each attention node sends ``b_a K`` hidden
      vectors over its ``tp_a`` NICs while each expert node receives ``b_e`` over its
      ``tp_e``, whichever is slower (:class:`core.sim.network.NetworkModel` of each side's
      GPU: the Vidur-fitted links for A100/H100; for other GPUs their datasheet intra-node
      link and an assumed 200 Gb/s NIC per GPU);
    - per iteration the attention side also runs the embedding and the LM head once per
      micro-batch (serial, outside the pipeline) and ``step_overhead_s``;
    - ``prices``: dollars per GPU-hour by device name (absent: per-dollar figures are 0).
    """

    spec: ModelSpec
    attention_gpu: Hardware | str
    expert_gpu: Hardware | str
    context: int = 640
    max_context: int = 768
    dtype: str = "bf16"
    memory_utilization: float = 0.9
    prices: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.spec.is_moe or self.spec.moe is None:
            raise ValueError(f"{self.spec.name} is not a mixture-of-experts model")
        if self.spec.moe.shared_intermediate_size or self.spec.moe.latent_size:
            raise ValueError(f"{self.spec.name}: shared or latent experts are not modelled here")
        self.hw_a = get_hardware(self.attention_gpu)
        self.hw_e = get_hardware(self.expert_gpu)
        self.eff_a, self.eff_e = _efficiency(self.hw_a), _efficiency(self.hw_e)
        self.net_a, self.net_e = network_of(self.hw_a), network_of(self.hw_e)
        self.experts = self.spec.moe.num_experts
        self.top_k = self.spec.moe.top_k
        self._attn = lru_cache(maxsize=None)(self._attention_times)
        self._expert = lru_cache(maxsize=None)(self._expert_times)
        self._probes: dict[int, tuple[list[Operator], list[Operator]]] = {}
        parts = self.spec.param_breakdown()
        a = dtype_bytes(self.dtype)
        self._attention_weights = (sum(parts.values()) - parts["moe_experts"]) * a
        self._expert_weights = parts["moe_experts"] / self.experts * a
        self._kv_per_seq = self.max_context * self.spec.kv_bytes_per_token(self.dtype)
        self.layers = self.spec.n_moe_layers

    # -- per-side times ------------------------------------------------------------------
    def _attention_times(self, b_a: int, tp_a: int) -> tuple[float, float]:
        """``(per-layer seconds, once-per-micro-batch seconds)`` of ``b_a`` sequences. With
        equal contexts every operator's FLOPs and bytes are affine in the batch, so they are
        interpolated from the operators of batches 1 and 2 (exact, and O(1) in ``b_a``)."""
        one, two = self._probe_ops(tp_a)
        layer = head = 0.0
        for o1, o2 in zip(one, two, strict=True):
            flops, rd, wr, comm = (
                getattr(o1, f) + (b_a - 1) * (getattr(o2, f) - getattr(o1, f))
                for f in ("flops", "bytes_read", "bytes_written", "comm_bytes")
            )
            op = Operator(o1.name, o1.kind, flops, rd, wr, comm, o1.count)
            t = _op_seconds(op, self.hw_a, self.dtype, self.eff_a, tp_a)
            if op.name in _ATTN_LAYER_OPS or op.name == _ROUTER:
                layer += t / op.count
            elif op.name == "norm":  # 2 per layer and the final one
                layer += 2 * t / op.count
                head += t / op.count
            elif op.name in _HEAD_OPS:
                head += t
        return layer, head

    def _probe_ops(self, tp_a: int) -> tuple[list[Operator], list[Operator]]:
        if tp_a not in self._probes:
            one, two = (
                self.spec.operators(decode_contexts=[self.context] * b, tp=tp_a, dtype=self.dtype)
                for b in (1, 2)
            )
            self._probes[tp_a] = (one, two)
        return self._probes[tp_a]

    def attention_s(self, b_a: int, tp_a: int) -> float:
        """T_a: one attention layer for a micro-batch of ``b_a`` sequences."""
        return self._attn(b_a, tp_a)[0]

    def head_s(self, b_a: int, tp_a: int) -> float:
        """Embedding, final norm and LM head of one micro-batch (once per iteration)."""
        return self._attn(b_a, tp_a)[1]

    def expert_s(self, b_e: float, tp_e: int, on_attention_gpu: bool = False) -> float:
        """T_e: one expert's MLP on ``b_e`` tokens, ``tp_e`` ways, with its all-reduce (on the
        attention side's GPU type when ``on_attention_gpu``: the colocated EP baseline)."""
        return self._expert(b_e, tp_e, on_attention_gpu)

    def _expert_times(self, b_e: float, tp_e: int, on_attention_gpu: bool) -> float:
        if b_e <= 0:
            return 0.0
        hw, eff = (self.hw_a, self.eff_a) if on_attention_gpu else (self.hw_e, self.eff_e)
        moe, d = self.spec.moe, self.spec.hidden_size
        assert moe is not None
        a = dtype_bytes(self.dtype)
        inter = moe.intermediate_size
        up = (2 if moe.gated else 1) * inter
        ops = [
            Operator("up", OpKind.GEMM, 2 * b_e * d * up / tp_e, (d * up * a + b_e * d * a) / tp_e,
                     b_e * up * a / tp_e),
            Operator("act", OpKind.ELEMENTWISE, 5 * b_e * inter / tp_e, b_e * up * a / tp_e,
                     b_e * inter * a / tp_e),
            Operator("down", OpKind.GEMM, 2 * b_e * inter * d / tp_e,
                     (inter * d * a + b_e * inter * a) / tp_e, b_e * d * a),
            Operator("expert_allreduce", OpKind.COMM, 0.0, 0.0, 0.0, b_e * d * a),
        ]  # fmt: skip
        return sum(_op_seconds(op, hw, self.dtype, eff, tp_e) for op in ops)

    def comm_s(self, b_a: int, n_a: int, tp_a: int, tp_e: int) -> float:
        """T_c: one direction of the M2N exchange of one micro-batch and layer: each attention
        GPU sends its ``1/tp_a`` of the ``b_a K`` routed hidden vectors while each expert GPU
        receives its ``1/tp_e`` of ``b_e``; the slower of the two inter-node messages."""
        a, d = dtype_bytes(self.dtype), self.spec.hidden_size
        send = b_a * self.top_k * d * a / tp_a
        recv = b_a * n_a * self.top_k / self.experts * d * a / tp_e
        return max(self.net_a.send_recv_across_nodes(send), self.net_e.send_recv_across_nodes(recv))

    # -- memory --------------------------------------------------------------------------
    def attention_weight_bytes(self) -> float:
        """Weights an attention node holds in all: everything but the routed experts."""
        return self._attention_weights

    def expert_weight_bytes(self) -> float:
        """One expert of every MoE layer (an expert node's weights in all)."""
        return self._expert_weights

    def kv_bytes_per_seq(self) -> float:
        return self._kv_per_seq

    def memory_problem(self, d: Deployment) -> str:
        """'' when both sides fit, else what does not."""
        per_node = d.batch / d.n_a
        attn = (self.attention_weight_bytes() + per_node * self.kv_bytes_per_seq()) / d.tp_a
        if attn > self.hw_a.memory_bytes * self.memory_utilization:
            return f"attention node needs {attn / 2**30:.1f} GiB per GPU"
        expert = self.expert_weight_bytes() / d.tp_e
        if expert > self.hw_e.memory_bytes * self.memory_utilization:
            return f"expert node needs {expert / 2**30:.1f} GiB per GPU"
        return ""

    def split_problem(self, d: Deployment) -> str:
        """'' when ``tp_a`` splits the heads and the micro-batches are whole, else why not."""
        at = self.spec.attention
        assert at is not None
        if at.n_heads % d.tp_a or (at.n_kv_heads % d.tp_a and d.tp_a % at.n_kv_heads):
            return f"tp_a={d.tp_a} does not split {at.n_heads} heads / {at.n_kv_heads} KV heads"
        if d.batch % (d.m * d.n_a):
            return f"batch {d.batch} is not m * n_a = {d.m * d.n_a} whole micro-batches"
        return ""

    # -- a deployment --------------------------------------------------------------------
    def gpus(self, d: Deployment) -> int:
        return d.n_a * d.tp_a + self.experts * d.tp_e

    def dollars_per_hour(self, d: Deployment) -> float:
        pa, pe = self.prices.get(self.hw_a.name), self.prices.get(self.hw_e.name)
        if pa is None or pe is None:
            return 0.0
        return d.n_a * d.tp_a * pa + self.experts * d.tp_e * pe

    def evaluate(self, d: Deployment, slo_s: float = math.inf) -> Evaluation:
        """Price ``d``; infeasible when it does not split, does not fit or misses ``slo_s``."""
        why = self.split_problem(d)
        if why:
            nan = math.nan
            return Evaluation(d, nan, nan, nan, nan, 0.0, self.gpus(d), 0.0, False, why)
        b_a = d.batch // (d.m * d.n_a)
        t_a = self.attention_s(b_a, d.tp_a)
        t_e = self.expert_s(b_a * d.n_a * self.top_k / self.experts, d.tp_e)
        t_c = self.comm_s(b_a, d.n_a, d.tp_a, d.tp_e)
        pipeline = iteration_s(t_a, t_e, t_c, d.m, self.layers)
        iteration = pipeline + d.m * self.head_s(b_a, d.tp_a) + self.eff_a.step_overhead_s
        why = self.memory_problem(d)
        if not why and iteration > slo_s:
            why = f"iteration {iteration * 1e3:.1f} ms > SLO {slo_s * 1e3:.0f} ms"
        return Evaluation(
            d,
            t_a,
            t_e,
            t_c,
            iteration,
            d.batch / iteration,
            self.gpus(d),
            self.dollars_per_hour(d),
            not why,
            why,
        )


# --------------------------------------------------------------------------------------------
# The planner
# --------------------------------------------------------------------------------------------


def _score(e: Evaluation, objective: str) -> float:
    if not e.feasible:
        return -math.inf
    return e.per_dollar if objective == "per_dollar" else e.per_gpu


def _largest_feasible(
    cost: DisaggCostModel, shape: tuple[int, int, int, int], max_b_a: int, slo_s: float
) -> Evaluation | None:
    """The feasible deployment of ``shape = (tp_a, tp_e, n_a, m)`` with the largest micro-batch
    ``b_a <= max_b_a`` (bisection: iteration time and memory only grow with ``b_a``)."""
    tp_a, tp_e, n_a, m = shape

    def ev(b_a: int) -> Evaluation:
        return cost.evaluate(Deployment(tp_a, tp_e, n_a, m, b_a * m * n_a), slo_s)

    first = ev(1)
    if not first.feasible:
        return None
    lo, hi = 1, max_b_a + 1  # lo feasible, hi infeasible (or past the range)
    best = first
    while hi - lo > 1:
        mid = (lo + hi) // 2
        e = ev(mid)
        if e.feasible:
            lo, best = mid, e
        else:
            hi = mid
    return best


def plan(
    cost: DisaggCostModel,
    *,
    tp_a: Iterable[int] = (1, 2, 4, 8),
    tp_e: Iterable[int] = (1, 2, 4, 8),
    n_a: Iterable[int] = range(1, 17),
    m: Iterable[int] = (1, 2, 3, 4),
    max_b_a: int = 1024,
    slo_s: float = 0.150,
    objective: str = "per_gpu",
) -> tuple[Evaluation | None, list[Evaluation]]:
    """The best deployment (``objective``: ``"per_gpu"`` throughput or ``"per_dollar"``) and the
    best one of every ``(tp_a, tp_e, n_a, m)`` shape that has a feasible batch, under memory
    and the time-between-tokens SLO ``slo_s`` (``None`` when nothing fits)."""
    if objective not in ("per_gpu", "per_dollar"):
        raise ValueError(f"objective must be 'per_gpu' or 'per_dollar', got {objective!r}")
    found: list[Evaluation] = []
    for shape in _shapes(tp_a, tp_e, n_a, m):
        e = _largest_feasible(cost, shape, max_b_a, slo_s)
        if e is not None:
            found.append(e)
    best = max(found, key=lambda e: _score(e, objective), default=None)
    return best, found


def brute_force(
    cost: DisaggCostModel,
    *,
    tp_a: Iterable[int],
    tp_e: Iterable[int],
    n_a: Iterable[int],
    m: Iterable[int],
    b_a: Iterable[int],
    slo_s: float = 0.150,
    objective: str = "per_gpu",
) -> Evaluation | None:
    """The best deployment over every combination of the grids (for checking :func:`plan`)."""
    best: Evaluation | None = None
    sizes = list(b_a)
    for ta, te, na, mm in _shapes(tp_a, tp_e, n_a, m):
        for b in sizes:
            e = cost.evaluate(Deployment(ta, te, na, mm, b * mm * na), slo_s)
            if e.feasible and (best is None or _score(e, objective) > _score(best, objective)):
                best = e
    return best


def _shapes(*axes: Iterable[int]) -> list[tuple[int, int, int, int]]:
    a, b, c, d = (list(x) for x in axes)
    return [(w, x, y, z) for w in a for x in b for y in c for z in d]


# --------------------------------------------------------------------------------------------
# Colocated baselines
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColocatedResult(_Rates):
    """The best batch of a colocated deployment on ``gpus`` devices (``feasible`` False when no
    batch fits memory and the SLO)."""

    kind: str
    parallel: int
    batch: int
    iteration_s: float
    tokens_per_s: float
    gpus: int
    dollars_per_hour: float
    feasible: bool


def _best_batch(
    kind: str, n: int, gpus: int, price: float, time_of: Any, fits: Any, slo_s: float, max_b: int
) -> ColocatedResult:
    """Largest batch ``b <= max_b`` with ``fits(b)`` and ``time_of(b) <= slo_s`` (bisection)."""
    if not fits(1) or time_of(1) > slo_s:
        return ColocatedResult(kind, n, 0, math.nan, 0.0, gpus, price, False)
    lo, hi = 1, max_b + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid) and time_of(mid) <= slo_s:
            lo = mid
        else:
            hi = mid
    t = time_of(lo)
    return ColocatedResult(kind, n, lo, t, lo / t, gpus, price, True)


def colocated_tp(
    cost: DisaggCostModel, tp: int, *, slo_s: float = 0.150, max_batch: int = 4096
) -> ColocatedResult:
    """One replica of the whole model on ``tp`` GPUs of the attention side's type (Megatron
    tensor parallelism, the TensorRT-LLM/vLLM setting of the paper's baselines), at its largest
    batch within memory and the SLO."""
    from core.sim.cost import RooflineCostModel

    price = cost.prices.get(cost.hw_a.name, 0.0) * tp
    try:
        rm = RooflineCostModel(
            cost.spec,
            cost.hw_a,
            tp=tp,
            dtype=cost.dtype,
            memory_utilization=cost.memory_utilization,
            min_kv_tokens=cost.max_context,
        )
    except ValueError:  # does not fit or does not split
        return ColocatedResult("tp", tp, 0, math.nan, 0.0, tp, price, False)
    kv_tokens = rm.max_kv_tokens()
    return _best_batch(
        "tp",
        tp,
        tp,
        price,
        lambda b: rm.step_time(decode_contexts=[cost.context] * b),
        lambda b: b * cost.max_context <= kv_tokens,
        slo_s,
        max_batch,
    )


def colocated_ep(
    cost: DisaggCostModel, n: int, *, slo_s: float = 0.150, max_batch: int = 4096
) -> ColocatedResult:
    """Expert parallelism on ``n`` GPUs of the attention side's type: each GPU runs attention
    for its ``b`` sequences (data parallel) and holds ``E / n`` experts; per layer, tokens go
    to their experts and back with an all-to-all each way (:mod:`core.sim.network`), with no
    overlap. ``batch`` is the global batch ``n b``."""
    E, K = cost.experts, cost.top_k
    if E % n and n % E:
        return ColocatedResult("ep", n, 0, math.nan, 0.0, n, 0.0, False)
    hw = cost.hw_a
    price = cost.prices.get(hw.name, 0.0) * n
    local = max(1, E // n)  # experts per GPU (n > E: an expert split n/E ways is not modelled)
    if n > E:
        return ColocatedResult("ep", n, 0, math.nan, 0.0, n, price, False)
    a, d = dtype_bytes(cost.dtype), cost.spec.hidden_size
    layers = cost.spec.n_moe_layers
    weights = cost.attention_weight_bytes() + local * cost.expert_weight_bytes()
    usable = hw.memory_bytes * cost.memory_utilization

    def time_of(b: int) -> float:
        t_attn = cost.attention_s(b, 1)
        tokens_per_expert = b * n * K / E
        t_exp = local * cost.expert_s(tokens_per_expert, 1, on_attention_gpu=True)
        a2a = cost.net_a.all_to_all(b * K * d * a, n)
        return layers * (t_attn + t_exp + 2 * a2a) + cost.head_s(b, 1) + cost.eff_a.step_overhead_s

    try:
        cost.net_a.all_to_all(1.0, n)
    except ValueError:  # spans nodes without an inter-node link
        return ColocatedResult("ep", n, 0, math.nan, 0.0, n, price, False)
    res = _best_batch(
        "ep",
        n,
        n,
        price,
        time_of,
        lambda b: weights + b * cost.kv_bytes_per_seq() <= usable,
        slo_s,
        max_batch // n,
    )
    if not res.feasible:
        return res
    t = res.iteration_s
    return ColocatedResult("ep", n, res.batch * n, t, res.batch * n / t, n, price, True)
