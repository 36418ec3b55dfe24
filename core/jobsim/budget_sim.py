"""Event-driven simulation of privacy-budget scheduling: data blocks arrive over time, ML
pipelines arrive with all-or-nothing demands on some blocks, a scheduler grants them.

Events, in this order at equal times: block arrivals, pipeline arrivals, timer ticks,
timeouts. After each, the scheduler is called with a :class:`BudgetView` and returns the ids
of waiting pipelines to grant, in order; the simulator grants each on all of its blocks at
once or raises :class:`InvalidDecision`. A pipeline still waiting ``timeout`` seconds after
its arrival is dropped. Granted pipelines leave at once (their run time does not matter for
the budget).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from core.jobsim.budget import BudgetExceeded, PrivacyBlock
from core.jobsim.events import EventQueue
from core.jobsim.records import GRANTED, TIMED_OUT, JobRecord, summarize_pipelines
from core.jobsim.scheduler import InvalidDecision, JobScheduler

BLOCK, PIPELINE, TICK, TIMEOUT = "block", "pipeline", "tick", "timeout"
_ORDER = {BLOCK: 0, PIPELINE: 1, TICK: 2, TIMEOUT: 3}


@dataclass(frozen=True)
class Pipeline:
    """An ML pipeline: it asks for ``demand`` (one entry per accounting order) on every block
    in ``blocks``, all or nothing, and gives up after ``timeout`` seconds."""

    pid: int
    arrival: float
    blocks: tuple[int, ...]
    demand: tuple[float, ...]
    timeout: float = math.inf
    label: str = ""


@dataclass(frozen=True)
class BlockArrival:
    """Block ``block_id`` appears at ``time`` with ``capacity`` (one entry per order)."""

    block_id: int
    time: float
    capacity: tuple[float, ...]


@dataclass
class BudgetView:
    """What a privacy scheduler sees: the clock, the event that woke it (``kind`` and the
    pipeline or block concerned), every block so far and the waiting pipelines in arrival
    order. Read-only by contract."""

    now: float
    kind: str
    subject: Pipeline | PrivacyBlock | None
    blocks: Mapping[int, PrivacyBlock]
    waiting: Mapping[int, Pipeline]


BudgetScheduler = JobScheduler[BudgetView, Sequence[int]]


@dataclass
class BudgetRun:
    """The outcome: one record per pipeline that arrived by the end (in the order given), the
    blocks as they ended, and the grants as (time, pipeline id) in order."""

    records: list[JobRecord]
    blocks: dict[int, PrivacyBlock]
    end: float
    grants: list[tuple[float, int]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return summarize_pipelines(self.records, [b.used_fraction() for b in self.blocks.values()])


def simulate_budget(
    scheduler: BudgetScheduler,
    blocks: Sequence[BlockArrival],
    pipelines: Sequence[Pipeline],
    *,
    until: float,
    tick_s: float | None = None,
) -> BudgetRun:
    """Run ``pipelines`` against ``blocks`` under ``scheduler`` until time ``until``.

    ``tick_s`` adds a timer event every ``tick_s`` seconds (policies whose budget unlocks with
    time need them). A pipeline that names a block not yet arrived raises ValueError.
    """
    q = EventQueue()
    for b in blocks:
        if b.time <= until:
            q.push(b.time, BLOCK, b, _ORDER[BLOCK])
    for p in pipelines:
        if p.arrival <= until:
            q.push(p.arrival, PIPELINE, p, _ORDER[PIPELINE])
    if tick_s is not None:
        if tick_s <= 0:
            raise ValueError(f"tick_s must be > 0, got {tick_s}")
        for k in range(1, int(until / tick_s) + 1):
            q.push(k * tick_s, TICK, None, _ORDER[TICK])

    live: dict[int, PrivacyBlock] = {}
    waiting: dict[int, Pipeline] = {}
    # pipelines arriving after the end never enter the system, nor the records
    records = {p.pid: JobRecord(p.pid, p.arrival, p.label) for p in pipelines if p.arrival <= until}
    grants: list[tuple[float, int]] = []
    while q and q.peek_time() <= until:
        ev = q.pop()
        subject: Pipeline | PrivacyBlock | None = None
        if ev.kind == BLOCK:
            b = ev.payload
            if b.block_id in live:
                raise ValueError(f"block {b.block_id} arrives twice")
            subject = live[b.block_id] = PrivacyBlock(b.block_id, b.time, tuple(b.capacity))
        elif ev.kind == PIPELINE:
            p = ev.payload
            missing = [j for j in p.blocks if j not in live]
            if missing:
                raise ValueError(
                    f"pipeline {p.pid} at t={p.arrival} asks for blocks {missing} "
                    "that have not arrived"
                )
            waiting[p.pid] = subject = p
            if math.isfinite(p.timeout):
                q.push(p.arrival + p.timeout, TIMEOUT, p.pid, _ORDER[TIMEOUT])
        elif ev.kind == TIMEOUT:
            gone = waiting.pop(ev.payload, None)
            if gone is None:
                continue  # granted before its timeout
            records[gone.pid].status = TIMED_OUT
            subject = gone
        view = BudgetView(q.now, ev.kind, subject, live, waiting)
        for pid in list(scheduler.schedule(view)):
            _grant(pid, waiting, live, q.now, scheduler)
            rec = records[pid]
            rec.start = rec.finish = q.now
            rec.status = GRANTED
            grants.append((q.now, pid))
    return BudgetRun(list(records.values()), live, until, grants)


def _grant(
    pid: int,
    waiting: dict[int, Pipeline],
    blocks: Mapping[int, PrivacyBlock],
    now: float,
    scheduler: BudgetScheduler,
) -> None:
    p = waiting.pop(pid, None)
    if p is None:
        raise InvalidDecision(f"{scheduler.name}: pipeline {pid} is not waiting at t={now}")
    short = [j for j in p.blocks if not blocks[j].fits(p.demand)]
    if short:
        raise InvalidDecision(
            f"{scheduler.name}: pipeline {pid} granted at t={now} but blocks {short} lack budget"
        )
    try:
        for j in p.blocks:
            blocks[j].spend(p.demand)
    except BudgetExceeded as exc:  # unreachable after the check above; keep the message
        raise InvalidDecision(str(exc)) from exc
