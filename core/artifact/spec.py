"""What an artifact declares: its paper, its experiments and its claims.

An artifact is data, not a script: the harness (:mod:`core.artifact.runner`) turns the
declaration into a resumable sweep, a metrics table, figures, a claims checklist and provenance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


class Scale(str, Enum):
    """How big a run is: ``smoke`` < 1 min and ``default`` < 10 min on a 2-core CPU; ``full`` is
    the paper's own scale (its models, GPUs and sweeps)."""

    SMOKE = "smoke"
    DEFAULT = "default"
    FULL = "full"


@dataclass(frozen=True)
class Paper:
    """The paper an artifact reproduces."""

    title: str
    venue: str
    authors: str = ""
    url: str = ""
    code: str = ""  # the authors' own artifact repository, if any


@dataclass(frozen=True)
class RunContext:
    """What a run was asked for; experiments build their sweep points from it."""

    scale: Scale
    seed: int
    out: Path
    trace: Path | None = None
    jobs: int = 1


Row = dict[str, Any]


class NotApplicable(Exception):  # noqa: N818 - reads as what it says: raise NotApplicable(reason)
    """Raised by a claim's ``measure`` when this run cannot measure the claim (the scale sweeps
    too few points, the ``--trace`` lacks what the claim compares, ...). The claim is reported
    as not applicable with the message as its reason, counted apart from passes and failures."""


PointFn = Callable[[dict[str, Any]], "Row | Sequence[Row]"]
PlotFn = Callable[["pd.DataFrame", RunContext], "Mapping[str, Figure]"]


@dataclass(frozen=True)
class Experiment:
    """A sweep over configurations, and the figures drawn from its rows.

    Contract:
    - ``points(ctx)`` returns the configurations for the run's scale: JSON-serializable dicts
      with scalar values, distinct from one another. The harness adds ``seed`` (the run's seed)
      when a point has none.
    - ``run(config)`` is a module-level function (it may run in another process or on a Ray
      worker) that computes one point and returns a row or a list of rows of metrics. It must be
      deterministic given the config (the seed is in it). Metric names must not repeat config
      keys.
    - ``plot(frame, ctx)`` receives this experiment's rows (config columns + metric columns) and
      returns ``{name: figure}``; each is saved as ``fig-<name>.png`` and ``.pdf``.
    - ``exclusive``: its points measure wall-clock time with all the machine's cores (real
      engine replicas, say); they run after every other point, one at a time, in the main
      process.
    """

    name: str
    description: str
    points: Callable[[RunContext], Sequence[dict[str, Any]]]
    run: PointFn
    plot: PlotFn | None = None
    exclusive: bool = False


class Results:
    """The metrics of one run, by experiment, as handed to claims."""

    def __init__(self, frames: Mapping[str, pd.DataFrame], ctx: RunContext) -> None:
        self._frames = dict(frames)
        self.ctx = ctx

    def __getitem__(self, experiment: str) -> pd.DataFrame:
        if experiment not in self._frames:
            raise KeyError(f"experiment {experiment!r} has no results in this run")
        return self._frames[experiment]

    def __contains__(self, experiment: str) -> bool:
        return experiment in self._frames

    @property
    def experiments(self) -> list[str]:
        return list(self._frames)


_OPS = (">=", "<=", "~=", "in")


