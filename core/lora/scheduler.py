"""Schedulers for LoRA serving, torch-free so the engine and the simulator share them.

:class:`LoRAScheduler` is the token-budget :class:`~core.sched.scheduler.Scheduler` with two
LoRA rules: at most ``max_loras`` distinct adapters hold KV at once (the device slots), and every
:class:`~core.sched.scheduler.SchedulerOutput` carries a :class:`LoRAStep` saying whether the
step runs merged (one adapter folded into the weights) or unmerged, which the model runner
applies and a cost model prices. Subclasses choose the batch with :meth:`plan`:

- :class:`LoRAScheduler` itself: unmerged always (S-LoRA / Punica style);
- :class:`MergedOnlyScheduler`: one adapter at a time, merged (vLLM-style in the dLoRA paper):
  the adapter of the oldest request is merged and only its requests run;
- :class:`SingleAdapterScheduler`: one adapter at a time, unmerged (PEFT-style: no batching
  across adapters, no merge).

A plan names the adapter to merge (or None) and which requests may run this step; requests
left out keep their KV and state and wait (they are hidden from one :meth:`schedule` call).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from core.kv.backend import KVBackend
from core.sched.intercept import InterceptPolicy
from core.sched.policies import QueuePolicy
from core.sched.request import EngineRequest
from core.sched.scheduler import Scheduler, SchedulerConfig, SchedulerOutput

__all__ = [
    "LoRAPlan",
    "LoRAScheduler",
    "LoRAStep",
    "MergedOnlyScheduler",
    "SingleAdapterScheduler",
    "LORA_SCHEDULERS",
    "adapter_of",
    "make_lora_scheduler",
    "requests_by_adapter",
]


def adapter_of(req: EngineRequest) -> str | None:
    """The adapter name of a request (None: the base model)."""
    lora = req.lora
    return None if lora is None else lora.lora_name


@dataclass(frozen=True)
class LoRAStep:
    """The LoRA mode of one step: ``merged`` is the adapter folded into the weights for it
    (None: unmerged), ``previous`` the one merged before it. A change costs an unmerge of
    ``previous`` (if any) and a merge of ``merged`` (if any): :attr:`num_switch_ops`."""

    merged: str | None = None
    previous: str | None = None
    adapters: tuple[str, ...] = ()  # distinct adapters of the step's requests, unmerged ones

    @property
    def num_switch_ops(self) -> int:
        if self.merged == self.previous:
            return 0
        return int(self.previous is not None) + int(self.merged is not None)


@dataclass
class LoRAPlan:
    """What a LoRA scheduler runs next: ``merged`` adapter (None: unmerged) and ``allow``, a
    predicate on requests (None: every request may run)."""

    merged: str | None = None
    allow: Callable[[EngineRequest], bool] | None = None


class LoRAScheduler(Scheduler):
    """Token-budget scheduling under the LoRA rules (see the module docstring).

    ``max_loras``: distinct adapters among requests holding KV (None: no limit, e.g. in the
    simulator when every adapter fits). Requests whose adapter would exceed it wait, in order.
    """

    def __init__(
        self,
        config: SchedulerConfig,
        kv: KVBackend,
        policy: QueuePolicy | str = "fcfs",
        intercept: InterceptPolicy | str | None = None,
        *,
        max_loras: int | None = None,
    ) -> None:
        super().__init__(config, kv, policy, intercept)
        if max_loras is not None and max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {max_loras}")
        self.max_loras = max_loras
        self.merged: str | None = None

    # -- what subclasses change -----------------------------------------------------------------

    def plan(self, now: float) -> LoRAPlan:
        """The next step's mode and allowed requests; unmerged, everyone, here."""
        return LoRAPlan()

    def after_step(self, out: SchedulerOutput, plan: LoRAPlan) -> None:
        """Called with every scheduled output (for a policy's bookkeeping)."""

    # -- scheduling -----------------------------------------------------------------------------

    def queued(self) -> list[EngineRequest]:
        """Every request that wants to run: running, then swapped and waiting (policy order)."""
        return [*self.running, *self.swapped, *self.waiting]

    def schedule(self, now: float) -> SchedulerOutput:
        plan = self.plan(now)
        out = self._schedule_allowed(now, plan.allow)
        if out.is_empty and plan.allow is not None and (self.running or self.waiting):
            # the plan's requests cannot run now (no KV left for them while the others hold
            # it): run everyone unmerged rather than stall
            plan = LoRAPlan()
            out = self._schedule_allowed(now, None)
        names = sorted({a for c in out.chunks if (a := adapter_of(c.request)) is not None})
        merged = plan.merged if out.chunks else self.merged
        out.lora_step = LoRAStep(merged, self.merged, tuple(names) if merged is None else ())
        self.merged = merged
        self.after_step(out, plan)
        return out

    def _schedule_allowed(
        self, now: float, allow: Callable[[EngineRequest], bool] | None
    ) -> SchedulerOutput:
        fits = self._slot_filter()

        def ok(r: EngineRequest) -> bool:
            return fits(r) and (allow is None or allow(r))

        hidden_running = [r for r in self.running if allow is not None and not allow(r)]
        hidden_waiting = [r for r in self.waiting if not ok(r)]
        hidden_swapped = [r for r in self.swapped if not ok(r)]
        if hidden_running or hidden_waiting or hidden_swapped:
            return self._schedule_without(now, hidden_running, hidden_waiting, hidden_swapped)
        return super().schedule(now)

    def _slot_filter(self) -> Callable[[EngineRequest], bool]:
        """Admission under ``max_loras``: the adapters already holding KV plus the first new
        ones in queue order, up to the limit."""
        if self.max_loras is None:
            return lambda r: True
        active = {adapter_of(r) for r in self.running} | {adapter_of(r) for r in self.paused}
        active.discard(None)
        for r in [*self.swapped, *self.waiting]:
            a = adapter_of(r)
            if a is not None and a not in active and len(active) < self.max_loras:
                active.add(a)
        return lambda r: adapter_of(r) is None or adapter_of(r) in active

    def _schedule_without(
        self,
        now: float,
        running: list[EngineRequest],
        waiting: list[EngineRequest],
        swapped: list[EngineRequest],
    ) -> SchedulerOutput:
        """One :meth:`Scheduler.schedule` with these requests hidden (they keep their KV and
        state, like dLoRA's "ready" requests: ``max_num_seqs`` bounds the batch, KV memory
        bounds how many wait beside it)."""
        hide_r, hide_w, hide_s = (set(map(id, q)) for q in (running, waiting, swapped))
        self.running = [r for r in self.running if id(r) not in hide_r]
        self.waiting = [r for r in self.waiting if id(r) not in hide_w]
        self.swapped = [r for r in self.swapped if id(r) not in hide_s]
        try:
            out = super().schedule(now)
        finally:
            self.running = running + self.running
            for queue, back in ((self.waiting, waiting), (self.swapped, swapped)):
                for r in back:
                    if not r.is_finished:
                        bisect.insort(queue, r, key=self.policy.key)
        return out

    def adapters_waiting(self) -> dict[str | None, list[EngineRequest]]:
        """Queued requests per adapter, in queue order."""
        by: dict[str | None, list[EngineRequest]] = {}
        for r in self.queued():
            by.setdefault(adapter_of(r), []).append(r)
        return by


