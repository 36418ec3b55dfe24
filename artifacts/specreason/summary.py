"""From the per-problem rows to what the figures and claims read: accuracy and mean latency per
run (method, tau) in each clock, speedups over the large model, acceptance by step position."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .paper_scale import HARDWARE

CLOCKS = {
    "a100-80g_s": "A100 (paper scale, priced)",
    "h100-sxm_s": "H100 (paper scale, priced)",
    "cpu_seconds": "this CPU (measured)",
}
assert set(CLOCKS) >= {f"{hw}_s" for hw in HARDWARE}


def label(method: str, tau: float) -> str:
    """A run's name in figures: the method, and its tau for the likelihood judge."""
    if method in ("specreason", "specreason+spec"):
        return f"{method} tau={tau:g}"
    return method


def runs(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, tau): accuracy, mean latency per clock, step acceptance, and the
    speedup over the large model per clock (mean latency over the same problems)."""
    f = frame.assign(tau=frame["tau"].fillna(-1.0))
    agg = f.groupby(["method", "tau"], sort=False).agg(
        accuracy=("correct", "mean"),
        problems=("correct", "size"),
        steps=("steps", "sum"),
        accepted_steps=("accepted_steps", "sum"),
        **{c: (c, "mean") for c in CLOCKS},
    )
    agg["acceptance"] = agg["accepted_steps"] / agg["steps"].where(agg["steps"] > 0)
    large = agg.xs("large", level="method").iloc[0]
    for c in CLOCKS:
        agg[f"speedup_{c}"] = large[c] / agg[c]
    agg = agg.reset_index()
    agg["tau"] = agg["tau"].where(agg["tau"] >= 0, np.nan)
    agg["run"] = [label(m, t) for m, t in zip(agg["method"], agg["tau"], strict=True)]
    return agg


def by_difficulty(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and mean latency per (run, difficulty)."""
    f = frame.assign(run=[label(m, t) for m, t in zip(frame["method"], frame["tau"], strict=True)])
    return (
        f.groupby(["run", "method", "difficulty"], sort=False)
        .agg(accuracy=("correct", "mean"), **{c: (c, "mean") for c in CLOCKS})
        .reset_index()
    )


def acceptance_by_position(frame: pd.DataFrame) -> pd.DataFrame:
    """Share of the small model's steps accepted at each step position (0-based), per
    SpecReason run."""
    rows = []
    f = frame[frame["method"].str.startswith("specreason")]
    for (method, tau), g in f.groupby(["method", "tau"], sort=False):
        for flags in g["accepted_by_position"].fillna("").astype(str):
            for pos, flag in enumerate(flags):
                rows.append({"run": label(method, tau), "position": pos, "accepted": flag == "a"})
    if not rows:
        return pd.DataFrame(columns=["run", "position", "acceptance", "steps"])
    return (
        pd.DataFrame(rows)
        .groupby(["run", "position"], sort=False)
        .agg(acceptance=("accepted", "mean"), steps=("accepted", "size"))
        .reset_index()
    )


def judge_steps(frame: pd.DataFrame) -> pd.DataFrame:
    """Every step the likelihood judge scored: its score and whether the small model's
    proposal was right (by the exact checker)."""
    rows = []
    f = frame[frame["judge"] == "likelihood"]
    for scores, right in zip(f["scores"], f["right_by_position"], strict=True):
        values = [float(x) for x in str(scores).split(",") if x and x != "nan"]
        for score, flag in zip(values, str(right), strict=False):
            rows.append({"score": score, "right": flag == "y"})
    return pd.DataFrame(rows, columns=["score", "right"])
