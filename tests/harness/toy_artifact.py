"""A toy artifact that exercises the harness end to end: sweeps, resume, claims, plots.

Each call of a point function leaves a file in ``$TOY_CALLS`` so tests can count calls even when
points run in other processes; ``$TOY_FAIL_X`` makes the point with that ``x`` raise.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from core.artifact import (
    Artifact,
    Claim,
    Experiment,
    Paper,
    Scale,
    TraceOption,
    at_least,
    at_most,
    close_to,
)
from core.data import open_data_file

SIZES = {Scale.SMOKE: 3, Scale.DEFAULT: 5, Scale.FULL: 8}


def _record_call(tag: str) -> None:
    calls = os.environ.get("TOY_CALLS")
    if calls:
        Path(calls, f"{tag}-{uuid.uuid4().hex}").touch()


def square(config: dict) -> dict:
    _record_call(f"square{config['x']}")
    if os.environ.get("TOY_FAIL_X") == str(config["x"]):
        raise ValueError(f"planned failure at x={config['x']}")
    rng = np.random.default_rng(config["seed"])
    out = {"y": config["x"] ** 2, "noise": float(rng.normal())}
    if config.get("trace"):
        with open_data_file(config["trace"]) as f:
            out["trace_lines"] = sum(1 for _ in f)
    return out


def cubes(config: dict) -> list[dict]:
    _record_call("cubes")
    return [{"k": k, "z": k**3 * config["scale_factor"]} for k in range(3)]


def square_points(ctx) -> list[dict]:
    trace = {"trace": str(ctx.trace)} if ctx.trace else {}
    return [{"x": x, **trace} for x in range(SIZES[ctx.scale])]


def plot_squares(frame, ctx):
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(3, 2))
    sns.lineplot(data=frame, x="x", y="y", marker="o", ax=ax)
    return {"squares": fig}


def check_trace(path: Path) -> None:
    if path.suffix != ".txt":
        raise ValueError(f"{path}: toy traces must be .txt files")


TOY = Artifact(
    name="toy",
    paper=Paper(title="On Squares", venue="Toy'26"),
    summary="Squares and cubes, to test the harness.",
    experiments=[
        Experiment("squares", "y = x^2 over x", square_points, square, plot_squares),
        Experiment(
            "cubes", "z = k^3", lambda ctx: [{"scale_factor": 1}, {"scale_factor": 2}], cubes
        ),
    ],
    claims=[
        Claim(
            "max-square",
            "The largest square is at least 4.",
            "4",
            experiments=("squares",),
            measure=lambda r: r["squares"]["y"].max(),
            expect=at_least(4),
        ),
        Claim(
            "small-cube",
            "Cubes stay below 5.",
            "5",
            experiments=("cubes",),
            measure=lambda r: r["cubes"]["z"].max(),
            expect=at_most(5),
        ),
        Claim(
            "mean-noise",
            "Noise averages to zero.",
            "0",
            experiments=("squares",),
            measure=lambda r: r["squares"]["noise"].mean(),
            expect=close_to(0.0, 3.0),
        ),
    ],
    trace=TraceOption(help="a .txt file; its line count is reported", check=check_trace),
)


def where(config: dict) -> dict:
    """Which process ran the point, and when (tests of exclusive points)."""
    import time

    return {"pid": os.getpid(), "finished_ns": time.time_ns()}
