"""Round-based simulation of GPU cluster scheduling (the Gavel/Shockwave model).

Time is cut into rounds of ``round_s`` seconds starting at 0. At the start of each round with
jobs in the system, the scheduler gets a :class:`RoundView` and returns ``{job_id: gpu_type}``;
each chosen job runs on ``job.gpus`` GPUs of that type for the whole round, or until its work
is done (it finishes at that exact instant; its GPUs stay idle for the rest of the round, as in
Gavel). A job that arrives during a round waits for the next. A decision that uses more GPUs
of a type than the cluster has, or names an unknown job or type, raises
:class:`InvalidDecision`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from core.jobsim.events import EventQueue
from core.jobsim.records import FINISHED, JobRecord, summarize_gpu_jobs
from core.jobsim.scheduler import InvalidDecision, JobScheduler
from core.jobsim.work import EpochWork


@dataclass(frozen=True)
class GpuJob:
    """A training job: arrives at ``arrival``, runs gang-scheduled on ``gpus`` GPUs of one
    type, and has ``work`` to do. ``label`` is free text (the model and batch size, say);
    ``info`` carries what a policy may know up front (the trace's fields)."""

    job_id: int
    arrival: float
    gpus: int
    work: EpochWork
    label: str = ""
    info: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise ValueError(f"job {self.job_id}: needs at least one GPU, got {self.gpus}")
        if self.arrival < 0 or not math.isfinite(self.arrival):
            raise ValueError(f"job {self.job_id}: bad arrival time {self.arrival}")


@dataclass
class JobState:
    """A job in the system as the scheduler sees it: the job, its progress in epochs, its
    record so far, and ``epochs_observed`` (the per-type seconds of the epochs it has run,
    what an online scheduler can have measured)."""

    job: GpuJob
    progress: float
    record: JobRecord
    last_type: str | None = None

    @property
    def job_id(self) -> int:
        return self.job.job_id

    @property
    def epoch(self) -> int:
        return self.job.work.epoch_index(self.progress)

    @property
    def batch_size(self) -> int:
        return self.job.work.batch_size_at(self.progress)

    def current_epoch_seconds(self, gpu_type: str) -> float:
        """Seconds per epoch at the current batch size on ``gpu_type`` (the throughput a
        scheduler measures this round)."""
        w = self.job.work
        return w.epoch_seconds[gpu_type][w.epoch_index(self.progress)]

    def remaining_epochs(self) -> float:
        return self.job.work.epochs - self.progress


@dataclass
class RoundView:
    """What a GPU scheduler sees at the start of a round: the clock, the round length, the
    cluster (GPUs per type) and the jobs in the system, in arrival order. Read-only."""

    now: float
    round_index: int
    round_s: float
    cluster: Mapping[str, int]
    jobs: Sequence[JobState]

    @property
    def total_gpus(self) -> int:
        return sum(self.cluster.values())


RoundScheduler = JobScheduler[RoundView, Mapping[int, str]]


@dataclass
class RoundRun:
    """The outcome: one record per job (in arrival order), the cluster, rounds simulated and
    the allocation of every round that had jobs (by round index) when asked for."""

    records: list[JobRecord]
    cluster: dict[str, int]
    rounds: int
    allocations: dict[int, dict[int, str]] = field(default_factory=dict)

    @property
    def total_gpus(self) -> int:
        return sum(self.cluster.values())

    def summary(self) -> dict[str, float]:
        return summarize_gpu_jobs(self.records, self.total_gpus)


def simulate_rounds(
    scheduler: RoundScheduler,
    jobs: Sequence[GpuJob],
    cluster: Mapping[str, int],
    *,
    round_s: float = 120.0,
    max_rounds: int = 1_000_000,
    keep_allocations: bool = False,
) -> RoundRun:
    """Run ``jobs`` on ``cluster`` under ``scheduler`` until all finish (or ``max_rounds``)."""
    if round_s <= 0:
        raise ValueError(f"round_s must be > 0, got {round_s}")
    cluster = dict(cluster)
    for job in jobs:
        if missing := set(cluster) - set(job.work.gpu_types):
            raise ValueError(f"job {job.job_id}: no epoch times for GPU types {sorted(missing)}")
        if job.gpus > max(cluster.values(), default=0):
            raise ValueError(f"job {job.job_id}: needs {job.gpus} GPUs, no type has that many")
    q = EventQueue()
    for job in jobs:
        q.push(job.arrival, "arrival", job)
    active: dict[int, JobState] = {}
    records: dict[int, JobRecord] = {}
    allocations: dict[int, dict[int, str]] = {}
    k = 0
    while (q or active) and k < max_rounds:
        now = k * round_s
        while q and q.peek_time() <= now:
            job = q.pop().payload
            rec = JobRecord(job.job_id, job.arrival, job.label, gpus=job.gpus)
            rec.exclusive_s = min(job.work.total_seconds(t) for t in cluster)
            records[job.job_id] = rec
            active[job.job_id] = JobState(job, 0.0, rec)
        if not active:  # idle cluster: jump to the round in which the next job is seen
            k = max(k + 1, math.ceil(q.peek_time() / round_s))
            continue
        states = list(active.values())
        for s in states:
            s.record.contention_sum += len(states)
            s.record.contention_n += 1
        decision = dict(scheduler.schedule(RoundView(now, k, round_s, cluster, states)))
        _check(decision, active, cluster, scheduler.name, k)
        for jid, gpu_type in decision.items():
            s = active[jid]
            s.progress, used = s.job.work.advance(s.progress, gpu_type, round_s)
            s.last_type = gpu_type
            rec = s.record
            rec.start = now if rec.start is None else rec.start
            rec.rounds_run += 1
            rec.gpu_seconds += used * s.job.gpus
            if s.progress >= s.job.work.epochs:
                rec.finish = now + used
                rec.status = FINISHED
                del active[jid]
        if keep_allocations:
            allocations[k] = decision
        k += 1
    ordered = sorted(records.values(), key=lambda r: (r.arrival, r.job_id))
    return RoundRun(ordered, cluster, k, allocations)


def _check(
    decision: Mapping[int, str],
    active: Mapping[int, JobState],
    cluster: Mapping[str, int],
    name: str,
    k: int,
) -> None:
    used: dict[str, int] = dict.fromkeys(cluster, 0)
    for jid, gpu_type in decision.items():
        if jid not in active:
            raise InvalidDecision(f"{name}: round {k}: job {jid} is not in the system")
        if gpu_type not in cluster:
            raise InvalidDecision(f"{name}: round {k}: unknown GPU type {gpu_type!r}")
        used[gpu_type] += active[jid].job.gpus
    over = {t: n for t, n in used.items() if n > cluster[t]}
    if over:
        raise InvalidDecision(
            f"{name}: round {k}: GPUs oversubscribed {over} (cluster {dict(cluster)})"
        )
