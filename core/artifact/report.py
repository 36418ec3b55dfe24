"""Claims: evaluate them, write ``claims.json`` and ``CHECKLIST.md``, gather every artifact's
latest checklist into one page."""

from __future__ import annotations

import json
import math
import traceback
from pathlib import Path
from typing import Any

from .spec import Artifact, Claim, Results

STATUS_PASS, STATUS_FAIL, STATUS_NOT_CHECKED = "pass", "FAIL", "not checked"


def evaluate_claim(claim: Claim, results: Results) -> dict[str, Any]:
    """One claims.json entry: the claim, what this scale must show, the measurement, pass/fail.

    A claim whose experiments were not run is ``not checked`` (passed is None); a measure that
    raises fails the claim with the error as its note, so a broken check is never a pass.
    """
    entry: dict[str, Any] = {
        "id": claim.id,
        "claim": claim.claim,
        "paper_value": claim.paper_value,
        "expected": claim.expected_text,
        "tolerance": claim.expect.tolerance,
        "unit": claim.unit,
        "experiments": list(claim.experiments),
        "note": claim.note,
        "measured": None,
        "passed": None,
        "status": STATUS_NOT_CHECKED,
        "error": None,
    }
    missing = [e for e in claim.experiments if e not in results]
    if missing:
        entry["error"] = f"experiments not run: {', '.join(missing)}"
        return entry
    try:
        measured = float(claim.measure(results))
    except Exception as exc:  # noqa: BLE001 - a broken measure is reported, never a pass
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc(limit=-2)
        measured = math.nan
    entry["measured"] = measured if math.isfinite(measured) else None
    entry["passed"] = claim.expect.passes(measured)
    entry["status"] = STATUS_PASS if entry["passed"] else STATUS_FAIL
    return entry


def _fmt_measured(entry: dict[str, Any]) -> str:
    m = entry["measured"]
    if m is None:
        return "—" if entry["status"] == STATUS_NOT_CHECKED else "no value"
    unit = f" {entry['unit']}" if entry.get("unit") else ""
    return f"{m:.4g}{unit}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_table(entries: list[dict[str, Any]]) -> str:
    lines = [
        "| status | id | the paper says | paper | this scale must show | measured |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        lines.append(
            "| " + " | ".join(
                _cell(x) for x in (
                    e["status"], e["id"], e["claim"], e["paper_value"], e["expected"],
                    _fmt_measured(e),
                )
            ) + " |"
        )
    return "\n".join(lines)


def summary_line(entries: list[dict[str, Any]]) -> str:
    checked = [e for e in entries if e["status"] != STATUS_NOT_CHECKED]
    passed = sum(1 for e in checked if e["passed"])
    skipped = len(entries) - len(checked)
    tail = f"; {skipped} not checked" if skipped else ""
    return f"{passed} of {len(checked)} checked claims reproduced{tail}"


def render_checklist(
    artifact: Artifact, entries: list[dict[str, Any]], run: dict[str, Any]
) -> str:
    """The artifact-evaluation checklist a person reads: one table, then notes and outputs."""
    p = artifact.paper
    commit = (run.get("git") or {}).get("commit") or "unknown"
    dirty = " (dirty)" if (run.get("git") or {}).get("dirty") else ""
    out = [
        f"# Artifact-evaluation checklist: {artifact.name}",
        "",
        f"**Paper:** {p.title} ({p.venue})" + (f" — {p.url}" if p.url else ""),
        "",
        f"**Run:** scale `{run['scale']}`, seed {run['seed']}, commit `{commit[:12]}`{dirty}, "
        f"finished {run['finished_at']} ({run['elapsed_s']:.0f} s; "
        f"{run['points_computed']} points computed, {run['points_reused']} reused).",
        "",
        f"**Result:** {summary_line(entries)}.",
        "",
        claims_table(entries),
        "",
    ]
    notes = [e for e in entries if e.get("note") or e.get("error")]
    if notes:
        out += ["## Notes", ""]
        for e in notes:
            text = " ".join(x for x in (e.get("note"), e.get("error") and f"[{e['error']}]") if x)
            out.append(f"- **{e['id']}**: {text}")
        out.append("")
    out += [
        "## Outputs",
        "",
        "- `metrics.csv`: one row per measurement, config columns first",
        *[f"- `{f}`" for f in run.get("figures", [])],
        "- `claims.json`, `provenance.json`",
        "",
        "## Reproduce",
        "",
        "```",
        f"nox -s artifact-{artifact.name} -- --scale {run['scale']} --seed {run['seed']}",
        "```",
        "",
    ]
    return "\n".join(out)


def write_claims(out: Path, entries: list[dict[str, Any]]) -> Path:
    path = out / "claims.json"
    path.write_text(json.dumps(entries, indent=2) + "\n")
    return path


def gather_checklists(results_dir: Path) -> str:
    """One page over every ``results/<name>/claims.json``: a summary table, then each artifact's
    claims table. Artifacts that have never run are absent."""
    sections: list[str] = []
    rows: list[str] = []
    for claims_path in sorted(results_dir.glob("*/claims.json")):
        name = claims_path.parent.name
        try:
            entries = json.loads(claims_path.read_text())
            prov = json.loads((claims_path.parent / "provenance.json").read_text())
        except (OSError, ValueError) as exc:
            rows.append(f"| {name} | unreadable results: {_cell(str(exc))} | | | |")
            continue
        commit = (prov.get("git") or {}).get("commit") or "unknown"
        rows.append(
            f"| [{name}](#{name}) | {_cell(prov.get('paper', {}).get('title', ''))} | "
            f"{prov.get('scale')} | {prov.get('finished_at')} `{commit[:10]}` | "
            f"{summary_line(entries)} |"
        )
        sections += [f"## {name}", "", claims_table(entries), ""]
    if not rows:
        return "# Servelab checklist\n\nNo artifact has results yet: run `nox -s artifacts`.\n"
    head = [
        "# Servelab checklist",
        "",
        "The latest run of every artifact in this results folder.",
        "",
        "| artifact | paper | scale | run | claims |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
    return "\n".join(head + sections)
