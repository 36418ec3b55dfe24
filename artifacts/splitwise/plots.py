"""Figures of the Splitwise trace characterization."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from core.artifact import RunContext, color_map


def plot_lengths(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """CDFs of prompt and generated tokens per service (the paper's token distributions)."""
    colors = color_map(frame["service"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), sharey=True)
    for ax, column, label in zip(
        axes, ("prompt_tokens", "output_tokens"), ("Prompt tokens", "Generated tokens"), strict=True
    ):
        sns.lineplot(
            data=frame,
            x=column,
            y="quantile",
            hue="service",
            palette=colors,
            ax=ax,
            drawstyle="steps-post",
            estimator=None,
            sort=False,
        )
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("CDF")
        ax.legend(title=None)
    fig.suptitle(f"{_source(ctx)}: token distributions")
    return {"token-cdfs": fig}


def plot_arrivals(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """Requests and prompt tokens per minute over the trace, per service."""
    colors = color_map(frame["service"])
    fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    sns.lineplot(data=frame, x="minute", y="requests", hue="service", palette=colors, ax=axes[0])
    sns.lineplot(
        data=frame,
        x="minute",
        y="prompt_tokens",
        hue="service",
        palette=colors,
        ax=axes[1],
        legend=False,
    )
    axes[0].set_ylabel("Requests / min")
    axes[1].set_ylabel("Prompt tokens / min")
    axes[1].set_xlabel("Minute of trace")
    axes[0].legend(title=None)
    fig.suptitle(f"{_source(ctx)}: arrivals")
    return {"arrivals": fig}


def _source(ctx: RunContext) -> str:
    if ctx.trace is not None:
        return f"Trace {ctx.trace.name}"
    return "Azure LLM inference trace 2023" + (
        " (first rows)" if ctx.scale.value == "smoke" else ""
    )
