"""``python -m scripts.bench <benchmark> [options]``: run one benchmark (``--help`` lists them)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import BENCHMARKS


def build_parser() -> argparse.ArgumentParser:
    width = max(map(len, BENCHMARKS))
    listing = "\n".join(f"  {name:<{width}}  {desc}" for name, (_, desc) in BENCHMARKS.items())
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench",
        description="Servelab benchmarks. Each writes <out>/<benchmark>.json and prints a table.",
        epilog=(
            f"benchmarks:\n{listing}\n\n"
            "`python -m scripts.bench <benchmark> --help` shows a benchmark's options."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "benchmark",
        choices=sorted(BENCHMARKS),
        metavar="benchmark",
        help=f"one of: {', '.join(sorted(BENCHMARKS))}",
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    module = importlib.import_module(BENCHMARKS[args.benchmark][0])
    return int(module.main(args.args, prog=f"python -m scripts.bench {args.benchmark}") or 0)


if __name__ == "__main__":
    raise SystemExit(main())
