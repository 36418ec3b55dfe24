"""Figures laid out like InferCept's: normalized latency against request rate per policy and
model (Fig. 8), completed requests per second, the share of forward time spent recomputing,
GPU memory x time wasted per policy, the per-augmentation breakdown, and the real-engine run.
Also the latency bound's highest sustainable rate per policy (:func:`slo_rates`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from core.artifact import RunContext, color_map
from core.metrics import highest_rate_within

from .sim import AUGMENTATIONS, ESTIMATED, POLICIES, SETUPS

SLO_FACTOR = 5.0
"""A policy sustains a rate when its mean normalized latency is at most this many times the
unloaded normalized latency (every request served alone) of the same model and workload."""

ALL_POLICIES = (*POLICIES, ESTIMATED)
COLORS = color_map(ALL_POLICIES)
WASTE_RATES = (1.0, 2.0, 3.0)
WASTE_PARTS = {"waste_preserve_gbs": "preserved while paused", "waste_recompute_gbs": "recompute",
               "waste_swap_gbs": "swap stall"}


def setup_label(frame: pd.DataFrame) -> pd.Series:
    return frame["setup"].map(lambda s: SETUPS[s].label if s in SETUPS else s)


def slo_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (setup, policy): the highest rate whose mean normalized latency is within the bound
    (0 when none is), by linear interpolation between the last swept rate that meets it and
    the first that does not; ``saturated`` is False when every swept rate meets it (the rate
    is then only a lower bound)."""
    rows = []
    for (setup, policy), g in frame.groupby(["setup", "policy"]):
        g = g.sort_values("rate")
        bound = SLO_FACTOR * float(g["unloaded_norm_latency"].iloc[0])
        best, saturated = highest_rate_within(g["rate"], g["norm_latency_mean"], bound)
        ok = g["norm_latency_mean"].to_numpy() <= bound
        rows.append({"setup": setup, "policy": policy, "slo_rate": best, "slo_bound": bound,
                     "saturated": saturated,
                     "last_ok_rate": float(g["rate"].to_numpy()[ok].max()) if ok.any() else np.nan})
    return pd.DataFrame(rows)


def _order(present: set[str]) -> list[str]:
    return [p for p in ALL_POLICIES if p in present]


