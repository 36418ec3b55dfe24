"""Figures laid out like DPF's Fig. 6a (one block) and Fig. 8 (many blocks): pipelines granted
against N (the number of arrivals that unlock a block; DPF-T and RR-T unlock over the time N
arrivals take), FCFS as a flat line; and the Renyi-vs-basic comparison."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from core.artifact import RunContext, color_map

from .policies import POLICIES

COLORS = color_map(POLICIES)
MARKERS = {"FCFS": "", "DPF-N": "o", "DPF-T": "s", "RR-N": "^", "RR-T": "v"}


def _granted_vs_n(frame: pd.DataFrame, title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    swept = frame[frame.policy != "FCFS"]
    order = [p for p in POLICIES if p in set(swept.policy)]
    sns.lineplot(
        data=swept,
        x="n",
        y="granted",
        hue="policy",
        style="policy",
        hue_order=order,
        style_order=order,
        markers={p: MARKERS[p] for p in order},
        dashes=False,
        palette=COLORS,
        errorbar=("pi", 100),
        ax=ax,
    )
    fcfs = frame[frame.policy == "FCFS"]
    if not fcfs.empty:
        ax.axhline(fcfs.granted.mean(), color=COLORS["FCFS"], ls="--", label="FCFS")
    ax.set_xlabel("N (arrivals that unlock a block; T = N x mean inter-arrival)")
    ax.set_ylabel("pipelines granted")
    ax.set_title(title)
    ax.legend(title=None)
    return fig


def plot_single(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    seeds = frame.seed.nunique()
    note = f" (mean and range over {seeds} seeds)" if seeds > 1 else ""
    return {"single-block": _granted_vs_n(frame, f"One block (Fig. 6a){note}")}


def plot_multi(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    blocks = int(frame.blocks.iloc[0])
    fig = _granted_vs_n(frame, f"{blocks} blocks, 12.8 pipelines/s (Fig. 8)")
    fig.axes[0].set_xscale("log")
    return {"multi-block": fig}


def plot_renyi(frame: pd.DataFrame, ctx: RunContext) -> Mapping[str, plt.Figure]:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    data = frame.assign(series=frame.policy + " / " + frame.accounting)
    sns.lineplot(
        data=data[data.policy != "FCFS"],
        x="n_scale",
        y="granted",
        hue="policy",
        style="accounting",
        markers=True,
        palette={p: COLORS[p] for p in ("DPF-N", "DPF-T")},
        ax=ax,
    )
    for acc, ls in (("basic", "--"), ("renyi", ":")):
        f = frame[(frame.policy == "FCFS") & (frame.accounting == acc)]
        if not f.empty:
            ax.axhline(f.granted.mean(), color=COLORS["FCFS"], ls=ls, label=f"FCFS / {acc}")
    ax.set_yscale("log")
    ax.set_xlabel("N / N_max (N_max: 100 basic, 14514 Renyi)")
    ax.set_ylabel("pipelines granted")
    blocks = int(frame.blocks.iloc[0])
    ax.set_title(f"Renyi DP vs basic composition ({blocks} blocks, 234 pipelines/s)")
    ax.legend(fontsize=8)
    return {"renyi": fig}
