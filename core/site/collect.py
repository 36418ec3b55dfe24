"""Read what runs wrote: every artifact's folder and latest results, and the benchmark reports.

Nothing here renders; it turns files into plain records the templates show. Every string that
comes from a run goes through a :class:`~core.site.privacy.Scrubber` on the way in, so no
template can leak a machine path.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.artifact.report import (
    STATUS_FAIL,
    STATUS_NOT_APPLICABLE,
    STATUS_NOT_CHECKED,
    STATUS_PASS,
    count_statuses,
)

from .privacy import Scrubber

BENCH_SCHEMA = "servelab.bench/1"
# A metrics table longer than this is cut on the page (the whole CSV is linked beside it).
MAX_METRIC_ROWS = 1000
# Result keys that hold a ratio against a baseline in a benchmark report.
_RATIO_KEY = re.compile(r"ratio|speedup|overhead|relative|vs_", re.IGNORECASE)


@dataclass
class Figure:
    """One figure of a run: its PNG (shown inline) and PDF (linked), file names in the run's
    folder; either may be missing."""

    name: str
    png: str | None = None
    pdf: str | None = None


@dataclass
class MetricsTable:
    """The head of ``metrics.csv``: column names, up to :data:`MAX_METRIC_ROWS` rows of cells
    and the total row count."""

    columns: list[str]
    rows: list[list[str]]
    total_rows: int

    @property
    def truncated(self) -> bool:
        return self.total_rows > len(self.rows)


@dataclass
class ArtifactPage:
    """Everything the site shows about one artifact.

    ``ran`` is False when no ``claims.json`` exists for it; then only the folder's README facts
    and the command are known. ``problems`` lists files that exist but could not be read, so a
    broken run shows as broken instead of as not run.
    """

    name: str
    headline: str
    intro: str
    command: str
    has_folder: bool
    ran: bool = False
    paper: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(("title", "venue", "url")))
    claims: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: MetricsTable | None = None
    figures: list[Figure] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stored_points: int = 0

    def _prov(self, *keys: str) -> Any:
        value: Any = self.provenance
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    @property
    def scale(self) -> str | None:
        return self._prov("scale")

    @property
    def finished_at(self) -> str | None:
        return self._prov("finished_at")

    @property
    def elapsed_s(self) -> float | None:
        return self._prov("elapsed_s")

    @property
    def commit(self) -> str:
        return self._prov("git", "commit") or "unknown"

    @property
    def dirty(self) -> bool:
        return bool(self._prov("git", "dirty"))

    @property
    def checked(self) -> int:
        return self.counts.get(STATUS_PASS, 0) + self.counts.get(STATUS_FAIL, 0)

    @property
    def failed(self) -> int:
        return self.counts.get(STATUS_FAIL, 0)

    @property
    def passed(self) -> int:
        return self.counts.get(STATUS_PASS, 0)


@dataclass
class BenchPage:
    """One benchmark report (``results/bench/<name>.json``): its targets, its ratios against
    baselines found anywhere in ``results``, and the scrubbed report itself."""

    name: str
    report: dict[str, Any]
    targets: list[dict[str, Any]]
    ratios: list[tuple[str, float]]
    file: str
    problems: list[str] = field(default_factory=list)
    command: str = ""


def artifact_folders(artifacts_dir: Path) -> list[str]:
    """Names of the artifact folders (``<dir>/<name>/__main__.py``, names not starting with
    ``_``): the same rule as the noxfile's ``artifact-<name>`` sessions."""
    if not artifacts_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in artifacts_dir.iterdir()
        if p.is_dir() and (p / "__main__.py").is_file() and not p.name.startswith("_")
    )


def result_folders(results_dir: Path) -> list[str]:
    """Names of folders under ``results_dir`` holding an artifact run (a ``claims.json``)."""
    if not results_dir.is_dir():
        return []
    return sorted(p.parent.name for p in results_dir.glob("*/claims.json"))


