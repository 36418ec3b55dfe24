"""Arrival processes, trace replay with time scaling, and assigning arrivals to a workload.

A process turns ``n`` and a seed into ``n`` non-decreasing arrival times in seconds. Seeds are
an ``int`` or a ``numpy.random.Generator``; the same seed gives the same times.

- :class:`PoissonProcess` (exponential gaps, CV 1) and :class:`GammaProcess` (Gamma gaps with a
  given mean rate and coefficient of variation: ``cv=1`` is Poisson, ``cv>1`` is burstier,
  ``cv<1`` more regular), the two processes serving papers sweep;
- :class:`TraceReplay`: the arrival times of a real trace, sped up or rescaled to a target
  mean rate (e.g. Azure arrivals for LooGLE questions);
- :func:`assign_arrivals`: put a process's times on a workload, per request or per session
  (later turns follow their session's start by the turns' think times);
- :func:`scale_arrivals`: replay a workload's own arrivals faster or at a target rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Literal, Protocol

import numpy as np

from core.workload.schema import Request, Workload

Seed = int | np.random.Generator


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


class ArrivalProcess(Protocol):
    """Anything that yields ``n`` non-decreasing arrival times (seconds) from a seed."""

    def times(self, n: int, seed: Seed = 0) -> np.ndarray: ...


def _check_rate(rate: float, start: float) -> None:
    if not rate > 0:
        raise ValueError(f"arrival rate must be > 0, got {rate}")
    if not start >= 0:
        raise ValueError(f"arrival start must be >= 0, got {start}")


class _Renewal:
    """Times are ``start`` + cumulative sums of i.i.d. gaps (the first arrival is one gap in)."""

    start: float

    def gaps(self, n: int, seed: Seed = 0) -> np.ndarray:
        raise NotImplementedError

    def times(self, n: int, seed: Seed = 0) -> np.ndarray:
        """``n`` non-decreasing arrival times in seconds."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return self.start + np.cumsum(self.gaps(n, seed))


@dataclass(frozen=True)
class PoissonProcess(_Renewal):
    """Poisson arrivals at ``rate`` per second: exponential gaps of mean ``1/rate`` (CV 1)."""

    rate: float
    start: float = 0.0

    def __post_init__(self) -> None:
        _check_rate(self.rate, self.start)

    def gaps(self, n: int, seed: Seed = 0) -> np.ndarray:
        return _rng(seed).exponential(1.0 / self.rate, size=n)


@dataclass(frozen=True)
class GammaProcess(_Renewal):
    """Renewal process with Gamma gaps: mean gap ``1/rate``, coefficient of variation ``cv``.

    Gap ~ Gamma(shape = 1/cv^2, scale = cv^2/rate): ``cv=1`` is Poisson, ``cv>1`` burstier.
    """

    rate: float
    cv: float = 1.0
    start: float = 0.0

    def __post_init__(self) -> None:
        _check_rate(self.rate, self.start)
        if not self.cv > 0:
            raise ValueError(f"arrival cv must be > 0, got {self.cv}")

    def gaps(self, n: int, seed: Seed = 0) -> np.ndarray:
        shape = 1.0 / self.cv**2
        return _rng(seed).gamma(shape, 1.0 / (shape * self.rate), size=n)


