"""Benchmark reports: provenance, targets with pass flags, plain-text tables, JSON files.

Every benchmark under ``scripts/bench/`` writes one JSON file ``<out>/<benchmark>.json`` built
by :func:`make_report`::

    {
      "schema": "servelab.bench/1",
      "benchmark": "engine",
      "measured_on_this_machine": true,
      "note": "...",                   # what the numbers are and are not
      "created": "2025-...Z",          # UTC, ISO 8601
      "elapsed_s": 123.4,
      "config": {...},                 # everything that sets the workload (scale, seeds, sizes)
      "provenance": {...},             # see provenance()
      "results": {...},                # every measured number, benchmark-specific
      "targets": [                     # see target()
        {"id", "description", "op", "threshold", "unit", "measured", "passed", "status",
         "reason", "measured_on_this_machine"}
      ],
      "summary": {"pass": n, "FAIL": n, "not checked": n}
    }

Targets are the goals of an issue ("the engine does >= 2x the tokens/s of generate"); each
carries the number measured here and a pass flag, or ``passed: null`` and a reason when it could
not be measured. A benchmark is never a test: a failed target is reported, not raised.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REPORT_KEYS",
    "SCHEMA",
    "STATUS_FAIL",
    "STATUS_NOT_CHECKED",
    "STATUS_PASS",
    "TARGET_KEYS",
    "format_table",
    "make_report",
    "provenance",
    "target",
    "targets_table",
    "validate_report",
    "write_json",
]

SCHEMA = "servelab.bench/1"
STATUS_PASS, STATUS_FAIL, STATUS_NOT_CHECKED = "pass", "FAIL", "not checked"
REPORT_KEYS = (
    "schema",
    "benchmark",
    "measured_on_this_machine",
    "note",
    "created",
    "elapsed_s",
    "config",
    "provenance",
    "results",
    "targets",
    "summary",
)
TARGET_KEYS = (
    "id",
    "description",
    "op",
    "threshold",
    "unit",
    "measured",
    "passed",
    "status",
    "reason",
    "measured_on_this_machine",
)
DEFAULT_NOTE = (
    "Every number was measured on the machine described under 'provenance', in one process, "
    "possibly while other work shared its cores (see the load averages). Targets are checked "
    "against these measurements only; they say nothing about other machines."
)

_OPS = {
    ">=": lambda m, t: m >= t,
    "<=": lambda m, t: m <= t,
    ">": lambda m, t: m > t,
    "<": lambda m, t: m < t,
}


def target(
    id: str,
    description: str,
    measured: float | None,
    op: str,
    threshold: float,
    unit: str = "",
    reason: str | None = None,
) -> dict[str, Any]:
    """One target entry: ``measured op threshold`` decides ``passed``.

    ``measured`` None (or NaN) means the quantity could not be measured: ``passed`` is None,
    ``status`` is ``"not checked"`` and ``reason`` should say why.
    """
    if op not in _OPS:
        raise ValueError(f"unknown comparison {op!r}; use one of {', '.join(_OPS)}")
    value = None if measured is None or not math.isfinite(float(measured)) else float(measured)
    passed = None if value is None else bool(_OPS[op](value, float(threshold)))
    status = STATUS_NOT_CHECKED if passed is None else STATUS_PASS if passed else STATUS_FAIL
    if value is None and not reason:
        reason = "not measured"
    return {
        "id": id,
        "description": description,
        "op": op,
        "threshold": float(threshold),
        "unit": unit,
        "measured": value,
        "passed": passed,
        "status": status,
        "reason": reason,
        "measured_on_this_machine": True,
    }


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def provenance(extra_packages: Sequence[str] = ()) -> dict[str, Any]:
    """Where the numbers come from: git commit/branch/dirty, package versions (torch,
    transformers, ...), host (name, platform, CPU model, cpu count, cores this process may use),
    torch threads, and the 1/5/15-minute load averages at the time of the call."""
    from core.artifact.provenance import PACKAGES, git_state, host_info, package_versions

    info: dict[str, Any] = {"git": git_state()}
    info["packages"] = package_versions(tuple(dict.fromkeys((*PACKAGES, *extra_packages))))
    host = host_info()
    host["cpu_model"] = _cpu_model()
    try:
        host["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        host["usable_cpus"] = os.cpu_count()
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        host["torch_version"] = torch.__version__
        host["torch_threads"] = torch.get_num_threads()
        host["torch_interop_threads"] = torch.get_num_interop_threads()
        host["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if var in os.environ:
            host[var] = os.environ[var]
    info["host"] = host
    info["load_average"] = _load_average()
    info["argv"] = list(sys.argv)
    return info


def _cpu_model() -> str:
    from core.sim.profiled import cpu_model_name

    return cpu_model_name()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def make_report(
    benchmark: str,
    config: dict[str, Any],
    results: dict[str, Any],
    targets: list[dict[str, Any]],
    prov: dict[str, Any],
    elapsed_s: float,
    note: str = DEFAULT_NOTE,
) -> dict[str, Any]:
    """Assemble a report with the layout in the module docstring; the provenance gains the
    load average at the end of the run (``load_average_end``)."""
    prov = dict(prov)
    prov["load_average_end"] = _load_average()
    summary = {STATUS_PASS: 0, STATUS_FAIL: 0, STATUS_NOT_CHECKED: 0}
    for t in targets:
        summary[t["status"]] += 1
    report = {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "measured_on_this_machine": True,
        "note": note,
        "created": _now(),
        "elapsed_s": round(float(elapsed_s), 3),
        "config": config,
        "provenance": prov,
        "results": results,
        "targets": targets,
        "summary": summary,
    }
    validate_report(report)
    return report


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first problem if ``report`` does not have the layout in
    the module docstring (every key, targets well formed, JSON-serialisable)."""
    missing = [k for k in REPORT_KEYS if k not in report]
    if missing:
        raise ValueError(f"report lacks keys: {', '.join(missing)}")
    if report["schema"] != SCHEMA:
        raise ValueError(f"report schema is {report['schema']!r}, expected {SCHEMA!r}")
    if not isinstance(report["targets"], list):
        raise ValueError("report 'targets' must be a list")
    for i, t in enumerate(report["targets"]):
        lacking = [k for k in TARGET_KEYS if k not in t]
        if lacking:
            raise ValueError(f"target #{i} ({t.get('id')!r}) lacks keys: {', '.join(lacking)}")
        if t["status"] not in (STATUS_PASS, STATUS_FAIL, STATUS_NOT_CHECKED):
            raise ValueError(f"target {t['id']!r} has unknown status {t['status']!r}")
        if (t["passed"] is None) != (t["measured"] is None):
            raise ValueError(f"target {t['id']!r}: passed must be null exactly when measured is")
    for key in ("git", "host"):
        if key not in report["provenance"]:
            raise ValueError(f"report provenance lacks {key!r}")
    json.dumps(report, allow_nan=False)  # raises ValueError on NaN/inf or unserialisable values


