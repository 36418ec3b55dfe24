"""The one narrow interface between a scheduler step and whatever executes it.

The engine's :class:`~core.engine.runner.ModelRunner` runs a real forward pass; the
simulator's :class:`~core.sim.simulator.SimulatedRunner` asks a cost model. Both return a
:class:`StepResult`, and the loop around them is the same: ``schedule -> execute -> update``.
Kept free of torch so the simulator imports light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from core.sched.scheduler import SchedulerOutput, SpecOutcome


@dataclass
class StepResult:
    """What executing one step produced: a sampled token per request that needed one,
    optional logprobs, and how long the model part took (seconds: measured for a real
    forward, the cost model's answer for a simulated one). ``spec``: draft tokens accepted
    and proposed, when the runner speculates (:mod:`core.spec`). ``prompt_logprobs``: per
    request that asks for them, ``(first position, entries)`` for the prompt positions its
    chunk computed (the engine keeps them in ``EngineRequest.prompt_logprobs``)."""

    sampled: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, Any] = field(default_factory=dict)
    prompt_logprobs: dict[str, tuple[int, list[Any]]] = field(default_factory=dict)
    forward_s: float = 0.0
    spec: SpecOutcome | None = None


class Runner(Protocol):
    """Executes a :class:`SchedulerOutput`: applies its copies, computes its chunks, samples."""

    def execute(self, out: SchedulerOutput) -> StepResult: ...
