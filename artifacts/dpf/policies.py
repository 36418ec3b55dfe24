"""The privacy-budget schedulers of DPF (OSDI'21): FCFS, round-robin and Dominant Private Block
Fairness, each with budget unlocked by arrivals (-N) or by time (-T).

All implement ``schedule(view) -> [pipeline ids]`` of :mod:`core.jobsim`. Unlocking is policy
state: a block's unlocked fraction ``u`` limits what the policy may hand out (``u * capacity``
at every order); the simulator only checks the full capacity.

- FCFS: everything is unlocked on arrival; a pipeline is granted when it arrives if its demand
  fits, else never (the budget does not come back).
- DPF: waiting pipelines in ascending dominant share (largest share over their blocks, ties by
  the next largest, then arrival); grant each that fits the unlocked budget, skip the others.
- RR (round-robin): the unlocked, unclaimed budget of a block is split in equal shares among
  the waiting pipelines that demand it (water-filling up to each one's demand); a pipeline is
  granted once its shares cover its demand on every block. Shares of a pipeline that times out
  are lost, as in the authors' simulator (it drops the pipeline's accumulating containers).
  Basic composition only (as there).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence

from core.jobsim import EPS_BUDGET, BudgetView, Pipeline, PrivacyBlock

UNLOCK_BY = ("N", "T")


class _Unlocking:
    """Tracks each block's unlocked fraction: 1/N more per arriving pipeline that demands the
    block (``by="N"``), or ``(now - created) / lifetime`` (``by="T"``); None: all at once."""

    def __init__(self, by: str | None, n: float | None = None, lifetime: float | None = None):
        if by not in (None, *UNLOCK_BY):
            raise ValueError(f"unlock by must be N, T or None, got {by!r}")
        if by == "N" and not (n and n > 0):
            raise ValueError(f"unlocking by arrivals needs N > 0, got {n}")
        if by == "T" and not (lifetime and lifetime > 0):
            raise ValueError(f"unlocking by time needs a lifetime > 0, got {lifetime}")
        self.by, self.n, self.lifetime = by, n, lifetime
        self.fraction: dict[int, float] = {}

    def update(self, view: BudgetView) -> None:
        if view.kind == "block" and isinstance(view.subject, PrivacyBlock):
            self.fraction[view.subject.block_id] = 1.0 if self.by is None else 0.0
        elif self.by == "N" and view.kind == "pipeline":
            assert isinstance(view.subject, Pipeline) and self.n
            for j in view.subject.blocks:
                self.fraction[j] = min(1.0, self.fraction[j] + 1.0 / self.n)
        if self.by == "T":
            assert self.lifetime
            for j, b in view.blocks.items():
                self.fraction[j] = min(1.0, (view.now - b.created) / self.lifetime)

    def limit(self, block: PrivacyBlock) -> tuple[float, ...]:
        u = self.fraction.get(block.block_id, 0.0)
        return tuple(u * c for c in block.capacity)


def _fits(p: Pipeline, spent: dict[int, list[float]], view: BudgetView, unl: _Unlocking) -> bool:
    for j in p.blocks:
        b = view.blocks[j]
        lim = unl.limit(b)
        s = spent.get(j, b.spent)
        if not any(
            c > 0 and sj + d <= lm + EPS_BUDGET
            for c, sj, d, lm in zip(b.capacity, s, p.demand, lim, strict=True)
        ):
            return False
    return True


def _take(p: Pipeline, spent: dict[int, list[float]], view: BudgetView) -> None:
    for j in p.blocks:
        s = spent.get(j, view.blocks[j].spent)
        spent[j] = [a + d for a, d in zip(s, p.demand, strict=True)]


class FCFS:
    """First come, first served: grant on arrival if the demand fits, else never."""

    name = "FCFS"

    def __init__(self) -> None:
        self._unlocked = _Unlocking(None)

    def schedule(self, view: BudgetView) -> list[int]:
        self._unlocked.update(view)
        p = view.subject
        if view.kind == "pipeline" and isinstance(p, Pipeline):
            if _fits(p, {}, view, self._unlocked):
                return [p.pid]
        return []


def dominant_share_key(p: Pipeline, blocks: dict[int, PrivacyBlock]) -> tuple[float, ...]:
    """The pipeline's shares of its blocks, largest first: DPF serves the smallest key first."""
    return tuple(sorted((blocks[j].share(p.demand) for j in p.blocks), reverse=True))


