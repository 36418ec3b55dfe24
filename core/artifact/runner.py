"""The artifact command line and the run that turns a declaration into results.

``python -m artifacts.<name> [--scale ...] [--trace PATH] [--out DIR] [--jobs N] ...`` calls
:func:`main`; tests and scripts call :func:`run_artifact` directly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from core.data import REPO_ROOT, sha256_file

from .provenance import git_state, host_info, package_versions
from .report import evaluate_claim, render_checklist, summary_line, write_claims
from .spec import Artifact, Results, RunContext, Scale
from .sweep import (
    Point,
    PointStore,
    SweepOutcome,
    canonical_json,
    config_hash,
    make_executor,
    run_sweep,
)


class ArtifactInputError(ValueError):
    """Bad input to an artifact run (option, trace, configuration): reported as one line."""


@dataclass
class RunOptions:
    """Everything a run is asked for, as parsed from the command line."""

    scale: Scale = Scale.DEFAULT
    seed: int | None = None
    out: Path | None = None
    trace: Path | None = None
    jobs: int = 0  # 0: all cores
    executor: str = "local"
    ray_address: str | None = None
    experiments: tuple[str, ...] = ()
    fresh: bool = False
    plots: bool = True
    progress: bool = True


@dataclass
class RunSummary:
    """What a run wrote and how its claims came out."""

    out: Path
    claims: list[dict[str, Any]]
    outcome: SweepOutcome
    figures: list[str]

    @property
    def all_passed(self) -> bool:
        return all(c["passed"] is not False for c in self.claims)


class SweepFailed(RuntimeError):
    """Some points raised; the others are stored and a rerun resumes."""


def _default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_jobs(jobs: int | None) -> int:
    """``--jobs``: a positive count, or 0 (and None) for every core this process may use."""
    if jobs is None or jobs == 0:
        return _default_jobs()
    if jobs < 0:
        raise ArtifactInputError(
            f"--jobs must be a positive number of workers, or 0 for all cores, got {jobs}"
        )
    return jobs


def check_trace_path(trace: Path) -> Path:
    """The ``--trace`` file, or one clear error saying why it cannot be read."""
    if trace.is_dir():
        raise ArtifactInputError(f"--trace {trace}: is a directory; give the trace file inside it")
    if not trace.exists():
        raise ArtifactInputError(f"--trace {trace}: no such file")
    if not trace.is_file():
        raise ArtifactInputError(f"--trace {trace}: not a regular file")
    if not os.access(trace, os.R_OK):
        raise ArtifactInputError(f"--trace {trace}: not readable (permission denied)")
    return trace


def reproduce_command(
    artifact: Artifact,
    scale: Scale,
    seed: int,
    *,
    trace: Path | None = None,
    experiments: Sequence[str] = (),
    out: Path | None = None,
) -> str:
    """The command line that reproduces a run (the checklist's Reproduce line and provenance)."""
    args = [
        "nox",
        "-s",
        f"artifact-{artifact.name}",
        "--",
        "--scale",
        scale.value,
        "--seed",
        str(seed),
    ]
    if trace is not None:
        args += ["--trace", str(trace)]
    if experiments and list(experiments) != [e.name for e in artifact.experiments]:
        args += ["--experiments", ",".join(experiments)]
    if out is not None:
        args += ["--out", str(out)]
    return shlex.join(args)


def build_points(artifact: Artifact, ctx: RunContext, names: Sequence[str]) -> list[Point]:
    points: list[Point] = []
    trace_sha = sha256_file(ctx.trace) if ctx.trace else None
    for name in names:
        exp = artifact.experiment(name)
        seen: set[str] = set()
        for cfg in exp.points(ctx):
            config = {"seed": ctx.seed, **cfg}
            try:
                canonical_json(config)
            except (TypeError, ValueError) as exc:
                raise ArtifactInputError(
                    f"experiment {name}: point {config!r} is not plain JSON: {exc}"
                ) from exc
            # the trace's content, not only its path, decides whether a stored point is reusable
            key = {**config, "_trace_sha256": trace_sha} if trace_sha else config
            h = config_hash(artifact.name, artifact.version, name, key)
            if h in seen:
                raise ArtifactInputError(f"experiment {name}: point {config!r} appears twice")
            seen.add(h)
            points.append(Point(name, config, h, exp.run, exp.exclusive))
    return points


def _frames(artifact: Artifact, outcome: SweepOutcome) -> dict[str, Any]:
    import pandas as pd

    by_exp: dict[str, list[dict[str, Any]]] = {}
    for res in outcome.results:
        for row in res.rows:
            by_exp.setdefault(res.experiment, []).append({**res.config, **row})
    return {name: pd.DataFrame(rows) for name, rows in by_exp.items()}


def run_artifact(artifact: Artifact, opts: RunOptions) -> RunSummary:
    """Run the requested experiments (resuming stored points), then write ``metrics.csv``,
    figures, ``claims.json``, ``CHECKLIST.md`` and ``provenance.json`` into the output folder.

    Raises :class:`ArtifactInputError` for bad input before anything runs, and
    :class:`SweepFailed` when points fail (the finished ones are stored for the next run).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    started = time.time()
    seed = artifact.default_seed if opts.seed is None else opts.seed
    out = Path(opts.out) if opts.out else REPO_ROOT / "results" / artifact.name
    jobs = resolve_jobs(opts.jobs)
    names = list(opts.experiments) or [e.name for e in artifact.experiments]
    unknown = [n for n in names if n not in {e.name for e in artifact.experiments}]
    if unknown:
        known = ", ".join(e.name for e in artifact.experiments)
        raise ArtifactInputError(f"unknown experiment {unknown[0]!r} (known: {known})")
    trace = None
    if opts.trace is not None:
        if artifact.trace is None:
            raise ArtifactInputError(f"artifact {artifact.name} takes no --trace")
        trace = check_trace_path(Path(opts.trace))
        if artifact.trace.check is not None:
            try:
                artifact.trace.check(trace)
            except (ValueError, FileNotFoundError) as exc:
                raise ArtifactInputError(str(exc)) from exc
    ctx = RunContext(scale=opts.scale, seed=seed, out=out, trace=trace, jobs=jobs)
    points = build_points(artifact, ctx, names)

    out.mkdir(parents=True, exist_ok=True)
    store = PointStore(out / "points")
    executor = make_executor(opts.executor, jobs, opts.ray_address)
    bar = tqdm(
        total=len(points),
        desc=f"{artifact.name} [{ctx.scale.value}]",
        unit="point",
        disable=not opts.progress,
        file=sys.stderr,
        mininterval=1.0,
    )
    try:
        outcome = run_sweep(points, store, executor, fresh=opts.fresh, progress=bar.update)
    finally:
        bar.close()
        executor.close()
    if outcome.failed:
        first = outcome.failed[0]
        raise SweepFailed(
            f"{len(outcome.failed)} of {len(points)} points failed ({outcome.computed} new points "
            f"stored in {store.directory}; rerun to resume). First: experiment {first.experiment}, "
            f"config {canonical_json(first.config)}: {first.error}"
        )

    frames = _frames(artifact, outcome)
    metrics = (
        pd.concat([f.assign(experiment=name) for name, f in frames.items()], ignore_index=True)
        if frames
        else pd.DataFrame()
    )
    if not metrics.empty:
        metrics = metrics[["experiment", *[c for c in metrics.columns if c != "experiment"]]]
    metrics.to_csv(out / "metrics.csv", index=False)

    results = Results(frames, ctx)
    figures: list[str] = []
    if opts.plots:
        figures = _draw(artifact, names, frames, ctx, out)

    entries = [evaluate_claim(c, results) for c in artifact.claims]
    write_claims(out, entries)
    finished = datetime.now(timezone.utc)
    data_files: dict[str, str] = {str(trace.resolve()): sha256_file(trace)} if trace else {}
    for res in outcome.results:
        data_files.update(res.files_read)
    run_config = {
        "artifact": artifact.name,
        "version": artifact.version,
        "scale": ctx.scale.value,
        "seed": seed,
        "experiments": names,
        "trace": str(trace) if trace else None,
    }
    provenance = {
        "artifact": artifact.name,
        "paper": {
            "title": artifact.paper.title,
            "venue": artifact.paper.venue,
            "url": artifact.paper.url,
        },
        "scale": ctx.scale.value,
        "seed": seed,
        "config": run_config,
        "config_hash": config_hash(artifact.name, artifact.version, "*run*", run_config),
        "command": reproduce_command(
            artifact,
            ctx.scale,
            seed,
            trace=trace,
            experiments=names,
            out=Path(opts.out) if opts.out else None,
        ),
        "invocation": list(getattr(sys, "orig_argv", sys.argv)),
        "executor": {"kind": executor.name, "jobs": jobs, "ray_address": opts.ray_address},
        "points": [
            {"experiment": p.experiment, "hash": p.hash, "config": p.config} for p in points
        ],
        "seeds": sorted({int(p.config["seed"]) for p in points}),
        "points_computed": outcome.computed,
        "points_reused": outcome.reused,
        "git": git_state(),
        "packages": package_versions(),
        "host": host_info(),
        "data_files": dict(sorted(data_files.items())),
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - started, 3),
        "figures": figures,
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    (out / "CHECKLIST.md").write_text(render_checklist(artifact, entries, provenance))
    return RunSummary(out, entries, outcome, figures)


def _draw(
    artifact: Artifact, names: list[str], frames: dict[str, Any], ctx: RunContext, out: Path
) -> list[str]:
    from .plotting import figure_style, save_figure

    written: list[str] = []
    with figure_style():
        for name in names:
            exp = artifact.experiment(name)
            if exp.plot is None or name not in frames:
                continue
            for fig_name, fig in exp.plot(frames[name], ctx).items():
                written += [p.name for p in save_figure(fig, out, fig_name)]
    return written


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad options in one line (not usage + error) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(artifact: Artifact) -> argparse.ArgumentParser:
    exps = "; ".join(f"{e.name}: {e.description}" for e in artifact.experiments)
    parser = _OneLineParser(
        prog=f"python -m artifacts.{artifact.name}",
        description=f"{artifact.paper.title} ({artifact.paper.venue}). {artifact.summary}",
        epilog=f"Experiments: {exps}. Outputs: claims.json, CHECKLIST.md, metrics.csv, fig-*.png/pdf,"
        " provenance.json in --out. Finished points are stored under --out/points and reused.",
    )
    parser.add_argument(
        "--scale",
        choices=[s.value for s in Scale],
        default=Scale.DEFAULT.value,
        help="smoke (<1 min on 2 cores), default (<10 min on 2 cores) or full "
        "(the paper's scale); default: %(default)s",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"base random seed (default: {artifact.default_seed})",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output folder (default: results/{artifact.name})"
    )
    trace_help = artifact.trace.help if artifact.trace else "not used by this artifact"
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"replay this trace file: {trace_help}",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="parallel worker processes or Ray CPUs; 0 (the default) uses every "
        "core this process may use; 1 runs the points in this process",
    )
    parser.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local process pool, or Ray (started locally unless --ray-address)",
    )
    parser.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        metavar="ADDR",
        help="address of a running Ray cluster (default: $RAY_ADDRESS)",
    )
    parser.add_argument(
        "--experiments",
        default="",
        metavar="A,B",
        help="run only these experiments (comma separated)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="recompute every point instead of reusing stored ones"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a checked claim fails (default: report only)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(artifact: Artifact, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m artifacts.<name>``; returns the process exit code."""
    parser = build_parser(artifact)
    args = parser.parse_args(argv)
    opts = RunOptions(
        scale=Scale(args.scale),
        seed=args.seed,
        out=args.out,
        trace=args.trace,
        jobs=args.jobs,
        executor=args.executor,
        ray_address=args.ray_address,
        experiments=tuple(x for x in args.experiments.split(",") if x),
        fresh=args.fresh,
        plots=not args.no_plots,
        progress=not args.quiet,
    )
    prog = parser.prog
    from core.shutdown import exit_code, interrupt_on_signals

    try:
        # SIGTERM and SIGHUP stop the run as Ctrl-C does (workers stopped, finished points kept)
        with interrupt_on_signals():
            summary = run_artifact(artifact, opts)
    except ArtifactInputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except SweepFailed as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or core.shutdown.Terminated (SIGTERM, SIGHUP)
        print(
            f"{prog}: interrupted; finished points are stored, run the same command to resume",
            file=sys.stderr,
        )
        return exit_code(exc)
    o = summary.outcome
    print(
        f"{artifact.name}: {summary_line(summary.claims)} "
        f"({o.computed} points computed, {o.reused} reused) -> {summary.out}"
    )
    for c in summary.claims:
        m = "—" if c["measured"] is None else f"{c['measured']:.4g}"
        if isinstance(c["measured"], float) and math.isnan(c["measured"]):
            m = "nan"
        why = f" ({c['reason']})" if c.get("reason") else ""
        print(f"  [{c['status']}] {c['id']}: measured {m}; expected {c['expected']}{why}")
    if args.strict and not summary.all_passed:
        return 1
    return 0
