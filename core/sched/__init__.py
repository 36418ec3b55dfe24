"""Scheduling: the request lifecycle, token-budget continuous batching, queue policies,
interception policies (what paused requests' KV does: ``core.sched.intercept``), and decode
runs, the simulator's fast-forward over steps that only decode (``core.sched.decode_run``).
Both kinds of policy are named through registries that artifacts extend with their own
(``register_queue_policy``, ``register_intercept_policy``).

The same :class:`Scheduler` object is driven by the real engine (``core.engine``) and by the
simulator; it reads no clock and touches no tensor.
"""

from core.sched.decode_run import DecodeRun, decode_run_limit
from core.sched.intercept import (
    INTERCEPT_POLICIES,
    InterceptPolicy,
    IterationPlan,
    make_intercept_policy,
    register_intercept_policy,
)
from core.sched.policies import (
    FCFS,
    POLICIES,
    PriorityPolicy,
    QueuePolicy,
    make_policy,
    register_queue_policy,
)
from core.sched.request import EngineRequest, PauseMode, RequestStatus, RequestTimeline
from core.sched.scheduler import ScheduledChunk, Scheduler, SchedulerConfig, SchedulerOutput

__all__ = [
    "FCFS",
    "INTERCEPT_POLICIES",
    "POLICIES",
    "DecodeRun",
    "EngineRequest",
    "InterceptPolicy",
    "IterationPlan",
    "PauseMode",
    "PriorityPolicy",
    "QueuePolicy",
    "RequestStatus",
    "RequestTimeline",
    "ScheduledChunk",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "decode_run_limit",
    "make_intercept_policy",
    "make_policy",
    "register_intercept_policy",
    "register_queue_policy",
]