class DPF:
    """Dominant Private Block Fairness. ``by="N"`` unlocks 1/N of a block per arriving pipeline
    that demands it; ``by="T"`` unlocks it linearly over ``lifetime`` seconds.

    Pipelines with the same blocks and demand have the same key and fit or fail together, so
    they are kept in one FIFO group; a pass walks the groups in key order (then arrival) and
    drops a group at its first failure (the budget only shrinks within a pass)."""

    def __init__(self, by: str, n: float | None = None, lifetime: float | None = None) -> None:
        self._unlocked = _Unlocking(by, n, lifetime)
        self.name = f"DPF-{by}"
        self._groups: dict[tuple[tuple[int, ...], tuple[float, ...]], deque[Pipeline]] = {}
        self._keys: dict[tuple[tuple[int, ...], tuple[float, ...]], tuple[float, ...]] = {}

    def schedule(self, view: BudgetView) -> list[int]:
        self._unlocked.update(view)
        if view.kind == "timeout":
            return []  # nothing was freed
        p = view.subject
        if view.kind == "pipeline" and isinstance(p, Pipeline):
            sig = (p.blocks, p.demand)
            if sig not in self._groups:
                self._groups[sig] = deque()
                self._keys[sig] = dominant_share_key(p, dict(view.blocks))
            self._groups[sig].append(p)
        heap = []
        for sig, q in self._groups.items():
            while q and q[0].pid not in view.waiting:  # granted or timed out
                q.popleft()
            if q:
                heap.append((self._keys[sig], q[0].arrival, q[0].pid, sig))
        heapq.heapify(heap)
        spent: dict[int, list[float]] = {}
        granted: list[int] = []
        while heap:
            key, _, _, sig = heapq.heappop(heap)
            q = self._groups[sig]
            head = q[0]
            if not _fits(head, spent, view, self._unlocked):
                continue
            _take(head, spent, view)
            granted.append(head.pid)
            q.popleft()
            while q and q[0].pid not in view.waiting:
                q.popleft()
            if q:
                heapq.heappush(heap, (key, q[0].arrival, q[0].pid, sig))
        self._groups = {s: q for s, q in self._groups.items() if q}
        return granted


class RoundRobin:
    """Round-robin: unlocked budget in equal shares to the waiting pipelines of each block;
    granted when the shares cover the whole demand on every block (basic composition).

    Per block it keeps the waiting demanders and the budget they hold, so an event refills
    only the blocks it touched (all of them on a timer tick when unlocking by time)."""

    def __init__(self, by: str, n: float | None = None, lifetime: float | None = None) -> None:
        self._unlocked = _Unlocking(by, n, lifetime)
        self.name = f"RR-{by}"
        self._held: dict[int, dict[int, float]] = {}  # pid -> block -> share held
        self._demanders: dict[int, dict[int, Pipeline]] = {}  # block -> pid -> pipeline
        self._claimed: dict[int, float] = {}  # block -> shares held, or lost to timeouts

    def _drop(self, p: Pipeline, *, lost: bool = False) -> None:
        for j, h in self._held.pop(p.pid).items():
            if not lost:
                self._claimed[j] -= h
            del self._demanders[j][p.pid]

    def schedule(self, view: BudgetView) -> list[int]:
        self._unlocked.update(view)
        p = view.subject
        touched: list[int] = []
        if view.kind == "block" and isinstance(p, PrivacyBlock):
            self._demanders[p.block_id], self._claimed[p.block_id] = {}, 0.0
        elif view.kind == "pipeline" and isinstance(p, Pipeline):
            if len(p.demand) != 1:
                raise ValueError("round-robin supports basic composition only")
            self._held[p.pid] = dict.fromkeys(p.blocks, 0.0)
            for j in p.blocks:
                self._demanders[j][p.pid] = p
            touched = list(p.blocks)
        elif view.kind == "timeout" and isinstance(p, Pipeline) and p.pid in self._held:
            self._drop(p, lost=True)
        if self._unlocked.by == "T" and view.kind == "tick":
            touched = [j for j, d in self._demanders.items() if d]
        candidates: dict[int, Pipeline] = {}
        for j in touched:
            b, demanders = view.blocks[j], self._demanders[j]
            free = self._unlocked.limit(b)[0] - b.spent[0] - self._claimed[j]
            if free <= EPS_BUDGET or not demanders:
                continue
            pipes = list(demanders.values())
            needs = [q.demand[0] - self._held[q.pid][j] for q in pipes]
            for q, got in zip(pipes, water_fill(free, needs), strict=True):
                if got > 0:
                    self._held[q.pid][j] += got
                    self._claimed[j] += got
                    candidates[q.pid] = q
        granted = []
        for pid, q in candidates.items():
            if all(h >= q.demand[0] - EPS_BUDGET for h in self._held[pid].values()):
                granted.append(pid)
                self._drop(q)  # its shares are now spent by the simulator
        return granted


def water_fill(amount: float, needs: Sequence[float]) -> list[float]:
    """Split ``amount`` in equal shares among ``needs``, none getting more than it needs, the
    leftover of the small ones going to the others (max-min fair)."""
    out = [0.0] * len(needs)
    if amount <= EPS_BUDGET:
        return out
    order = sorted(range(len(needs)), key=lambda i: needs[i])
    left = amount
    for rank, i in enumerate(order):
        share = left / (len(order) - rank)
        give = min(max(needs[i], 0.0), share)
        out[i] = give
        left -= give
    return out


def make_policy(name: str, n: float | None = None, lifetime: float | None = None):
    """A policy by the names the figures use: FCFS, DPF-N, DPF-T, RR-N, RR-T."""
    if name == "FCFS":
        return FCFS()
    kind, _, by = name.partition("-")
    if kind == "DPF":
        return DPF(by, n, lifetime)
    if kind == "RR":
        return RoundRobin(by, n, lifetime)
    raise ValueError(f"unknown policy {name!r} (FCFS, DPF-N, DPF-T, RR-N, RR-T)")


POLICIES = ("FCFS", "DPF-N", "DPF-T", "RR-N", "RR-T")
