"""The figures, laid out like the paper's: Fig. 10 (per-token latency and throughput against
request rate per batching system), the skew sweep, Fig. 11a (queueing delay against rate with
and without migration, and ILP solve times) and the real engine's policies."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from core.artifact import RunContext, color_map, figure_style, item_legend, log_axis, marker_lines

SYSTEMS = ["vllm", "peft", "slora", "dlora"]
MARKERS = {
    "vllm": "s",
    "peft": "v",
    "slora": "^",
    "dlora": "o",
    "round-robin": "D",
    "rr-migration": "X",
    "proactive": "P",
}
COLORS = color_map([*SYSTEMS, "round-robin", "rr-migration", "proactive"])


def _lines(
    frame: pd.DataFrame, x: str, panels: list[tuple[str, str]], order: list[str], title: str
):
    order = [s for s in order if s in set(frame["system"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (metric, label) in zip(axes[0], panels, strict=True):
        marker_lines(ax, frame, x, metric, order, COLORS, MARKERS, key="system")
        ax.set_ylabel(label)
        ax.set_xlabel(x.replace("_", " "))
        if metric.endswith("latency_s") or metric == "queueing_s":
            log_axis(ax)
    item_legend(
        fig,
        order,
        COLORS,
        markers=MARKERS,
        loc="upper center",
        ncol=len(order),
        bbox_to_anchor=(0.5, 1.08),
    )
    fig.suptitle(title, y=1.15)
    return fig


def plot_batching(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    figs = {}
    with figure_style():
        for model, g in frame.groupby("model"):
            figs[f"fig10-{model}"] = _lines(
                g,
                "rate",
                [
                    ("per_token_latency_s", "per-token latency (s)"),
                    ("throughput_tok_s", "tokens/s"),
                ],
                SYSTEMS,
                f"Fig. 10: {model}, {g['adapters'].iloc[0]} adapters, one simulated A100",
            )
    return figs


def plot_skew(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    with figure_style():
        fig = _lines(
            frame,
            "skew",
            [("per_token_latency_s", "per-token latency (s)"), ("throughput_tok_s", "tokens/s")],
            SYSTEMS,
            f"Adapter popularity skew (Zipf exponent) at {frame['rate'].iloc[0]:g} req/s",
        )
    return {"skew": fig}


def plot_cluster(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    with figure_style():
        fig = _lines(
            frame,
            "rate",
            [
                ("queueing_s", "mean queueing delay (s)"),
                ("per_token_latency_s", "per-token latency (s)"),
            ],
            ["round-robin", "rr-migration", "proactive", "dlora"],
            f"Fig. 11a: {frame['replicas'].iloc[0]} replicas, {frame['adapters'].iloc[0]} adapters",
        )
        solves = frame[frame["system"].isin(["rr-migration", "dlora"])]
        fig2, ax = plt.subplots(figsize=(4.5, 3.2))
        sns.barplot(data=solves, x="rate", y="ilp_solve_max_s", hue="system", palette=COLORS, ax=ax)
        ax.set_ylabel("slowest ILP solve (s)")
        ax.set_title("ILP solve time (HiGHS)")
    return {"fig11a-queueing": fig, "fig11a-ilp": fig2}


def _policy_bars(frame: pd.DataFrame, metric: str, label: str, ax) -> None:
    """One bar per policy (mean over rounds, with its spread) in the paper's system order."""
    order = [s for s in SYSTEMS if s in set(frame["policy"])]
    sns.barplot(
        data=frame,
        x="policy",
        y=metric,
        order=order,
        hue="policy",
        palette=COLORS,
        ax=ax,
        legend=False,
    )
    ax.set_ylabel(label)


def plot_real(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    with figure_style():
        fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2))
        _policy_bars(frame, "cpu_s", "engine CPU seconds", axes[0])
        _policy_bars(frame, "identical_fraction", "outputs equal to alone runs", axes[1])
        axes[1].set_ylim(0, 1.05)
        fig.suptitle("Real engine on this CPU: tiny Llama, 4 PEFT adapters")
    return {"real-mode": fig}


def plot_zoo(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    """Accuracy of the base model and of each adapter on its sub-task, and the request
    latency of each policy on the real stream."""
    first = frame.iloc[0]
    names = [c.removeprefix("acc_") for c in frame.columns if c.startswith("acc_")]
    acc = pd.DataFrame(
        [
            {"sub-task": n, "model": who, "accuracy": first[f"{col}{n}"]}
            for n in names
            for who, col in (("base model", "base_acc_"), ("its adapter", "acc_"))
        ]
    )
    with figure_style():
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.4))
        sns.barplot(data=acc, x="sub-task", y="accuracy", hue="model", ax=axes[0])
        axes[0].set_ylim(0, 1.05)
        axes[0].tick_params(axis="x", labelrotation=20)
        axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=2, frameon=False)
        _policy_bars(frame, "latency_s", "mean request latency (s)", axes[1])
        fig.suptitle("Real engine on this CPU: zoo-small with trained LoRA adapters")
    return {"zoo": fig}
