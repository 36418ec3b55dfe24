"""The artifact harness: the contract every paper reproduction in ``artifacts/`` follows.

An artifact module declares an :class:`Artifact` (its :class:`Paper`, :class:`Experiment` sweeps
and :class:`Claim` checks) and calls :func:`main` from its ``__main__``. The harness runs the
sweep on a local process pool or Ray, stores each finished point under its config hash (so runs
resume), and writes ``metrics.csv``, ``fig-*.png/pdf``, ``claims.json``, ``CHECKLIST.md`` and
``provenance.json``.
"""

from .plotting import (
    anchor_right,
    color_map,
    figure_style,
    item_legend,
    log_axis,
    marker_lines,
    save_figure,
    spread_bars,
    spread_panels,
)
from .runner import ArtifactInputError, RunOptions, RunSummary, SweepFailed, main, run_artifact
from .spec import (
    Artifact,
    Claim,
    Expect,
    Experiment,
    NotApplicable,
    Paper,
    Results,
    RunContext,
    Scale,
    TraceOption,
    at_least,
    at_most,
    between,
    close_to,
)
from .sweep import PointStore, config_hash

__all__ = [
    "Artifact",
    "ArtifactInputError",
    "Claim",
    "Expect",
    "Experiment",
    "NotApplicable",
    "Paper",
    "PointStore",
    "Results",
    "RunContext",
    "RunOptions",
    "RunSummary",
    "Scale",
    "SweepFailed",
    "TraceOption",
    "anchor_right",
    "at_least",
    "at_most",
    "between",
    "close_to",
    "color_map",
    "config_hash",
    "figure_style",
    "item_legend",
    "log_axis",
    "main",
    "marker_lines",
    "run_artifact",
    "save_figure",
    "spread_bars",
    "spread_panels",
]
