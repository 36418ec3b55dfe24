"""Figures: all-to-all time over the bound against routing skew per ordering; Aurora's speedup
over each baseline per NIC speed (homogeneous and heterogeneous clusters); the step-by-step
gains (order, placement, co-location); the heuristic against the ILP optimum; and the same
on the tiny Mixtral's recorded routing."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from core.artifact import RunContext, color_map

from .systems import BASELINES, NETWORKS, ORDERINGS, SPEED_KEYS, SYSTEMS, speedups

ORDER_COLORS = color_map(ORDERINGS)
SYSTEM_NAMES = [s.name for s in SYSTEMS]
SYSTEM_COLORS = color_map(SYSTEM_NAMES)
CLUSTERS = ("homogeneous", "heterogeneous")


def plot_alltoall(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True, sharey=True, squeeze=False)
    for r, bw in enumerate(CLUSTERS):
        for c, pop in enumerate(("shared", "per-source")):
            ax = axes[r][c]
            sub = frame[(frame.bandwidth == bw) & (frame.popularity == pop)]
            sns.lineplot(
                data=sub,
                x="skew",
                y="time_over_bound",
                hue="ordering",
                style="gpus",
                hue_order=list(ORDERINGS),
                palette=ORDER_COLORS,
                markers=True,
                errorbar=("pi", 100),
                ax=ax,
                legend=(r == 0 and c == 1),
            )
            ax.axhline(1.0, color="0.3", ls=":", lw=1)
            ax.set_title(f"{bw} ports, {pop} popularity", fontsize=10)
            ax.set_xlabel("Zipf skew of expert popularity")
            ax.set_ylabel("all-to-all time / lower bound")
    leg = axes[0][1].get_legend()
    if leg is not None:
        leg.set_bbox_to_anchor((1.02, 1.0))
        leg._loc = 2  # upper left, outside the axes
    fig.suptitle("One layer's dispatch all-to-all under four orderings")
    return {"alltoall": fig}


def _speedups(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(
        [speedups(frame, b).rename("speedup").reset_index().assign(baseline=b) for b in BASELINES],
        ignore_index=True,
    )


def plot_speedup(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    sp = _speedups(frame)
    nets = [n for n in NETWORKS if n in set(frame.network)]
    base_colors = {b: SYSTEM_COLORS[b] for b in BASELINES}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind in zip(axes, CLUSTERS, strict=True):
        sns.barplot(
            data=sp[sp.cluster == kind],
            x="network",
            y="speedup",
            hue="baseline",
            order=nets,
            hue_order=list(BASELINES),
            palette=base_colors,
            estimator="max",
            errorbar=None,
            ax=ax,
        )
        ax.axhline(1.0, color="0.3", ls=":", lw=1)
        ax.set_title(f"{kind} cluster (8 GPUs)")
        ax.set_xlabel("NIC speed per GPU")
        ax.set_ylabel("Aurora's speedup (max over skews)")
        ax.legend(fontsize=8, title="over")
    fig.suptitle("Inference time of two MoE models' layer: speedup of Aurora", y=1.03)
    figs = {"speedup": fig}

    t = frame.pivot_table(
        index=[k for k in SPEED_KEYS if k in frame],
        columns="system",
        values=["time_ms", "utilization"],
    )
    norm = (
        (t["time_ms"].div(t["time_ms"]["EP (rotation)"], axis=0))
        .stack()
        .rename("rel")
        .reset_index()
    )
    util = t["utilization"].stack().rename("util").reset_index()
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True, squeeze=False)
    for c, kind in enumerate(CLUSTERS):
        for r, (data, col, label) in enumerate(
            (
                (norm, "rel", "layer time / EP (rotation), median"),
                (util, "util", "GPU utilization, median"),
            )
        ):
            ax = axes[r][c]
            sns.barplot(
                data=data[data.cluster == kind],
                x="network",
                y=col,
                hue="system",
                order=nets,
                hue_order=SYSTEM_NAMES,
                palette=SYSTEM_COLORS,
                estimator="median",
                errorbar=None,
                ax=ax,
                legend=(r == 0 and c == 1),
            )
            ax.set_ylabel(label)
            ax.set_xlabel("NIC speed per GPU")
            if r == 0:
                ax.set_title(f"{kind} cluster")
    leg = axes[0][1].get_legend()
    if leg is not None:
        leg.set_bbox_to_anchor((1.02, 1.0))
        leg._loc = 2
    fig.suptitle("Step by step: ordering, placement, co-location")
    figs["steps"] = fig
    return figs


def plot_optimality(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    f = frame.assign(
        case=frame.models.map({1: "one model", 2: "two co-located"}),
        gap=frame.ratio.where(frame.optimal, frame.ratio_vs_bound),
    )
    fig, ax = plt.subplots(figsize=(6.4, 4))
    sns.stripplot(data=f, x="gpus", y="gap", hue="case", dodge=True, size=6, ax=ax)
    ax.axhline(1.07, color="0.3", ls="--", lw=1)
    ax.annotate("paper: 1.07x", (0, 1.07), xytext=(0, 3), textcoords="offset points", fontsize=8)
    ax.set_xlabel("GPUs (heterogeneous)")
    ax.set_ylabel("heuristic / ILP optimum")
    ax.set_title("Aurora's placement against the exact ILP")
    ax.legend(fontsize=8, title=None)
    return {"optimality": fig}


def plot_recorded(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    a2a = frame[frame.kind == "alltoall"]
    sp = _speedups(frame[frame.kind == "speedup"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sns.barplot(
        data=a2a,
        x="cluster",
        y="time_over_bound",
        hue="ordering",
        hue_order=list(ORDERINGS),
        palette=ORDER_COLORS,
        errorbar=None,
        ax=axes[0],
    )
    axes[0].set_ylabel("all-to-all time / lower bound (mean of 2 layers)")
    axes[0].set_xlabel("ports")
    axes[0].legend(fontsize=8, title=None)
    nets = [n for n in NETWORKS if n in set(sp.network)]
    sns.barplot(
        data=sp,
        x="network",
        y="speedup",
        hue="cluster",
        order=nets,
        errorbar=None,
        ax=axes[1],
        estimator="max",
    )
    axes[1].set_ylabel("Aurora's speedup over EP (rotation)")
    axes[1].set_xlabel("NIC speed per GPU")
    axes[1].legend(fontsize=8, title=None)
    fig.suptitle("Routing recorded from the tiny Mixtral (8 experts, top-2)")
    return {"recorded": fig}
