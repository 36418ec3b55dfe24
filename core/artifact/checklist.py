"""``python -m core.artifact.checklist [--results DIR]``: write ``<DIR>/CHECKLIST.md`` gathering
every artifact's latest claims (what ``nox -s checklist`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.data import REPO_ROOT

from .report import gather_checklists


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="checklist", description=__doc__)
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO_ROOT / "results",
        help="results folder holding <artifact>/claims.json (default: results/)",
    )
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.exit(2, f"checklist: error: {args.results}: no such results folder\n")
    page = gather_checklists(args.results)
    target = args.results / "CHECKLIST.md"
    target.write_text(page)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