def _lines(frame: pd.DataFrame, y: str, ylabel: str, *, log: bool, bound: bool = False
           ) -> plt.Figure:
    frame = frame.assign(model=setup_label(frame))
    models = list(dict.fromkeys(frame["model"]))
    fig, axes = plt.subplots(1, len(models), squeeze=False, figsize=(4.6 * len(models), 3.4))
    for j, model in enumerate(models):
        ax = axes[0][j]
        g = frame[frame["model"] == model]
        order = _order(set(g["policy"]))
        sns.lineplot(data=g, x="rate", y=y, hue="policy", style="policy", hue_order=order,
                     style_order=order, markers=True, dashes=False, palette=COLORS, ax=ax,
                     legend=(j == len(models) - 1))
        if bound:
            ax.axhline(SLO_FACTOR * g["unloaded_norm_latency"].iloc[0], color="grey", ls=":",
                       lw=1, label=f"bound ({SLO_FACTOR:g}x unloaded)")
        if log:
            ax.set_yscale("log")
        ax.set_title(model)
        ax.set_xlabel("requests/s")
        ax.set_ylabel(ylabel if j == 0 else "")
    last = axes[0][-1]
    if last.get_legend() is not None:
        sns.move_legend(last, "upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return fig


def plot_sim(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    main = frame[frame["policy"] != ESTIMATED]
    figs = {
        "norm-latency": _lines(main, "norm_latency_mean", "normalized latency (s/token)",
                               log=True, bound=True),
        "norm-latency-p90": _lines(main, "norm_latency_p90", "p90 normalized latency (s/token)",
                                   log=True),
        "norm-latency-p99": _lines(main, "norm_latency_p99", "p99 normalized latency (s/token)",
                                   log=True),
        "completed-rps": _lines(main, "completed_rps", "completed requests/s (in the window)",
                                log=False),
    }
    # the highest rate under the latency bound
    slo = slo_rates(frame)
    slo["model"] = setup_label(slo)
    grid = sns.catplot(data=slo, x="policy", y="slo_rate", col="model", kind="bar",
                       order=_order(set(slo["policy"])), palette=COLORS, hue="policy",
                       hue_order=_order(set(slo["policy"])), legend=False, sharey=False,
                       height=3.2, aspect=1.4)
    grid.set_axis_labels("", f"req/s with latency <= {SLO_FACTOR:g}x unloaded")
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=30)
    figs["slo-rate"] = grid.figure

    # share of forward time spent recomputing
    figs["recompute-share"] = _lines(main, "recompute_share", "share of forward time recomputing",
                                     log=False)

    # GPU memory x time wasted, by cause, at a few rates
    rates = [r for r in WASTE_RATES if r in set(main["rate"])] or sorted(set(main["rate"]))[:3]
    sub = main[main["rate"].isin(rates)]
    long = sub.melt(id_vars=["setup", "rate", "policy"], value_vars=list(WASTE_PARTS),
                    var_name="cause", value_name="gbs")
    long["cause"] = long["cause"].map(WASTE_PARTS)
    long["model"] = setup_label(long)
    long["rate"] = long["rate"].map(lambda r: f"{r:g} req/s")
    grid = sns.catplot(data=long, x="policy", y="gbs", hue="cause", col="rate", row="model",
                       kind="bar", order=_order(set(long["policy"])),
                       col_order=[f"{r:g} req/s" for r in rates], sharey=False,
                       height=2.6, aspect=1.3)
    grid.set_axis_labels("", "GB x s wasted")
    grid.set_titles("{row_name}, {col_name}", size=8)
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=40, labelsize=7)
    figs["waste"] = grid.figure

    # InferCept with true call durations (oracle) and per-kind mean durations
    both = set(frame.loc[frame["policy"] == ESTIMATED, "setup"])
    ic = frame[frame["policy"].isin(["infercept", ESTIMATED]) & frame["setup"].isin(both)]
    if both:
        figs["oracle"] = _lines(ic, "norm_latency_mean", "normalized latency (s/token)",
                                log=True, bound=True)
    return figs


def plot_breakdown(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """Per augmentation type alone: normalized latency against load, per policy."""
    kinds = [k for k in AUGMENTATIONS if k in set(frame["kind"])]
    fig, axes = plt.subplots(1, len(kinds), squeeze=False, figsize=(2.9 * len(kinds), 3.2))
    for j, kind in enumerate(kinds):
        ax = axes[0][j]
        g = frame[frame["kind"] == kind]
        order = _order(set(g["policy"]))
        sns.lineplot(data=g, x="rate", y="norm_latency_mean", hue="policy", style="policy",
                     hue_order=order, style_order=order, markers=True, dashes=False,
                     palette=COLORS, ax=ax, legend=(j == len(kinds) - 1))
        ax.set_yscale("log")
        ax.set_title(kind)
        ax.set_xlabel("requests/s")
        ax.set_ylabel("normalized latency (s/token)" if j == 0 else "")
    last = axes[0][-1]
    if last.get_legend() is not None:
        sns.move_legend(last, "upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("GPT-J-6B, each augmentation alone", y=1.03)
    fig.tight_layout()
    return {"breakdown": fig}


def plot_real(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """The real engine on this CPU: normalized latency and recomputed tokens per policy."""
    order = _order(set(frame["policy"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    long = frame.melt(id_vars=["policy"], value_vars=["norm_latency_mean", "norm_latency_p90"],
                      var_name="stat", value_name="s_per_token")
    long["stat"] = long["stat"].map({"norm_latency_mean": "mean", "norm_latency_p90": "p90"})
    sns.barplot(data=long, x="policy", y="s_per_token", hue="stat", order=order, ax=axes[0])
    axes[0].set_ylabel("normalized latency (s/token, measured)")
    axes[0].set_xlabel("")
    sns.barplot(data=frame, x="policy", y="recomputed_tokens", hue="policy", order=order,
                hue_order=order, palette=COLORS, legend=False, ax=axes[1])
    axes[1].set_ylabel("recomputed tokens")
    axes[1].set_xlabel("")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("real engine, tiny Llama on this CPU", y=1.02)
    fig.tight_layout()
    return {"real": fig}