def _one_adapter(name: str | None) -> Callable[[EngineRequest], bool]:
    return lambda r: adapter_of(r) == name


class MergedOnlyScheduler(LoRAScheduler):
    """One adapter at a time, merged: the adapter of the oldest queued request; its requests
    run until none is left, then the next oldest request's adapter is merged."""

    merge = True

    def plan(self, now: float) -> LoRAPlan:
        queued = self.queued()
        if not queued:
            return LoRAPlan(self.merged if self.merge else None)
        current = self.merged if self.merge else getattr(self, "_current", None)
        names = {adapter_of(r) for r in queued}
        if current not in names:
            oldest = min(queued, key=lambda r: (r.arrival_time, r.seq_no))
            current = adapter_of(oldest)
        self._current = current
        return LoRAPlan(current if self.merge else None, _one_adapter(current))


class SingleAdapterScheduler(MergedOnlyScheduler):
    """One adapter at a time, unmerged (PEFT-style: no batching across adapters)."""

    merge = False


LORA_SCHEDULERS: dict[str, type[LoRAScheduler]] = {
    "unmerged": LoRAScheduler,
    "merged": MergedOnlyScheduler,
    "single": SingleAdapterScheduler,
}


def make_lora_scheduler(spec: str | type[LoRAScheduler]) -> type[LoRAScheduler]:
    """A LoRA scheduler class from its name (``"unmerged"``, ``"merged"``, ``"single"``) or the
    class itself; ValueError for anything else."""
    if isinstance(spec, type) and issubclass(spec, LoRAScheduler):
        return spec
    if isinstance(spec, str) and spec in LORA_SCHEDULERS:
        return LORA_SCHEDULERS[spec]
    raise ValueError(
        f"unknown LoRA scheduler {spec!r}; use one of {', '.join(LORA_SCHEDULERS)} or a "
        "LoRAScheduler subclass"
    )


def requests_by_adapter(reqs: Iterable[EngineRequest]) -> dict[str | None, int]:
    """How many of ``reqs`` use each adapter."""
    out: dict[str | None, int] = {}
    for r in reqs:
        a = adapter_of(r)
        out[a] = out.get(a, 0) + 1
    return out
