"""A test artifact whose points sleep: two quick ones, then two that take minutes, so a test
can stop a run while every worker is in the middle of a point.

A long point holds SIGINT back while it naps, as a point busy in native code does not see
Ctrl-C before it returns (so a worker that gets the terminal's SIGINT keeps its point going).
``$SLEEPY_MARKS``, when set, is a folder where each long point leaves ``started-<x>`` as it
begins."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from core.artifact import Artifact, Experiment, Paper

LONG_S = 300.0


def nap(config: dict) -> dict:
    if config["sleep"] > 0:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        marks = os.environ.get("SLEEPY_MARKS")
        if marks:
            Path(marks, f"started-{config['x']}").write_text(str(os.getpid()))
    time.sleep(config["sleep"])
    return {"slept": config["sleep"]}


def nap_points(ctx) -> list[dict]:
    return [
        {"x": 0, "sleep": 0.0},
        {"x": 1, "sleep": 0.0},
        {"x": 2, "sleep": LONG_S},
        {"x": 3, "sleep": LONG_S},
    ]


SLEEPY = Artifact(
    name="sleepy",
    paper=Paper(title="On Naps", venue="Test'26"),
    summary="Points that sleep, to test interrupting a run.",
    experiments=[Experiment("naps", "quick and long naps", nap_points, nap)],
    claims=[],
)
