"""Build the static results site: collect, render the Jinja2 templates, copy the files.

The site is a folder of HTML, CSS, one small script, figures and scrubbed data files, linked
only by relative paths, so it opens from the file system, serves from ``python -m
http.server`` and publishes as it is.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from core.artifact.provenance import git_state
from core.data import REPO_ROOT

from .collect import ArtifactPage, BenchPage, collect_artifacts, collect_benchmarks
from .privacy import Scrubber

# A file in every folder this module built; only such a folder is ever replaced wholesale.
MARKER = ".servelab-site"


class SiteError(RuntimeError):
    """The site cannot be written (its output folder holds something else)."""


@dataclass
class SiteSummary:
    """What a build wrote: the folder, its pages, and how many artifacts had run."""

    out: Path
    pages: list[Path]
    artifacts: int
    ran: int
    benchmarks: int


def format_number(value: Any) -> str:
    """A number as a person reads it: integers whole, floats to 4 significant digits, missing
    values as an em dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def format_when(iso: Any) -> str:
    """``2026-12-07T03:16:03+00:00`` as ``2026-12-07 03:16 UTC``."""
    if not iso:
        return "—"
    try:
        moment = datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return str(iso)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def format_duration(seconds: Any) -> str:
    """Seconds as ``2.6 s``, ``5 min 3 s`` or ``1 h 4 min``."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def sort_key(cell: str) -> str:
    """The ``data-sort`` value of a metrics cell: the number for numeric cells (so the page's
    script sorts 9 before 10), empty otherwise."""
    try:
        number = float(cell)
    except ValueError:
        return ""
    return repr(number) if math.isfinite(number) else ""


def cell_text(cell: str) -> str:
    """A metrics cell as shown: a float to 6 significant digits (CSV floats such as
    ``80.99999999999999`` read as 81), anything else as written."""
    key = sort_key(cell)
    if not key or cell.strip().lstrip("-").isdigit():
        return cell
    return f"{float(key):.6g}"


def provenance_facts(prov: dict[str, Any]) -> list[tuple[str, str]]:
    """The provenance lines a reader looks for first, in reading order."""
    git = prov.get("git") or {}
    host = prov.get("host") or {}
    executor = prov.get("executor") or {}
    commit = git.get("commit") or "unknown"
    dirty = {True: " (uncommitted changes)", False: "", None: ""}.get(git.get("dirty"), "")
    facts = [
        ("commit", f"{commit}{dirty}" + (f" on {git['branch']}" if git.get("branch") else "")),
        ("scale", str(prov.get("scale", "—"))),
        ("seeds", ", ".join(map(str, prov.get("seeds") or [prov.get("seed", "—")]))),
        ("config hash", str(prov.get("config_hash", "—"))),
        ("started", format_when(prov.get("started_at"))),
        ("finished", format_when(prov.get("finished_at"))),
        ("took", format_duration(prov.get("elapsed_s"))),
        (
            "sweep points",
            f"{prov.get('points_computed', '—')} computed, {prov.get('points_reused', '—')} reused",
        ),
        ("executor", f"{executor.get('kind', '—')}, {executor.get('jobs', '—')} workers"),
        (
            "host",
            ", ".join(
                str(x)
                for x in (
                    host.get("platform"),
                    host.get("python") and f"Python {host['python']}",
                    host.get("cpu_count") and f"{host['cpu_count']} CPUs",
                )
                if x
            )
            or "—",
        ),
    ]
    return facts


def _environment() -> Any:
    try:
        import jinja2
    except ImportError as exc:  # the site needs the `site` extra (jinja2)
        raise SiteError(
            "building the site needs jinja2: pip install -e '.[site]' (or nox -s site)"
        ) from exc
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("core.site", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        num=format_number,
        when=format_when,
        duration=format_duration,
        sort_key=sort_key,
        cell_text=cell_text,
        pretty_json=lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str),
    )
    env.globals.update(provenance_facts=provenance_facts)
    return env


def _write_metrics_csv(src: Path, dst: Path, scrub: Scrubber) -> None:
    with src.open(newline="", encoding="utf-8") as fin, dst.open("w", newline="") as fout:
        writer = csv.writer(fout)
        for row in csv.reader(fin):
            writer.writerow([scrub.text(c) for c in row])


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def _artifact_files(page: ArtifactPage, results_dir: Path, folder: Path, scrub: Scrubber) -> None:
    """Copy a run's figures and scrubbed data files into its page folder; record their names."""
    src = results_dir / page.name
    for fig in page.figures:
        for name in (fig.png, fig.pdf):
            if name:
                shutil.copyfile(src / name, folder / name)
    if page.claims:
        _write_json(folder / "claims.json", page.claims)
        page.files.append("claims.json")
    if page.provenance:
        _write_json(folder / "provenance.json", page.provenance)
        page.files.append("provenance.json")
    if page.metrics is not None:
        _write_metrics_csv(src / "metrics.csv", folder / "metrics.csv", scrub)
        page.files.append("metrics.csv")


