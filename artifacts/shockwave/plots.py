"""Figures laid out like Shockwave's: CDFs of job completion time and of finish-time fairness
per policy (from the percentiles each run stores), makespan and worst-case fairness bars, and
the scaling study (makespan and worst rho against cluster size)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from core.artifact import RunContext, anchor_right, color_map

from .baselines import BASELINES

POLICIES = ("Shockwave", *BASELINES)
COLORS = color_map(POLICIES)
CDF_QUANTILES = tuple(range(0, 101, 5))


def _cdf_rows(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = []
    for _, r in frame.iterrows():
        for q in CDF_QUANTILES:
            rows.append({"policy": r.policy, "value": r[f"{metric}_q{q}"], "fraction": q / 100})
    return pd.DataFrame(rows)


def plot_cluster(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    order = [p for p in POLICIES if p in set(frame.policy)]
    title = f"{int(frame.jobs.iloc[0])} jobs on {int(frame.gpus.iloc[0])} V100s"
    figs: dict[str, plt.Figure] = {}
    for metric, label, name in (
        ("jct", "job completion time (hours)", "jct-cdf"),
        ("rho", "finish-time fairness rho", "ftf-cdf"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        cdf = _cdf_rows(frame, metric)
        if metric == "jct":
            cdf["value"] = cdf["value"] / 3600
        sns.lineplot(
            data=cdf,
            x="value",
            y="fraction",
            hue="policy",
            hue_order=order,
            palette=COLORS,
            drawstyle="steps-post",
            ax=ax,
        )
        if metric == "rho":
            ax.axvline(1.0, color="0.4", ls=":", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of jobs")
        ax.set_title(title)
        ax.legend(fontsize=8, title=None)
        figs[name] = fig
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, (col, label) in zip(
        axes,
        (
            ("makespan_s", "makespan (hours)"),
            ("rho_max", "worst finish-time fairness"),
            ("unfair_fraction", "jobs with rho > 1"),
        ),
        strict=True,
    ):
        data = frame.assign(v=frame[col] / (3600 if col == "makespan_s" else 1))
        sns.barplot(data=data, x="policy", y="v", order=order, hue="policy", palette=COLORS, ax=ax)
        ax.set_xlabel("")
        ax.set_ylabel(label)
        anchor_right(ax, 45)
        if col == "makespan_s":
            bound = float(frame.work_bound_s.iloc[0]) / 3600
            ax.axhline(bound, color="0.3", ls="--", lw=1)
            ax.annotate(
                "GPU-hours / GPUs",
                (0, bound),
                xytext=(0, 3),
                textcoords="offset points",
                fontsize=8,
            )
    fig.suptitle(title)
    figs["summary"] = fig
    return figs


def plot_scale(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    order = [p for p in POLICIES if p in set(frame.policy)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
    for ax, (col, label) in zip(
        axes,
        (("makespan_s", "makespan (hours)"), ("rho_max", "worst finish-time fairness")),
        strict=True,
    ):
        data = frame.assign(v=frame[col] / (3600 if col == "makespan_s" else 1))
        sns.barplot(
            data=data, x="gpus", y="v", hue="policy", hue_order=order, palette=COLORS, ax=ax
        )
        ax.set_xlabel("GPUs (jobs: 220 / 460 / 900)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7, title=None)
    fig.suptitle("Scaling (Fig. 9)")
    return {"scale": fig}
