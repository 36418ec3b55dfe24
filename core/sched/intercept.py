"""Interception policies: what a paused request's KV does while its external call runs, and
how it comes back.

An :class:`InterceptPolicy` decides, for the :class:`~core.sched.scheduler.Scheduler`, a
paused request's :class:`~core.sched.request.PauseMode` (preserve, discard, swap), which
preserved requests to discard or swap out each iteration (:meth:`InterceptPolicy.plan`),
where a discarded request re-queues, and the chunked-recompute and pipelined-swap budgets.
Policies are immutable configuration: one object can serve many schedulers.

Names (:func:`make_intercept_policy`, :data:`INTERCEPT_POLICIES`): the baselines every paper on
tool-call pauses compares against, ``preserve`` (default), ``vllm``, ``improved-discard`` and
``swap``; a paper's own policy registers its name (:func:`register_intercept_policy`) when its
artifact is imported, or is named by import path ``"module:Class"``. Details:
docs/core/sched.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.sched import registry
from core.sched.request import EngineRequest, PauseMode

if TYPE_CHECKING:
    from core.sched.scheduler import Scheduler
    from core.workload.schema import Interception

__all__ = [
    "INTERCEPT_POLICIES",
    "DiscardPolicy",
    "InterceptPolicy",
    "IterationPlan",
    "PreservePolicy",
    "SwapPolicy",
    "make_intercept_policy",
    "register_intercept_policy",
]


# -- policies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IterationPlan:
    """A policy's decision for one iteration: preserved paused requests to ``discard`` now, and
    ``swap_targets`` (preserved too), in the order the scheduler should free them when it runs
    out of KV memory."""

    discard: Sequence[EngineRequest] = ()
    swap_targets: Sequence[EngineRequest] = ()


_NOTHING = IterationPlan()


class InterceptPolicy(ABC):
    """What happens to paused requests' KV, decided for a :class:`Scheduler`.

    Contract:
    - :meth:`pause_mode` is asked once per interception, when it fires (manual
      :meth:`Scheduler.pause` calls keep the mode they pass);
    - :meth:`plan` is asked at the start of every :meth:`Scheduler.schedule`, after returning
      calls have resumed; it only reads the scheduler. Each request it names is paused with
      ``PauseMode.PRESERVE``.
    - :meth:`quiet` must be True only if, from ``now`` on, while the running requests only
      decode and time passes, :meth:`plan` would discard nothing (the simulator's decode
      fast-forward skips those calls); a policy whose plan is always empty is quiet.
    - ``requeue``: ``"tail"``/``"head"`` for discarded requests whose call returned, or None for
      ``SchedulerConfig.discard_requeue``.
    - ``preemption_mode``: ``"recompute"``/``"swap"`` for running requests preempted when
      memory runs out, or None for ``SchedulerConfig.preemption_mode``.
    - ``recompute_saturation``: None, or the token count per iteration that recomputation (of
      tokens a request computed before) fills up to: :meth:`recompute_budget`.
    - ``swap_out_budget_tokens`` / ``swap_in_budget_tokens``: KV tokens per iteration each way
      over the host link (None: unlimited); ``pipelined_swap``: the transfer overlaps the
      forward (else it adds to the step time).
    Immutable: one policy object may serve many schedulers.
    """

    name: str = "intercept"
    requeue: str | None = None
    preemption_mode: str | None = None
    recompute_saturation: int | None = None
    swap_out_budget_tokens: int | None = None
    swap_in_budget_tokens: int | None = None
    pipelined_swap: bool = False

    @abstractmethod
    def pause_mode(
        self, req: EngineRequest, interception: Interception | None, now: float
    ) -> PauseMode:
        """The KV mode a request pausing now starts in."""

    def plan(self, sched: Scheduler, now: float) -> IterationPlan:
        return _NOTHING

    def quiet(self, sched: Scheduler, now: float) -> bool:
        return True

    def recompute_budget(self, decode_tokens: int) -> int | None:
        """Recompute tokens allowed this iteration, when the running batch computes
        ``decode_tokens`` other tokens: ``max(saturation - decode_tokens, 1)`` (at least one, so
        recomputation always progresses); None when recomputation is not chunked."""
        if self.recompute_saturation is None:
            return None
        return max(self.recompute_saturation - decode_tokens, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


@dataclass(frozen=True, repr=False)
class PreservePolicy(InterceptPolicy):
    """Keep the KV on the device for the whole call (today's default)."""

    name: str = "preserve"
    requeue: str | None = None

    def pause_mode(
        self, req: EngineRequest, interception: Interception | None, now: float
    ) -> PauseMode:
        return PauseMode.PRESERVE


@dataclass(frozen=True, repr=False)
class DiscardPolicy(InterceptPolicy):
    """Free the KV at pause and recompute the whole context on return; ``requeue="tail"`` is
    vLLM (a returning request waits behind new arrivals), ``"head"`` InferCept's
    ImprovedDiscard."""

    name: str = "vllm"
    requeue: str | None = "tail"

    def __post_init__(self) -> None:
        if self.requeue not in ("tail", "head"):
            raise ValueError(f"requeue must be 'tail' or 'head', got {self.requeue!r}")

    def pause_mode(
        self, req: EngineRequest, interception: Interception | None, now: float
    ) -> PauseMode:
        return PauseMode.DISCARD


@dataclass(frozen=True, repr=False)
class SwapPolicy(InterceptPolicy):
    """Swap the KV to the host at pause and back on return, all at once and not overlapped
    with the forward (vLLM's synchronous swap). Without host room it discards instead."""

    name: str = "swap"

    def pause_mode(
        self, req: EngineRequest, interception: Interception | None, now: float
    ) -> PauseMode:
        return PauseMode.SWAP


# -- names --------------------------------------------------------------------------------------


INTERCEPT_POLICIES: dict[str, Callable[..., InterceptPolicy]] = {}
"""Registered names -> factories called with :func:`make_intercept_policy`'s options."""

_HINT = (
    "; a paper's own policy is registered when its artifact is imported (InferCept's "
    "'infercept': `import artifacts.infercept`), or pass an import path 'module:Class' "
    "(e.g. 'artifacts.infercept.policy:MinWastePolicy')"
)


def register_intercept_policy(name: str, factory: Callable[..., InterceptPolicy]) -> None:
    """Make ``name`` (lower case) resolve to ``factory(**options)`` in
    :func:`make_intercept_policy`, and so in ``Scheduler``, ``ReplicaConfig`` and
    ``LLM(intercept=...)``. Re-registering the same factory is a no-op; a name taken by another
    factory raises ValueError."""
    registry.register(INTERCEPT_POLICIES, "interception policy", name.lower(), factory)


def make_intercept_policy(
    policy: InterceptPolicy | str | None = None, **options: Any
) -> InterceptPolicy:
    """``policy`` itself, or a new policy from a registered name (:data:`INTERCEPT_POLICIES`,
    case-insensitive) or an import path ``"module:Class"``, called with ``options``; None is
    ``"preserve"``. The core baselines take no options. An unknown name raises ValueError
    listing the known ones."""
    if isinstance(policy, InterceptPolicy):
        if options:
            raise ValueError(f"options {sorted(options)} given with a policy object")
        return policy
    spec = "preserve" if policy is None else str(policy)
    if ":" not in spec:
        spec = spec.lower()
    factory = registry.resolve(INTERCEPT_POLICIES, "interception policy", spec, _HINT)
    made = factory(**options)
    if not isinstance(made, InterceptPolicy):
        raise ValueError(
            f"interception policy {policy!r} made a {type(made).__name__}, not an InterceptPolicy"
        )
    return made


def _baseline(name: str, make: Callable[[], InterceptPolicy]) -> Callable[..., InterceptPolicy]:
    def factory(**options: Any) -> InterceptPolicy:
        if options:
            raise ValueError(
                f"interception policy {name!r} takes no options, got {sorted(options)}"
            )
        return make()

    return factory


register_intercept_policy("preserve", _baseline("preserve", PreservePolicy))
register_intercept_policy(
    "vllm", _baseline("vllm", lambda: DiscardPolicy(name="vllm", requeue="tail"))
)
register_intercept_policy(
    "improved-discard",
    _baseline("improved-discard", lambda: DiscardPolicy(name="improved-discard", requeue="head")),
)
register_intercept_policy("swap", _baseline("swap", SwapPolicy))
