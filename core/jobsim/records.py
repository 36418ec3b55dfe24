"""Per-job records and the summary metrics cluster-scheduling papers report.

- makespan: last finish minus first arrival;
- JCT: finish minus arrival, for finished jobs;
- finish-time fairness rho (Themis, Shockwave): JCT over the time the job would take on its
  fair share of the cluster, ``T_exclusive / min(1, G / (N_avg * w))`` with ``G`` GPUs,
  ``N_avg`` the mean number of jobs in the system during the job's life and ``w`` its GPUs;
  rho <= 1 means the job did no worse than on its share;
- pipelines granted and budget used (privacy scheduling).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from core.metrics import Stats

GRANTED = "granted"
FINISHED = "finished"
TIMED_OUT = "timed_out"
PENDING = "pending"


@dataclass
class JobRecord:
    """What happened to one job. ``start`` is when it first got resources, ``finish`` when it
    completed (for a privacy pipeline both are its grant time); ``status`` is one of
    ``finished``, ``granted``, ``timed_out``, ``pending`` (still waiting when the run ended).
    ``exclusive_s`` (GPU jobs) is its run time alone on its requested GPUs; ``contention_sum``
    and ``contention_n`` accumulate the number of jobs in the system, one sample per round."""

    job_id: int
    arrival: float
    label: str = ""
    start: float | None = None
    finish: float | None = None
    status: str = PENDING
    gpus: int = 0
    exclusive_s: float = math.nan
    gpu_seconds: float = 0.0
    rounds_run: int = 0
    contention_sum: float = 0.0
    contention_n: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def jct(self) -> float | None:
        return None if self.finish is None else self.finish - self.arrival

    @property
    def mean_contention(self) -> float:
        return self.contention_sum / self.contention_n if self.contention_n else 1.0

    def fair_time(self, cluster_gpus: int) -> float:
        """Seconds the job would take on its fair share of ``cluster_gpus`` GPUs."""
        share = min(1.0, cluster_gpus / (self.mean_contention * max(self.gpus, 1)))
        return self.exclusive_s / share

    def ftf(self, cluster_gpus: int) -> float | None:
        """Finish-time fairness rho (None if unfinished)."""
        jct = self.jct
        return None if jct is None else jct / self.fair_time(cluster_gpus)


def makespan(records: Sequence[JobRecord]) -> float:
    """Last finish minus first arrival over finished jobs (NaN if none finished)."""
    done = [r for r in records if r.finish is not None]
    if not done:
        return math.nan
    return max(r.finish for r in done if r.finish is not None) - min(r.arrival for r in records)


def jcts(records: Iterable[JobRecord]) -> list[float]:
    return [j for r in records if (j := r.jct) is not None]


def ftfs(records: Iterable[JobRecord], cluster_gpus: int) -> list[float]:
    return [f for r in records if (f := r.ftf(cluster_gpus)) is not None]


def summarize_gpu_jobs(records: Sequence[JobRecord], cluster_gpus: int) -> dict[str, float]:
    """One flat row: jobs, finished, makespan, JCT mean/p50/p90/p99/max, rho mean/p50/p90/max,
    fraction of jobs with rho > 1, and GPU-seconds used."""
    jct = Stats.of(jcts(records))
    rho = Stats.of(ftfs(records, cluster_gpus))
    rhos = ftfs(records, cluster_gpus)
    return {
        "jobs": len(records),
        "finished": sum(r.status == FINISHED for r in records),
        "makespan_s": makespan(records),
        "jct_mean_s": jct.mean,
        "jct_p50_s": jct.p50,
        "jct_p90_s": jct.p90,
        "jct_p99_s": jct.p99,
        "jct_max_s": jct.max,
        "rho_mean": rho.mean,
        "rho_p50": rho.p50,
        "rho_p90": rho.p90,
        "rho_max": rho.max,
        "unfair_fraction": (sum(f > 1 for f in rhos) / len(rhos)) if rhos else math.nan,
        "gpu_seconds": sum(r.gpu_seconds for r in records),
    }


def summarize_pipelines(
    records: Sequence[JobRecord], budget_used: Sequence[float]
) -> dict[str, float]:
    """One flat row: pipelines, granted (in all and by label), timed out, still pending, the
    mean scheduling delay of granted ones, and the mean fraction of block budget spent."""
    row: dict[str, float] = {
        "pipelines": len(records),
        "granted": sum(r.status == GRANTED for r in records),
        "timed_out": sum(r.status == TIMED_OUT for r in records),
        "pending": sum(r.status == PENDING for r in records),
        "delay_mean_s": Stats.of(jcts(records)).mean,
        "budget_used": sum(budget_used) / len(budget_used) if budget_used else math.nan,
    }
    for label in sorted({r.label for r in records if r.label}):
        row[f"granted_{label}"] = sum(r.status == GRANTED and r.label == label for r in records)
    return row