@dataclass(frozen=True)
class Expect:
    """What a measured number must satisfy, with a tolerance in the measure's own unit.

    ``>=``: measured >= value - tolerance; ``<=``: measured <= value + tolerance;
    ``~=``: |measured - value| <= tolerance; ``in``: value - tolerance <= measured <= upper +
    tolerance. A NaN measurement never passes.
    """

    op: str
    value: float
    upper: float | None = None
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"Expect op must be one of {_OPS}, got {self.op!r}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if (self.op == "in") != (self.upper is not None):
            raise ValueError("Expect 'in' needs an upper bound, and only 'in' takes one")

    def passes(self, measured: float) -> bool:
        if measured is None or not math.isfinite(measured):
            return False
        t = self.tolerance
        if self.op == ">=":
            return measured >= self.value - t
        if self.op == "<=":
            return measured <= self.value + t
        if self.op == "~=":
            return abs(measured - self.value) <= t
        assert self.upper is not None
        return self.value - t <= measured <= self.upper + t

    def describe(self, unit: str = "") -> str:
        u = f" {unit}" if unit else ""
        tol = f" (tolerance {_fmt(self.tolerance)})" if self.tolerance else ""
        if self.op == "in":
            return f"in [{_fmt(self.value)}, {_fmt(self.upper)}]{u}{tol}"
        return f"{self.op} {_fmt(self.value)}{u}{tol}"


def at_least(value: float, tolerance: float = 0.0) -> Expect:
    return Expect(">=", value, tolerance=tolerance)


def at_most(value: float, tolerance: float = 0.0) -> Expect:
    return Expect("<=", value, tolerance=tolerance)


def close_to(value: float, tolerance: float) -> Expect:
    return Expect("~=", value, tolerance=tolerance)


def between(lower: float, upper: float, tolerance: float = 0.0) -> Expect:
    return Expect("in", lower, upper=upper, tolerance=tolerance)


def _fmt(x: float | None) -> str:
    if x is None:
        return "?"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.4g}"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and how this artifact checks it.

    - ``claim``: the paper's words; ``paper_value``: its number as the paper reports it.
    - ``measure(results)``: the measured number, computed from the run's metrics only.
    - ``expect``: what this scale must show, with its tolerance; ``expected`` overrides the
      generated description when words say it better.
    - ``experiments``: the experiments the measure reads; when one of them did not run (a
      filtered run), the claim is reported as not checked instead of failing.
    - ``note``: an honest word on how this check differs from the paper's setting; a callable
      ``note(results)`` when the words depend on the run's inputs (the trace, the profile).
    - ``measure`` raises :class:`NotApplicable` (with the reason) when the run cannot measure the
      claim at all; that is not a failure.
    """

    id: str
    claim: str
    paper_value: str
    measure: Callable[[Results], float]
    expect: Expect
    experiments: tuple[str, ...]
    expected: str = ""
    unit: str = ""
    note: str | Callable[[Results], str] = ""

    @property
    def expected_text(self) -> str:
        return self.expected or self.expect.describe(self.unit)

    def note_for(self, results: Results) -> str:
        """The note as it reads for this run."""
        return self.note(results) if callable(self.note) else self.note


@dataclass(frozen=True)
class TraceOption:
    """How an artifact uses ``--trace PATH``: what it accepts and how to check a file early.

    ``check(path)`` raises ValueError or FileNotFoundError with a message naming the file
    (and line) when the trace cannot be used.
    """

    help: str
    check: Callable[[Path], None] | None = None


@dataclass(frozen=True)
class Artifact:
    """A paper reproduction: the paper, its experiments, its claims.

    ``version`` is part of every point's hash: bump it when a runner's results change meaning,
    so stored points are recomputed. ``trace`` is None when the artifact takes no ``--trace``.
    """

    name: str
    paper: Paper
    summary: str
    experiments: Sequence[Experiment]
    claims: Sequence[Claim]
    version: str = "1"
    trace: TraceOption | None = None
    default_seed: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise ValueError(f"artifact {self.name}: experiment names repeat: {names}")
        ids = [c.id for c in self.claims]
        if len(set(ids)) != len(ids):
            raise ValueError(f"artifact {self.name}: claim ids repeat: {ids}")
        for c in self.claims:
            unknown = set(c.experiments) - set(names)
            if unknown:
                raise ValueError(
                    f"artifact {self.name}: claim {c.id} reads unknown experiments {unknown}"
                )

    def experiment(self, name: str) -> Experiment:
        for e in self.experiments:
            if e.name == name:
                return e
        raise KeyError(name)
