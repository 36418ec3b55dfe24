"""The engine-side request: its tokens, its state, and its timeline.

A :class:`EngineRequest` is what the scheduler moves between queues. Its ``token_ids`` are
everything it has so far (prompt, generated tokens, tokens returned by tool calls);
``num_computed_tokens`` of them have KV in the cache. Each step schedules
``num_tokens - num_computed_tokens`` of the rest (all of a prompt, a chunk of it, or the one
token sampled last step), the uniform view of vLLM v1 that needs no prefill/decode phases.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.lora.request import LoRARequest
    from core.workload.schema import Interception


class RequestStatus(enum.Enum):
    """Where a request is. Finished states are terminal."""

    WAITING = "waiting"  # queued for (re)admission; holds no KV (or only swapped-out KV)
    RUNNING = "running"  # holds KV on the device; scheduled every step until done
    PAUSED = "paused"  # stopped mid-generation for an external call; resumes later
    SWAPPED = "swapped"  # preempted to the host pool; waits to be swapped back in
    FINISHED_STOPPED = "finished_stopped"  # sampled EOS or a stop token
    FINISHED_LENGTH = "finished_length"  # reached max_tokens
    FINISHED_ABORTED = "finished_aborted"  # aborted by the caller
    FINISHED_ERROR = "finished_error"  # rejected: empty prompt, too long for the model, ...

    @property
    def finished(self) -> bool:
        return self.value.startswith("finished")

    @property
    def finish_reason(self) -> str | None:
        return {
            RequestStatus.FINISHED_STOPPED: "stop",
            RequestStatus.FINISHED_LENGTH: "length",
            RequestStatus.FINISHED_ABORTED: "abort",
            RequestStatus.FINISHED_ERROR: "error",
        }.get(self)


class PauseMode(enum.Enum):
    """What happens to a paused request's KV (InferCept's choices)."""

    PRESERVE = "preserve"  # keep it on the device
    DISCARD = "discard"  # free it; recompute every token on resume
    SWAP = "swap"  # move it to the host pool; swap it back on resume


@dataclass
class RequestTimeline:
    """When things happened to a request, in the engine's clock (seconds)."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    finish_time: float | None = None
    num_preemptions: int = 0
    num_pauses: int = 0
    recomputed_tokens: int = 0  # tokens computed again after KV was dropped
    num_spec_steps: int = 0  # speculative decoding: steps that verified draft tokens,
    num_draft_tokens: int = 0  # the draft tokens they verified,
    num_accepted_tokens: int = 0  # and how many of those were accepted

    def to_dict(self) -> dict[str, Any]:
        return {
            "arrival_time": self.arrival_time,
            "first_scheduled_time": self.first_scheduled_time,
            "first_token_time": self.first_token_time,
            "token_times": list(self.token_times),
            "finish_time": self.finish_time,
            "num_preemptions": self.num_preemptions,
            "num_pauses": self.num_pauses,
            "recomputed_tokens": self.recomputed_tokens,
            "num_spec_steps": self.num_spec_steps,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
        }


@dataclass
class EngineRequest:
    """One request inside the engine or the simulator.

    Contract:
    - ``token_ids`` = prompt + every token appended since (sampled, or returned by a tool);
      ``output_token_ids`` are the sampled ones only, and ``max_tokens`` counts those.
    - ``num_computed_tokens`` <= ``num_tokens``; the KV of tokens ``[0, num_computed_tokens)``
      is in the cache while the request holds KV.
    - ``num_cached_tokens`` is the prefix-cache hit of its latest admission.
    - ``priority``: smaller is served first by priority queue policies (ties: arrival).
    - ``interceptions``: pauses that fire when the request has generated
      ``after_output_tokens`` tokens (tool calls; see :class:`PauseMode`).
    - ``eos_token_id``: the model's EOS id, or several (a config may list more than one):
      sampling any of :attr:`eos_token_ids` stops the request unless ``ignore_eos``.
    - ``lora``: the LoRA adapter it runs with (None: the base model); see :mod:`core.lora`.
    - ``spec_token_ids``: draft tokens proposed for its next step (speculative decoding,
      :mod:`core.spec`); never part of ``token_ids``, and dropped when it is preempted.
    - ``sampling`` is opaque to the scheduler except ``max_tokens``, ``stop_token_ids``,
      ``ignore_eos`` and ``min_tokens`` (any object with those attributes works, so the
      simulator needs no sampler).
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling: Any
    arrival_time: float = 0.0
    priority: int = 0
    interceptions: list[Interception] = field(default_factory=list)
    eos_token_id: int | tuple[int, ...] | None = None
    lora: LoRARequest | None = None
    status: RequestStatus = RequestStatus.WAITING
    token_ids: list[int] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)
    spec_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    max_computed_tokens: int = 0  # high-water mark, to count recomputed tokens
    error: str | None = None
    logprobs: list[Any] = field(default_factory=list)
    # per prompt position when its sampling asks for prompt logprobs (None: not computed yet)
    prompt_logprobs: list[Any] | None = None
    resume_time: float | None = None  # paused: when the external call returns
    pause_mode: PauseMode | None = None
    pause_time: float | None = None  # paused: when it paused
    paused_by: Interception | None = None  # paused: the interception, if one fired
    pending_return: list[int] = field(default_factory=list)  # tokens the call will return
    next_interception: int = 0
    timeline: RequestTimeline = field(init=False)
    # scheduler bookkeeping: admission order, used to break priority ties deterministically
    seq_no: int = 0

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)
        self.timeline = RequestTimeline(self.arrival_time)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The EOS ids that stop this request (empty: none)."""
        eos = self.eos_token_id
        if eos is None:
            return ()
        return (eos,) if isinstance(eos, int) else eos

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    @property
    def max_tokens(self) -> int:
        return int(self.sampling.max_tokens)

    def interception_due(self) -> Interception | None:
        """The interception that fires now (after the latest sampled token), if any."""
        if self.next_interception < len(self.interceptions):
            icp = self.interceptions[self.next_interception]
            if icp.after_output_tokens <= self.num_output_tokens:
                return icp
        return None