@dataclass(frozen=True)
class TraceReplay:
    """The first ``n`` arrival times of a recorded trace, shifted to start at 0 and rescaled.

    Give at most one of ``speedup`` (divide all gaps by it) and ``rate`` (rescale so the mean
    rate over the replayed arrivals, ``(n - 1) / (last - first)``, equals ``rate``). The seed
    is ignored: a replay is deterministic. Asking for more arrivals than recorded is an error.
    """

    recorded: tuple[float, ...]
    speedup: float | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.speedup is not None and self.rate is not None:
            raise ValueError("give TraceReplay a speedup or a rate, not both")
        if self.speedup is not None and not self.speedup > 0:
            raise ValueError(f"speedup must be > 0, got {self.speedup}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if any(b < a for a, b in pairwise(self.recorded)):
            raise ValueError("recorded arrival times must not decrease")

    @classmethod
    def from_workload(
        cls, workload: Workload, *, speedup: float | None = None, rate: float | None = None
    ) -> TraceReplay:
        """Replay ``workload``'s arrival times (e.g. a loaded Azure or Mooncake trace)."""
        return cls(tuple(r.arrival_time for r in workload), speedup=speedup, rate=rate)

    def times(self, n: int, seed: Seed = 0) -> np.ndarray:
        if n > len(self.recorded):
            raise ValueError(f"trace replay has {len(self.recorded)} arrivals, {n} requested")
        t = np.asarray(self.recorded[:n], dtype=float)
        if n == 0:
            return t
        t = t - t[0]
        if self.speedup is not None:
            t = t / self.speedup
        elif self.rate is not None and n > 1:
            if t[-1] <= 0:
                raise ValueError("cannot rescale a trace whose arrivals are all simultaneous")
            t = t * ((n - 1) / self.rate / t[-1])
        return t


def poisson_arrivals(n: int, rate: float, seed: Seed = 0) -> np.ndarray:
    """``n`` Poisson arrival times at ``rate`` per second."""
    return PoissonProcess(rate).times(n, seed)


def gamma_arrivals(n: int, rate: float, cv: float, seed: Seed = 0) -> np.ndarray:
    """``n`` arrival times with Gamma gaps of mean ``1/rate`` and coefficient of variation ``cv``."""
    return GammaProcess(rate, cv).times(n, seed)


def scale_arrivals(
    workload: Workload, *, speedup: float | None = None, rate: float | None = None
) -> Workload:
    """``workload`` with its own arrivals replayed ``speedup`` times faster, or at mean ``rate``.

    Arrivals are scaled around the first arrival; exactly one of the two must be given.
    """
    if (speedup is None) == (rate is None):
        raise ValueError("give exactly one of speedup and rate")
    if speedup is not None:
        if not speedup > 0:
            raise ValueError(f"speedup must be > 0, got {speedup}")
        factor = 1.0 / speedup
    else:
        assert rate is not None
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if len(workload) < 2 or workload.duration <= 0:
            raise ValueError("cannot rescale a workload with fewer than two distinct arrival times")
        factor = (len(workload) - 1) / rate / workload.duration
    out = workload.scale_time(factor)
    out.params = {**workload.params, "time_scale": factor}
    return out


def assign_arrivals(
    workload: Workload,
    process: ArrivalProcess | Sequence[float] | np.ndarray,
    *,
    by: Literal["request", "session"] = "request",
    seed: Seed = 0,
    shuffle: bool = True,
) -> Workload:
    """A copy of ``workload`` with arrival times drawn from ``process`` (or given explicitly).

    ``by="request"``: every request gets its own arrival (independent questions, e.g. LooGLE
    or single-turn traces). Requests take the sorted times in a seeded random order when
    ``shuffle`` (else in their current order); within a session the earlier turn always gets
    the earlier time, so turn order is preserved.

    ``by="session"``: each session (requests without a session are their own) gets one start
    time, in a seeded random order when ``shuffle``; turn 0 arrives at the start and turn k at
    turn k-1's arrival + turn k's ``think_time_s``. That ignores service time, so it is the
    open-loop lower bound; a closed-loop driver sends turn k ``think_time_s`` after turn k-1
    finishes instead.

    Explicit times must number as many as requests (``by="request"``) or sessions.
    """
    if by not in ("request", "session"):
        raise ValueError(f"by must be 'request' or 'session', got {by!r}")
    rng = _rng(seed)
    sessions = list(workload.sessions().values())
    n = len(workload) if by == "request" else len(sessions)
    if hasattr(process, "times"):
        times = np.asarray(process.times(n, rng), dtype=float)
        label = repr(process)
    else:
        times = np.asarray(process, dtype=float)
        label = "explicit"
        if len(times) != n:
            raise ValueError(f"{len(times)} arrival times for {n} {by}s")
    times = np.sort(times)
    if n and (not np.all(np.isfinite(times)) or times[0] < 0):
        raise ValueError("arrival times must be finite and >= 0")
    order = rng.permutation(n) if shuffle else np.arange(n)

    new: list[Request] = []
    if by == "request":
        slot_of = np.empty(n, dtype=np.int64)
        slot_of[order] = np.arange(n)  # request index (current order) -> its time slot
        index = {id(r): i for i, r in enumerate(workload.requests)}
        for turns in sessions:
            slots = sorted(int(slot_of[index[id(r)]]) for r in turns)
            new += [
                replace(r, arrival_time=float(times[s])) for r, s in zip(turns, slots, strict=True)
            ]
    else:
        for slot, si in enumerate(order):
            t = float(times[slot])
            for k, r in enumerate(sessions[int(si)]):
                if k:
                    t += r.think_time_s
                new.append(replace(r, arrival_time=t))
    return Workload(
        name=workload.name,
        requests=new,
        sources=list(workload.sources),
        params={
            **workload.params,
            "arrivals": label,
            "arrivals_by": by,
            "arrival_seed": _seed_label(seed),
        },
    )


def _seed_label(seed: Seed) -> int | str:
    return seed if isinstance(seed, int) else "generator"
