"""Job-level discrete-event simulation: whole jobs, not tokens, share a cluster's resources.

Two simulators share one event queue (:mod:`core.jobsim.events`), one scheduler interface
(:class:`JobScheduler`: ``schedule(view) -> decision``, checked before it is applied), per-job
:class:`JobRecord` s and the summary metrics of :mod:`core.jobsim.records`:

- :func:`simulate_budget`: event-driven; privacy blocks with non-replenishable budgets (basic
  composition or Renyi DP) and pipelines with all-or-nothing demands (DPF, OSDI'21);
- :func:`simulate_rounds`: round-based; GPU jobs with per-type, per-epoch speeds that change
  with the batch size, gang-scheduled each round (Gavel, Shockwave NSDI'23).

Both are deterministic: the same inputs give the same records. Workload generators take the
seed. See docs/core/jobsim.md.
"""

from core.jobsim.budget import (
    EPS_BUDGET,
    RDP_ORDERS,
    BudgetExceeded,
    PrivacyBlock,
    gaussian_rdp_demand,
    rdp_capacity,
)
from core.jobsim.budget_sim import (
    BlockArrival,
    BudgetRun,
    BudgetScheduler,
    BudgetView,
    Pipeline,
    simulate_budget,
)
from core.jobsim.events import Event, EventQueue
from core.jobsim.records import (
    FINISHED,
    GRANTED,
    PENDING,
    TIMED_OUT,
    JobRecord,
    ftfs,
    jcts,
    makespan,
    summarize_gpu_jobs,
    summarize_pipelines,
)
from core.jobsim.rounds import (
    GpuJob,
    JobState,
    RoundRun,
    RoundScheduler,
    RoundView,
    simulate_rounds,
)
from core.jobsim.scheduler import InvalidDecision, JobScheduler
from core.jobsim.work import EpochWork

__all__ = [
    "EPS_BUDGET",
    "FINISHED",
    "GRANTED",
    "PENDING",
    "RDP_ORDERS",
    "TIMED_OUT",
    "BlockArrival",
    "BudgetExceeded",
    "BudgetRun",
    "BudgetScheduler",
    "BudgetView",
    "EpochWork",
    "Event",
    "EventQueue",
    "GpuJob",
    "InvalidDecision",
    "JobRecord",
    "JobScheduler",
    "JobState",
    "Pipeline",
    "PrivacyBlock",
    "RoundRun",
    "RoundScheduler",
    "RoundView",
    "ftfs",
    "gaussian_rdp_demand",
    "jcts",
    "makespan",
    "rdp_capacity",
    "simulate_budget",
    "simulate_rounds",
    "summarize_gpu_jobs",
    "summarize_pipelines",
]