def _jsonable(value: Any) -> Any:
    """Replace NaN/inf by None and tuples by lists, so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: os.PathLike[str] | str, data: Any) -> Path:
    """Write ``data`` as indented strict JSON to ``path`` atomically (a temporary file in the
    same folder, then a rename), creating the folder; a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _cell(value: Any, fmt: str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return format(value, fmt) if fmt else f"{value:.4g}"
    return str(value)


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    title: str | None = None,
    formats: Sequence[str | None] | None = None,
) -> str:
    """A plain-text table: a title line, a header, a rule, one line per row. Numbers are right
    aligned; ``None`` and NaN print as ``-``; ``formats`` gives a format spec per column (floats
    default to 4 significant digits)."""
    formats = list(formats) if formats is not None else [None] * len(headers)
    if len(formats) != len(headers):
        raise ValueError(f"{len(formats)} formats for {len(headers)} columns")
    cells = [[_cell(v, f) for v, f in zip(row, formats, strict=True)] for row in rows]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(headers))
    ]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [title] if title else []
    out += [line(list(headers)), "  ".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    return "\n".join(out)


def targets_table(targets: Sequence[dict[str, Any]], title: str = "Targets") -> str:
    """The targets as a table: id, goal, measured value, status (reason when not checked)."""
    rows = []
    for t in targets:
        unit = f" {t['unit']}" if t.get("unit") else ""
        goal = f"{t['op']} {t['threshold']:g}{unit}"
        measured = "-" if t["measured"] is None else f"{t['measured']:.3g}{unit}"
        status = (
            t["status"] if t["status"] != STATUS_NOT_CHECKED else f"{t['status']}: {t['reason']}"
        )
        rows.append([t["id"], goal, measured, status])
    return format_table(["target", "goal", "measured", "status"], rows, title=title)


def positive_int(text: str) -> int:
    """argparse type for counts: an integer >= 1, else a one-line error."""
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v
