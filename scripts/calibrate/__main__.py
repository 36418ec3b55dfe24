"""``python -m scripts.calibrate``: measure a step profile of the real engine on this device.

Same as ``nox -s calibrate -- [options]``. Writes ``data/profiles/<device>-<model>.json`` (or
``--out``), which :meth:`core.sim.profiled.ProfiledCostModel.load` reads.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import (
    DEFAULT_GRID,
    DEFAULT_MODEL,
    MODELS,
    QUICK_GRID,
    EngineSettings,
    calibrate,
    default_settings,
    model_config,
)

if TYPE_CHECKING:
    from core.sim.profiled import ProfiledCostModel

DTYPES = ("float32", "bfloat16", "float16")


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def build_parser(prog: str = "python -m scripts.calibrate") -> argparse.ArgumentParser:
    d = EngineSettings()
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Calibrate the simulator's profiled cost model: run the real engine on crafted "
            "batches (prefill by tokens and context, decode by batch and context, mixed steps), "
            "time every engine step and write the profile (tables, raw samples, provenance). "
            "A few minutes on 2 CPU cores with the default model and grid."
        ),
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model to build with random weights: {', '.join(MODELS)}, a core preset "
        f"(e.g. tiny-llama-125m) or a config.json path (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="profile to write (default data/profiles/<device>-<model>.json)",
    )
    p.add_argument(
        "--threads",
        type=_positive,
        default=None,
        help="torch threads (default 1 on a CPU: steadier when other work shares the "
        "cores; the profile records it and the fidelity benchmark reuses it)",
    )
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights and activations")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if present)"
    )
    p.add_argument(
        "--repeats",
        type=_positive,
        default=None,
        help="recorded steps per cell; their mean without the extremes is kept "
        f"(default {DEFAULT_GRID.repeats})",
    )
    p.add_argument("--seed", type=int, default=0, help="model weights and prompts (default 0)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny grid, one repeat: seconds with tiny-llama-smoke; for tests",
    )
    g = p.add_argument_group("engine settings (the simulation must use the same)")
    g.add_argument("--block-size", type=_positive, default=d.block_size)
    g.add_argument("--num-kv-blocks", type=_positive, default=d.num_kv_blocks)
    g.add_argument("--max-num-batched-tokens", type=_positive, default=d.max_num_batched_tokens)
    g.add_argument("--max-num-seqs", type=_positive, default=d.max_num_seqs)
    g.add_argument(
        "--max-model-len",
        type=_positive,
        default=None,
        help=f"context limit (default: the model's positions, at most {d.max_model_len})",
    )
    g.add_argument("--prefix-caching", action="store_true", help="enable prefix caching")
    return p


def settings_from(args: argparse.Namespace) -> EngineSettings:
    changes = dict(
        block_size=args.block_size,
        num_kv_blocks=args.num_kv_blocks,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        enable_prefix_caching=args.prefix_caching,
        seed=args.seed,
    )
    if args.max_model_len is not None:
        changes["max_model_len"] = args.max_model_len
    return default_settings(model_config(args.model), **changes)


def default_threads(device: str | None) -> int | None:
    """1 on a CPU (see ``--threads``); leave torch's choice on a GPU."""
    import torch

    on_gpu = (
        device is not None
        and not str(device).startswith("cpu")
        or (device is None and torch.cuda.is_available())
    )
    return None if on_gpu else 1


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(**({"prog": prog} if prog else {})).parse_args(argv)
    from core.sim.profiled import ProfiledCostModel, write_profile

    from . import default_profile_path

    grid = (QUICK_GRID if args.quick else DEFAULT_GRID).with_repeats(args.repeats)
    threads = args.threads if args.threads is not None else default_threads(args.device)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    profile = calibrate(
        args.model,
        settings=settings,
        grid=grid,
        dtype=args.dtype,
        device=args.device,
        threads=threads,
        seed=args.seed,
    )
    out = args.out or default_profile_path(profile["device"], args.model)
    write_profile(profile, out)
    model = ProfiledCostModel.load(out)
    print(render(profile, model))
    print(f"\nwrote {out} in {time.perf_counter() - t0:.0f} s")
    return 0


def render(profile: dict, model: ProfiledCostModel) -> str:
    """A short summary: device, a few step times, the checks."""
    from scripts.bench.report import format_table

    dev = profile["device"]
    g = profile["grid"]
    L0 = g["decode_contexts"][0]
    rows = []
    for n in g["prefill_tokens"]:
        rows.append([f"prefill {n} tokens, context 0", model.step_time([(n, 0)]) * 1e3])
    for b in g["decode_batches"]:
        rows.append([f"decode batch {b}, context {L0}", model.step_time([], [L0] * b) * 1e3])
    head = (
        f"Step profile of {profile['model']['name']} ({profile['model']['parameters']:,} "
        f"parameters, {profile['dtype']}) on {dev['name']} ({dev['type']}, "
        f"{profile['threads']} threads)"
    )
    table = format_table(["step", "ms"], rows, title=head, formats=[None, ".2f"])
    checks = [
        [
            k,
            v["samples"],
            v["median_measured_s"] * 1e3,
            v["median_predicted_s"] * 1e3,
            None if v["mape"] is None else 100 * v["mape"],
        ]
        for k, v in profile["checks"].items()
    ]
    ctable = format_table(
        ["steps", "n", "measured ms", "predicted ms", "MAPE %"],
        checks,
        title="Model against every recorded step (grid kinds: noise around "
        "the means; check:*: compositions outside the tables)",
        formats=[None, None, ".2f", ".2f", ".1f"],
    )
    return table + "\n\n" + ctable


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