def _replace_folder(staging: Path, out: Path) -> None:
    if out.exists():
        if not (out / MARKER).is_file() and any(out.iterdir()):
            raise SiteError(
                f"{out}: exists and was not built by the site builder (no {MARKER}); "
                "choose another --out or empty it"
            )
        shutil.rmtree(out)
    os.replace(staging, out)


def build_site(
    out: Path,
    results_dir: Path | None = None,
    artifacts_dir: Path | None = None,
    bench_dir: Path | None = None,
) -> SiteSummary:
    """Build the site into ``out`` from ``results_dir`` (default ``results/``), the artifact
    folders in ``artifacts_dir`` (default ``artifacts/``) and the benchmark reports in
    ``bench_dir`` (default ``<results_dir>/bench``).

    The site is assembled in a sibling folder and moved into place at the end, so a failed
    build leaves the previous site intact. Raises :class:`SiteError` if ``out`` holds
    anything this builder did not write.
    """
    results_dir = Path(results_dir or REPO_ROOT / "results")
    artifacts_dir = Path(artifacts_dir or REPO_ROOT / "artifacts")
    bench_dir = Path(bench_dir or results_dir / "bench")
    out = Path(out)
    scrub = Scrubber([REPO_ROOT, results_dir, artifacts_dir.parent, out.parent])
    env = _environment()
    artifacts = collect_artifacts(artifacts_dir, results_dir, scrub)
    benchmarks = collect_benchmarks(bench_dir, scrub)
    git = git_state()
    built = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git.get("commit"),
        "dirty": git.get("dirty"),
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        pages = _render(env, staging, artifacts, benchmarks, built, results_dir, scrub)
        (staging / MARKER).write_text("built by python -m core.site\n")
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SiteSummary(
        out=out,
        pages=[out / p.relative_to(staging) for p in pages],
        artifacts=len(artifacts),
        ran=sum(a.ran for a in artifacts),
        benchmarks=len(benchmarks),
    )


def _render(
    env: Any,
    root: Path,
    artifacts: list[ArtifactPage],
    benchmarks: list[BenchPage],
    built: dict[str, Any],
    results_dir: Path,
    scrub: Scrubber,
) -> list[Path]:
    static = root / "static"
    static.mkdir()
    for item in resources.files("core.site").joinpath("static").iterdir():
        if item.is_file():
            (static / item.name).write_bytes(item.read_bytes())
    common = {"built": built, "artifacts": artifacts, "benchmarks": benchmarks}
    pages: list[Path] = []

    def page(path: Path, template: str, depth: int, **context: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        html = env.get_template(template).render(root="../" * depth, **common, **context)
        path.write_text(html, encoding="utf-8")
        pages.append(path)

    totals = {
        "ran": sum(a.ran for a in artifacts),
        "passed": sum(a.passed for a in artifacts),
        "failed": sum(a.failed for a in artifacts),
        "checked": sum(a.checked for a in artifacts),
    }
    page(root / "index.html", "overview.html", 0, totals=totals)
    for art in artifacts:
        folder = root / "artifacts" / art.name
        folder.mkdir(parents=True)
        if art.ran:
            _artifact_files(art, results_dir, folder, scrub)
        page(folder / "index.html", "artifact.html", 2, art=art)
    bench_files = root / "benchmarks"
    bench_files.mkdir()
    for bench in benchmarks:
        if bench.report:
            _write_json(bench_files / bench.file, bench.report)
    page(root / "benchmarks.html", "benchmarks.html", 0)
    return pages
