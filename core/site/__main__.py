"""``python -m core.site [--results DIR] [--artifacts DIR] [--bench DIR] [--out DIR]``: build the
static results site (what ``nox -s site`` runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.data import REPO_ROOT

from .build import SiteError, build_site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.site", description=__doc__)
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO_ROOT / "results",
        help="folder holding <artifact>/claims.json and friends (default: results/)",
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=REPO_ROOT / "artifacts",
        help="folder of artifact folders; each is listed even before it runs (default: artifacts/)",
    )
    parser.add_argument(
        "--bench",
        type=Path,
        default=None,
        help="folder of benchmark reports <name>.json (default: <results>/bench)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the site goes; replaced on every build (default: <results>/site)",
    )
    args = parser.parse_args(argv)
    if args.results.exists() and not args.results.is_dir():
        parser.exit(2, f"{parser.prog}: error: --results {args.results}: not a folder\n")
    out = args.out or args.results / "site"
    try:
        summary = build_site(out, args.results, args.artifacts, args.bench)
    except SiteError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    index = summary.out / "index.html"
    print(
        f"wrote {len(summary.pages)} pages to {summary.out} ({summary.ran} of {summary.artifacts} "
        f"artifacts with results, {summary.benchmarks} benchmark reports)\n"
        f"open {index.resolve().as_uri()} or serve it: "
        f"python -m http.server -d {summary.out} 8000"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
