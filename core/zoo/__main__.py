"""``python -m core.zoo``: rebuild the zoo from its recipes, or re-measure a model folder.

    python -m core.zoo build --out results/zoo            # tokenizer + every model + cards
    python -m core.zoo build --out results/zoo zoo-small  # some models only
    python -m core.zoo compare results/zoo data/models    # rebuilt metrics beside shipped ones
    python -m core.zoo measure data/models/zoo-large      # accuracy of a folder, now

An interrupted build resumes: each training run keeps a checkpoint under ``OUT/.runs``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .recipes import RECIPES

SHIPPED = Path(__file__).resolve().parents[2] / "data" / "models"


def _build(out: Path, names: list[str]) -> None:
    from . import build

    out.mkdir(parents=True, exist_ok=True)
    tok_file = out / "tokenizer" / "tokenizer.json"
    tok = build.load_zoo_tokenizer(out) if tok_file.is_file() else build.build_tokenizer(out)
    for name in names:
        model, state = build.train_recipe(name, out, tok)
        metrics = build.finish(name, out, tok, model, state)
        print(
            f"{name}: arith <=4 steps {metrics['arith_up_to_4']:.1%}, 5-12 steps "
            f"{metrics['arith_5_to_12']:.1%}, {state.seconds / 60:.1f} min",
            flush=True,
        )
    if {"zoo-small", "zoo-large"} <= {
        p.name for p in out.iterdir() if (p / "metrics.json").is_file()
    }:
        build.compare_pair(out, tok)


def _flat(metrics: dict[str, Any]) -> dict[str, float]:
    out = {
        "arith <=4 steps": metrics["arith_up_to_4"],
        "arith 5-12 steps": metrics["arith_5_to_12"],
        "arith steps right": metrics["arith_step_accuracy"],
        "retrieval": metrics["accuracy"]["retrieval"]["all"],
        "classify": metrics["accuracy"]["classify"]["all"],
        "text loss": metrics["heldout_loss"]["text"],
        "minutes": metrics["training"]["seconds"] / 60,
    }
    for key in ("step_agreement", "auc", "token_agreement"):
        if key in metrics.get("speculation", {}):
            out[key] = metrics["speculation"][key]
    return out


def _compare(rebuilt: Path, shipped: Path) -> None:
    print(f"{'model':<12} {'metric':<20} {'shipped':>9} {'rebuilt':>9}")
    for name in RECIPES:
        a, b = shipped / name / "metrics.json", rebuilt / name / "metrics.json"
        if not (a.is_file() and b.is_file()):
            print(f"{name:<12} (missing: {a if not a.is_file() else b})")
            continue
        old, new = _flat(json.loads(a.read_text())), _flat(json.loads(b.read_text()))
        for key, value in old.items():
            print(f"{name:<12} {key:<20} {value:>9.3f} {new.get(key, float('nan')):>9.3f}")


def _measure(folder: Path) -> None:
    from tokenizers import Tokenizer

    from . import build

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    now = build.measure(folder, tok)
    card = (
        json.loads((folder / "metrics.json").read_text())
        if (folder / "metrics.json").is_file()
        else None
    )
    print(json.dumps({"now": _flat({**now, "training": {"seconds": 0}})}, indent=2))
    if card:
        print(json.dumps({"card": _flat(card)}, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.zoo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the tokenizer and models from their recipes")
    b.add_argument("--out", type=Path, default=Path("results/zoo"))
    b.add_argument("models", nargs="*", help=f"some of {', '.join(RECIPES)} (default: all)")
    c = sub.add_parser("compare", help="print rebuilt metrics beside the shipped cards'")
    c.add_argument("rebuilt", type=Path)
    c.add_argument("shipped", type=Path, nargs="?", default=SHIPPED)
    m = sub.add_parser("measure", help="measure a model folder on the held-out problems")
    m.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        unknown = [n for n in args.models if n not in RECIPES]
        if unknown:
            parser.error(f"unknown model {unknown[0]!r}; the zoo has {', '.join(RECIPES)}")
        _build(args.out, args.models or list(RECIPES))
    elif args.command == "compare":
        _compare(args.rebuilt, args.shipped)
    else:
        _measure(args.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
