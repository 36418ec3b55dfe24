"""SpecReason's figures, laid out like the paper's: accuracy against latency per method (one
panel per clock), speedup over the large model against tau, acceptance by step position, and
accuracy and latency by difficulty."""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import pandas as pd
import seaborn as sns

from core.artifact import RunContext, color_map

from .real import METHODS
from .summary import CLOCKS, acceptance_by_position, by_difficulty, runs

MARKERS = {
    "large": "s",
    "small": "v",
    "spec-decode": "D",
    "specreason": "o",
    "specreason-oracle": "*",
    "specreason+spec": "P",
}


def plot_real(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    summary = runs(frame)
    colors = color_map(METHODS)
    return {
        "accuracy-latency": _accuracy_latency(summary, colors),
        "speedup-tau": _speedup_tau(summary),
        "acceptance-position": _acceptance_position(frame),
        "difficulty": _difficulty(frame, colors),
    }


def _accuracy_latency(summary: pd.DataFrame, colors: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, len(CLOCKS), figsize=(4.6 * len(CLOCKS), 3.8), squeeze=False)
    for ax, (clock, title) in zip(axes[0], CLOCKS.items(), strict=True):
        for method in METHODS:
            g = summary[summary["method"] == method].sort_values("tau")
            if g.empty:
                continue
            ax.plot(
                g[clock],
                g["accuracy"],
                marker=MARKERS[method],
                color=colors[method],
                linestyle="-" if len(g) > 1 else "none",
                markersize=9 if method == "specreason-oracle" else 6,
                label=method,
            )
            if method == "specreason":
                for _, r in g.iterrows():
                    ax.annotate(
                        f"{r['tau']:g}", (r[clock], r["accuracy"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points",
                    )  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(mticker.NullFormatter())
        ax.set_xlabel("mean latency per problem (s)")
        ax.set_ylabel("accuracy")
        ax.set_title(title, fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, -0.12))
    fig.suptitle("Accuracy vs latency (numbers: tau of the likelihood judge)")
    return fig


def _speedup_tau(summary: pd.DataFrame) -> plt.Figure:
    g = summary[summary["method"] == "specreason"]
    long = g.melt(
        id_vars=["tau"],
        value_vars=[f"speedup_{c}" for c in CLOCKS],
        var_name="clock",
        value_name="speedup",
    )
    long["clock"] = long["clock"].str.removeprefix("speedup_").map(CLOCKS)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sns.lineplot(data=long, x="tau", y="speedup", hue="clock", marker="o", ax=ax)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), title=None)
    ax.axhline(1.0, color="0.4", linewidth=0.8, linestyle="--")
    ax.set_xlabel("tau (accept a step when its score >= tau)")
    ax.set_ylabel("speedup over the large model")
    ax.set_title("SpecReason speedup vs tau")
    return fig


def _acceptance_position(frame: pd.DataFrame) -> plt.Figure:
    acc = acceptance_by_position(frame)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    acc = acc[acc["steps"] >= 3]  # a position few problems reach says little
    if not acc.empty:
        sns.lineplot(data=acc, x="position", y="acceptance", hue="run", marker="o", ax=ax)
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), title=None)
    ax.set_xlabel("step position (0 = first step; positions with >= 3 steps)")
    ax.set_ylabel("share of small-model steps accepted")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title("Acceptance per step position")
    return fig


def _difficulty(frame: pd.DataFrame, colors: dict) -> plt.Figure:
    d = by_difficulty(frame)
    keep = d["method"].isin(["large", "small", "spec-decode", "specreason-oracle"]) | d[
        "run"
    ].str.contains("tau=8$", regex=True)
    d = d[keep]
    palette = {r: colors[m] for r, m in zip(d["run"], d["method"], strict=True)}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    sns.lineplot(
        data=d, x="difficulty", y="accuracy", hue="run", palette=palette, marker="o", ax=axes[0],
        legend=False,
    )  # fmt: skip
    sns.lineplot(
        data=d, x="difficulty", y="a100-80g_s", hue="run", palette=palette, marker="o", ax=axes[1],
    )  # fmt: skip
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1.0), title=None)
    axes[0].set_ylabel("accuracy")
    axes[1].set_ylabel("mean latency, A100 priced (s)")
    for ax in axes:
        ax.set_xlabel("problem difficulty (steps)")
    fig.suptitle("By difficulty")
    return fig
