"""Claims: evaluate them, write ``claims.json`` and ``CHECKLIST.md``, gather every artifact's
latest checklist into one page."""

from __future__ import annotations

import json
import math
import traceback
from pathlib import Path
from typing import Any

from .spec import Artifact, Claim, NotApplicable, Results

STATUS_PASS, STATUS_FAIL, STATUS_NOT_CHECKED = "pass", "FAIL", "not checked"
STATUS_NOT_APPLICABLE = "n/a"


def evaluate_claim(claim: Claim, results: Results) -> dict[str, Any]:
    """One claims.json entry: the claim, what this scale must show, the measurement, pass/fail.

    A claim whose experiments were not run is ``not checked`` and one whose measure raises
    :class:`NotApplicable` is ``n/a`` with the reason (passed is None for both); a measure that
    raises anything else fails the claim with the error as its note, so a broken check is never
    a pass.
    """
    entry: dict[str, Any] = {
        "id": claim.id,
        "claim": claim.claim,
        "paper_value": claim.paper_value,
        "expected": claim.expected_text,
        "tolerance": claim.expect.tolerance,
        "unit": claim.unit,
        "experiments": list(claim.experiments),
        "note": "",
        "measured": None,
        "passed": None,
        "status": STATUS_NOT_CHECKED,
        "reason": None,
        "error": None,
    }
    try:
        entry["note"] = claim.note_for(results)
    except Exception as exc:  # noqa: BLE001 - a broken note must not hide the claim
        entry["note"] = f"(note failed: {type(exc).__name__}: {exc})"
    missing = [e for e in claim.experiments if e not in results]
    if missing:
        entry["reason"] = f"experiments not run: {', '.join(missing)}"
        return entry
    try:
        measured = float(claim.measure(results))
    except NotApplicable as exc:
        entry["status"] = STATUS_NOT_APPLICABLE
        entry["reason"] = str(exc) or "not measurable in this run"
        return entry
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
        if entry["status"] in (STATUS_NOT_CHECKED, STATUS_NOT_APPLICABLE):
            return "—"
        return "no value"
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
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    e["status"],
                    e["id"],
                    e["claim"],
                    e["paper_value"],
                    e["expected"],
                    _fmt_measured(e),
                )
            )
            + " |"
        )
    return "\n".join(lines)


def count_statuses(entries: list[dict[str, Any]]) -> dict[str, int]:
    """How many claims passed, failed, were not applicable and were not checked."""
    counts = dict.fromkeys((STATUS_PASS, STATUS_FAIL, STATUS_NOT_APPLICABLE, STATUS_NOT_CHECKED), 0)
    for e in entries:
        # entries written before the n/a status existed carry passed=None and "not checked"
        status = e.get("status") or STATUS_NOT_CHECKED
        counts[status if status in counts else STATUS_NOT_CHECKED] += 1
    return counts


def summary_line(entries: list[dict[str, Any]]) -> str:
    """``"8 of 10 checked claims reproduced; 1 not applicable; 1 not checked"``: claims that a
    run could not measure count apart from passes and failures."""
    n = count_statuses(entries)
    checked = n[STATUS_PASS] + n[STATUS_FAIL]
    tail = ""
    if n[STATUS_NOT_APPLICABLE]:
        tail += f"; {n[STATUS_NOT_APPLICABLE]} not applicable to this run"
    if n[STATUS_NOT_CHECKED]:
        tail += f"; {n[STATUS_NOT_CHECKED]} not checked"
    return f"{n[STATUS_PASS]} of {checked} checked claims reproduced{tail}"


def render_checklist(artifact: Artifact, entries: list[dict[str, Any]], run: dict[str, Any]) -> str:
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
    notes = [e for e in entries if e.get("note") or e.get("error") or e.get("reason")]
    if notes:
        out += ["## Notes", ""]
        for e in notes:
            label = {STATUS_NOT_APPLICABLE: "Not applicable", STATUS_NOT_CHECKED: "Not checked"}
            reason = e.get("reason") and f"{label.get(e['status'], e['status'])}: {e['reason']}."
            text = " ".join(
                x for x in (reason, e.get("note"), e.get("error") and f"[{e['error']}]") if x
            )
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
        run.get("command")
        or f"nox -s artifact-{artifact.name} -- --scale {run['scale']} --seed {run['seed']}",
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