def readme_facts(readme: Path) -> tuple[str, str]:
    """The headline (first ``# `` heading) and the first paragraph after it, as plain text:
    emphasis marks dropped, ``[text](url)`` reduced to its text."""
    if not readme.is_file():
        return "", ""
    headline, paragraph = "", list[str]()
    for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
        if not headline:
            if line.startswith("# "):
                headline = line[2:].strip()
            continue
        if not line.strip():
            if paragraph:
                break
            continue
        if line.lstrip().startswith(("#", "|", "```", "-", ">")):
            if paragraph:
                break
            continue
        paragraph.append(line.strip())
    text = " ".join(paragraph)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[*_`]+", "", text)
    return headline, text


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(str(exc)) from exc


def _read_metrics(path: Path, scrub: Scrubber) -> MetricsTable:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        columns = [scrub.text(c) for c in next(reader, [])]
        rows: list[list[str]] = []
        total = 0
        for row in reader:
            total += 1
            if len(rows) < MAX_METRIC_ROWS:
                rows.append([scrub.text(c) for c in row])
    return MetricsTable(columns, rows, total)


def _figures(folder: Path, listed: list[str]) -> list[Figure]:
    """The run's figures in the order provenance lists them, then any other ``fig-*`` file."""
    # plain file names only: a name with a folder in it must not copy files from elsewhere
    names = [
        n
        for n in listed
        if isinstance(n, str)
        and Path(n).name == n
        and n.endswith((".png", ".pdf"))
        and (folder / n).is_file()
    ]
    names += sorted(
        p.name for p in folder.glob("fig-*") if p.suffix in (".png", ".pdf") and p.name not in names
    )
    figures: dict[str, Figure] = {}
    for n in names:
        stem, suffix = n.rsplit(".", 1)
        fig = figures.setdefault(stem, Figure(stem.removeprefix("fig-")))
        if suffix == "png":
            fig.png = n
        elif suffix == "pdf":
            fig.pdf = n
    return list(figures.values())


CLAIM_FIELDS = ("id", "claim", "paper_value", "expected", "unit", "note", "reason", "error")
TARGET_FIELDS = ("id", "description", "op", "threshold", "unit", "reason")


def _status(entry: dict[str, Any]) -> str:
    status = entry.get("status")
    if status in (STATUS_PASS, STATUS_FAIL, STATUS_NOT_APPLICABLE, STATUS_NOT_CHECKED):
        return str(status)
    passed = entry.get("passed")  # entries written before "status" existed
    return STATUS_NOT_CHECKED if passed is None else STATUS_PASS if passed else STATUS_FAIL


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _normalize(entry: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """A claims.json entry or benchmark target with every field the page shows (None where the
    file lacks it), its status, and its measurement as a finite float or None."""
    if not isinstance(entry, dict):
        raise ValueError(f"expected an object with {', '.join(fields[:2])}, got {entry!r:.80}")
    return {
        **dict.fromkeys(fields),
        **entry,
        "status": _status(entry),
        "measured": _finite(entry.get("measured")),
    }


def public_command(command: str, scrub: Scrubber) -> str:
    """The reproducing command as a reader can run it: paths scrubbed, and an ``--out`` folder
    outside the repository dropped (the default ``results/<name>/`` serves a reader better than
    an anonymized ``…/name``)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return scrub.text(command)
    kept: list[str] = []
    skip = False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        if word == "--out" and i + 1 < len(words) and scrub.path(words[i + 1]).startswith("…/"):
            skip = True
            continue
        kept.append(scrub.text(word))
    return shlex.join(kept)


def load_artifact(
    name: str, artifacts_dir: Path, results_dir: Path, scrub: Scrubber
) -> ArtifactPage:
    """What is known about artifact ``name``: its folder's README and, when it has run, its
    claims, provenance, metrics and figures from ``results_dir/<name>``."""
    folder = artifacts_dir / name
    headline, intro = readme_facts(folder / "README.md")
    page = ArtifactPage(
        name=name,
        headline=headline or name,
        intro=intro,
        command=f"nox -s artifact-{name}",
        has_folder=folder.is_dir(),
    )
    out = results_dir / name
    if not (out / "claims.json").is_file():
        # an interrupted or failed run stores its finished sweep points before any claims.json
        points = out / "points"
        page.stored_points = sum(1 for _ in points.rglob("*.json")) if points.is_dir() else 0
        return page
    page.ran = True
    try:
        entries = _read_json(out / "claims.json")
        if not isinstance(entries, list):
            raise ValueError("not a list of claims")
        page.claims = [_normalize(scrub.value(e), CLAIM_FIELDS) for e in entries]
    except ValueError as exc:
        page.problems.append(f"claims.json: {exc}")
    page.counts = count_statuses(page.claims)
    if (out / "provenance.json").is_file():
        try:
            prov = _read_json(out / "provenance.json")
            if not isinstance(prov, dict):
                raise ValueError("not a JSON object")
            if isinstance(prov.get("command"), str):
                page.command = public_command(prov["command"], scrub)
            page.provenance = scrub.value(prov)
        except ValueError as exc:
            page.problems.append(f"provenance.json: {exc}")
    else:
        page.problems.append("provenance.json: missing")
    paper = page.provenance.get("paper")
    page.paper = {k: paper.get(k) if isinstance(paper, dict) else None for k in page.paper}
    if (out / "metrics.csv").is_file():
        try:
            page.metrics = _read_metrics(out / "metrics.csv", scrub)
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            page.problems.append(f"metrics.csv: {exc}")
    listed = page.provenance.get("figures")
    page.figures = _figures(out, listed if isinstance(listed, list) else [])
    return page


def collect_artifacts(
    artifacts_dir: Path, results_dir: Path, scrub: Scrubber
) -> list[ArtifactPage]:
    """One page per artifact folder and per results folder with a ``claims.json`` (a run of an
    artifact whose folder is elsewhere still shows), sorted by name."""
    names = sorted(set(artifact_folders(artifacts_dir)) | set(result_folders(results_dir)))
    return [load_artifact(n, artifacts_dir, results_dir, scrub) for n in names]


def _walk_ratios(value: Any, path: tuple[str, ...]) -> Iterator[tuple[str, float]]:
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _walk_ratios(sub, (*path, str(key)))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if path and _RATIO_KEY.search(path[-1]) and math.isfinite(value):
            # {"vllm": {"ratio": 1.02, ...}} reads better as "vllm" than as "vllm / ratio"
            shown = path[:-1] if path[-1] == "ratio" and len(path) > 1 else path
            yield " / ".join(shown), float(value)


def bench_ratios(results: Any) -> list[tuple[str, float]]:
    """Every number in a benchmark's ``results`` whose key names a ratio against a baseline
    (ratio, speedup, overhead, relative, vs_...), with its path of keys."""
    return list(_walk_ratios(results, ()))


def bench_command(report: dict[str, Any], default: str, scrub: Scrubber) -> str:
    """``nox -s bench -- <name> <options>`` from the argv the report recorded (``python -m
    scripts.bench <name> ...``), made public like an artifact's command."""
    argv = (report.get("provenance") or {}).get("argv")
    words = [str(w) for w in argv[1:]] if isinstance(argv, list) and len(argv) > 1 else []
    if not words:
        words = [str(report.get("benchmark") or default)]
    return public_command(shlex.join(["nox", "-s", "bench", "--", *words]), scrub)


def collect_benchmarks(bench_dir: Path, scrub: Scrubber) -> list[BenchPage]:
    """One page per ``<bench_dir>/*.json`` written by ``scripts/bench`` (schema
    ``servelab.bench/1``); another JSON file there is listed with the reason it was skipped."""
    pages: list[BenchPage] = []
    if not bench_dir.is_dir():
        return pages
    for path in sorted(bench_dir.glob("*.json")):
        try:
            report = _read_json(path)
            if not isinstance(report, dict) or report.get("schema") != BENCH_SCHEMA:
                raise ValueError(f"not a benchmark report (schema {BENCH_SCHEMA})")
            command = bench_command(report, path.stem, scrub)
            report = scrub.value(report)
            targets = [_normalize(t, TARGET_FIELDS) for t in report.get("targets") or []]
        except ValueError as exc:
            pages.append(BenchPage(path.stem, {}, [], [], path.name, [f"{path.name}: {exc}"]))
            continue
        name = str(report.get("benchmark") or path.stem)
        ratios = bench_ratios(report.get("results") or {})
        pages.append(BenchPage(name, report, targets, ratios, path.name, command=command))
    return pages
