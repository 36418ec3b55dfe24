"""InferCept's own interception policy (ICML'24): min-waste decisions, chunked recompute and
pipelined swap, behind core's :class:`~core.sched.intercept.InterceptPolicy`.

:class:`MinWastePolicy` plus what only it uses: its waste formulas, the authors' linear
iteration model (:class:`LinearIterationCost`, fitted on A100s) and the swap budget derived
from it. Importing this module registers the name ``"infercept"`` (so
``make_intercept_policy("infercept", **options)``, ``LLM(intercept="infercept")`` and
``ReplicaConfig(intercept="infercept")`` work); ``"artifacts.infercept.policy:MinWastePolicy"``
names it without the import. The waste model and the simplifications: README.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from core.sched.intercept import InterceptPolicy, IterationPlan, register_intercept_policy
from core.sched.request import EngineRequest, PauseMode

if TYPE_CHECKING:
    from core.sched.scheduler import Scheduler
    from core.workload.schema import Interception

__all__ = [
    "GPTJ_6B_A100",
    "LLAMA_13B_TP2_A100",
    "PCIE4_X16_BYTES_PER_S",
    "SATURATION_TOKENS_A100",
    "InterceptCost",
    "LinearIterationCost",
    "MinWastePolicy",
    "chunked_discard_waste",
    "discard_waste",
    "mean_durations",
    "preserve_waste",
    "swap_budget_tokens",
    "swap_waste",
]

SATURATION_TOKENS_A100 = 384
"""Tokens per iteration beyond which an A100 forward is compute-bound (the paper's chunk size
target): recompute fills the batch up to here."""

PCIE4_X16_BYTES_PER_S = 25e9
"""Host-link bandwidth per direction of PCIe 4.0 x16 as pinned copies reach it (the datasheet
says 32 GB/s). The hardware table (``core.sim.hardware``) has no host link."""


# -- cost ---------------------------------------------------------------------------------------


class InterceptCost(Protocol):
    """What the waste formulas need: ``forward_s(tokens)``, seconds of an iteration computing
    ``tokens`` tokens (``T_fwd``), and ``swap_s(tokens)``, seconds to move ``tokens`` tokens' KV
    one way over the host link (``T_swap``)."""

    def forward_s(self, tokens: int) -> float: ...

    def swap_s(self, tokens: int) -> float: ...


@dataclass(frozen=True)
class LinearIterationCost:
    """``T_fwd(n) = a_s * n + c_s`` and ``T_swap(n) = n * kv_bytes_per_token / host_bandwidth``.

    Also a simulator cost model (:meth:`step_time_for`, an empty step costs 0) and a host link
    for :class:`~core.sim.simulator.SimulatedRunner` (:meth:`swap_s`), so one object can time
    a simulation the way the policy predicts it. ``kv_bytes_per_token`` is per device (with
    tensor parallelism each rank moves its shard over its own link).
    """

    a_s: float
    c_s: float
    kv_bytes_per_token: int = 0
    host_bandwidth: float = PCIE4_X16_BYTES_PER_S

    def __post_init__(self) -> None:
        if self.a_s < 0 or self.c_s < 0 or self.kv_bytes_per_token < 0:
            raise ValueError(f"a_s, c_s and kv_bytes_per_token must be >= 0: {self}")
        if not self.host_bandwidth > 0:
            raise ValueError(f"host_bandwidth must be > 0, got {self.host_bandwidth}")

    def forward_s(self, tokens: int) -> float:
        return self.a_s * tokens + self.c_s

    def swap_s(self, tokens: int) -> float:
        return tokens * self.kv_bytes_per_token / self.host_bandwidth

    def step_time_for(self, out: Any) -> float:
        return self.forward_s(out.num_tokens) if out.chunks else 0.0


# The authors' fitted iteration times (exps/6B_bench.sh, exps/13B_tp2_bench.sh, in ms there).
# KV bytes: fp16, 2 (K and V) x layers x hidden; GPT-J-6B 28 x 4096, Vicuna-13B 40 x 5120 / 2 ranks.
GPTJ_6B_A100 = LinearIterationCost(0.0463e-3, 10e-3, kv_bytes_per_token=2 * 28 * 4096 * 2)
LLAMA_13B_TP2_A100 = LinearIterationCost(0.0279e-3, 15.4e-3, kv_bytes_per_token=2 * 40 * 5120)


def swap_budget_tokens(cost: InterceptCost, saturation: int) -> int | None:
    """KV tokens the host link moves (one way) while a saturated iteration runs: what a swap
    can move per iteration and stay hidden behind the forward. None when swapping is free."""
    per_token = cost.swap_s(1)
    if per_token <= 0:
        return None
    return max(1, int(cost.forward_s(saturation) / per_token))


# -- waste --------------------------------------------------------------------------------------


def preserve_waste(remaining_s: float, context_tokens: int, bytes_per_token: float = 1.0) -> float:
    """``T * C_i * M``: the context sits idle for the rest of the call."""
    return remaining_s * context_tokens * bytes_per_token


def discard_waste(
    forward_s: float, context_tokens: int, other_tokens: int, bytes_per_token: float = 1.0
) -> float:
    """``T_fwd(C_i)*C_i*M + T_fwd(C_i)*C_other*M``: recomputing the context in one forward of
    ``forward_s`` seconds, while the ``C_other`` tokens of the rest of the batch wait."""
    return forward_s * (context_tokens + other_tokens) * bytes_per_token


def swap_waste(swap_s: float, batch_tokens: int, bytes_per_token: float = 1.0) -> float:
    """``2 * T_swap(C_i) * C_batch * M``: the batch waits for the transfer out and back."""
    return 2.0 * swap_s * batch_tokens * bytes_per_token


def chunked_discard_waste(
    context_tokens: int,
    decode_tokens: int,
    other_kv_tokens: int,
    cost: InterceptCost,
    saturation: int = SATURATION_TOKENS_A100,
    bytes_per_token: float = 1.0,
) -> float:
    """Discard waste when the recomputation is chunked into the unsaturated part of each
    iteration (the authors' ``discard_waste``).

    Chunk ``h = max(saturation - decode_tokens, 1)``; the context takes ``n = C // h`` full
    chunks and a last one of ``C - n*h`` tokens. During full chunk ``k`` (an iteration at
    saturation) the request holds ``k*h`` recomputed tokens; each chunk lengthens the iteration
    by its marginal time, and the ``other_kv_tokens`` of the running batch wait that long:

        T_fwd(sat) * h * n(n+1)/2 + dT(h) * n * C_other + dT(last) * (C_other + last)

    with ``dT(x) = T_fwd(x) - T_fwd(0)``. (The authors take ``n = ceil(C/h) - 1``, which drops
    the last chunk when ``h`` divides ``C``; here every token is charged.)
    """
    c = int(context_tokens)
    if c <= 0:
        return 0.0
    h = max(saturation - decode_tokens, 1)
    n, last = divmod(c, h)
    base = cost.forward_s(0)
    full = cost.forward_s(saturation) * h * n * (n + 1) / 2
    stall = (cost.forward_s(h) - base) * n * other_kv_tokens
    tail = (cost.forward_s(last) - base) * (other_kv_tokens + last) if last else 0.0
    return (full + stall + tail) * bytes_per_token


def mean_durations(interceptions: Iterable[Interception]) -> dict[str, float]:
    """Mean ``duration_s`` per ``kind``: the table a non-oracle :class:`MinWastePolicy` uses."""
    sums: dict[str, list[float]] = {}
    for icp in interceptions:
        s = sums.setdefault(icp.kind, [0.0, 0.0])
        s[0] += icp.duration_s
        s[1] += 1
    return {k: total / n for k, (total, n) in sums.items()}


# -- the policy ---------------------------------------------------------------------------------

_NOTHING = IterationPlan()


@dataclass(frozen=True)
class MinWastePolicy(InterceptPolicy):
    """InferCept: min-waste decisions, chunked recompute, pipelined swap (see README.md).

    - ``cost``: ``T_fwd``/``T_swap`` (:class:`InterceptCost`), GPT-J-6B on an A100 by default;
    - ``saturation``: tokens per iteration recomputation fills up to (384 on an A100);
    - ``oracle``: use each call's true remaining time (its ``resume_time``); else
      ``mean_duration_s[kind]`` minus the time paused so far (a kind missing from the table
      uses the table's mean);
    - ``chunked_recompute``: off charges discard by the paper's one-shot formula
      (:func:`discard_waste`) and recomputes without a cap;
    - ``swap_out_budget_tokens`` / ``swap_in_budget_tokens``: None derives both from the cost
      (:func:`swap_budget_tokens` at ``saturation``);
    - ``preemption_mode``: running requests preempted for memory are swapped out, as the
      authors' scheduler does (a full host pool falls back to recompute).
    """

    name: str = "infercept"
    requeue: str | None = "head"
    preemption_mode: str | None = "swap"
    cost: InterceptCost = GPTJ_6B_A100
    saturation: int = SATURATION_TOKENS_A100
    oracle: bool = True
    mean_duration_s: Mapping[str, float] = field(default_factory=dict)
    chunked_recompute: bool = True
    swap_out_budget_tokens: int | None = None
    swap_in_budget_tokens: int | None = None
    pipelined_swap: bool = True

    def __post_init__(self) -> None:
        if self.saturation < 1:
            raise ValueError(f"saturation must be >= 1, got {self.saturation}")
        if not self.oracle and not self.mean_duration_s:
            raise ValueError(
                "a non-oracle infercept policy needs mean_duration_s (see "
                "artifacts.infercept.policy.mean_durations)"
            )
        if self.requeue not in ("tail", "head"):
            raise ValueError(f"requeue must be 'tail' or 'head', got {self.requeue!r}")
        if self.preemption_mode not in (None, "recompute", "swap"):
            raise ValueError(
                f"preemption_mode must be None, 'recompute' or 'swap', got {self.preemption_mode!r}"
            )
        derived = swap_budget_tokens(self.cost, self.saturation)
        for name in ("swap_out_budget_tokens", "swap_in_budget_tokens"):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, derived)
            elif value < 1:
                raise ValueError(f"{name} must be >= 1 (or None), got {value}")
        object.__setattr__(self, "mean_duration_s", dict(self.mean_duration_s))
        object.__setattr__(
            self, "recompute_saturation", self.saturation if self.chunked_recompute else None
        )

    def pause_mode(
        self, req: EngineRequest, interception: Interception | None, now: float
    ) -> PauseMode:
        return PauseMode.PRESERVE

    def remaining_s(self, req: EngineRequest, now: float) -> float:
        """Seconds until the request's call returns, as the policy believes."""
        if self.oracle and req.resume_time is not None:
            return max(0.0, req.resume_time - now)
        icp = req.paused_by
        if icp is None or not self.mean_duration_s:
            return math.inf  # a manual pause with no known end: its KV idles indefinitely
        table = self.mean_duration_s
        mean = table.get(icp.kind, sum(table.values()) / len(table))
        started = req.pause_time if req.pause_time is not None else now
        return max(0.0, mean - (now - started))

    def discard_waste_of(
        self, context_tokens: int, decode_tokens: int, other_kv_tokens: int
    ) -> float:
        """Discard waste of a context, chunked or one-shot as configured."""
        if self.chunked_recompute:
            return chunked_discard_waste(
                context_tokens, decode_tokens, other_kv_tokens, self.cost, self.saturation
            )
        return discard_waste(self.cost.forward_s(context_tokens), context_tokens, other_kv_tokens)

    def wastes(self, sched: Scheduler, now: float) -> list[tuple[EngineRequest, float, float]]:
        """``(request, preserve waste, discard waste)`` of every preserved paused request, in
        tokens x seconds (``M`` is common to both, so left out)."""
        held = [
            r
            for r in sched.paused
            if r.pause_mode == PauseMode.PRESERVE and r.num_computed_tokens > 0
        ]
        if not held:
            return []
        # the running batch as this iteration will compute it (the authors' inflight tokens)
        decode = sum(r.num_uncomputed_tokens for r in sched.running)
        other = sum(r.num_computed_tokens for r in sched.running)
        return [
            (
                r,
                preserve_waste(self.remaining_s(r, now), r.num_computed_tokens),
                self.discard_waste_of(r.num_computed_tokens, decode, other),
            )
            for r in held
        ]

    def plan(self, sched: Scheduler, now: float) -> IterationPlan:
        candidates = [(w_d, r) for r, w_p, w_d in self.wastes(sched, now) if w_d < w_p]
        if not candidates:
            return _NOTHING
        top = max(w for w, _ in candidates)
        return IterationPlan(
            discard=[r for w, r in candidates if w < top],
            swap_targets=[r for w, r in candidates if w == top],
        )

    def quiet(self, sched: Scheduler, now: float) -> bool:
        # In a decode run preserve waste only falls (the call comes closer) and discard waste
        # only grows (the batch's KV grows, its decode count is fixed): a plan that discards
        # nothing now discards nothing for the rest of the run.
        return not self.plan(sched, now).discard


register_intercept_policy("infercept", MinWastePolicy)
