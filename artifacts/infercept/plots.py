"""Figures laid out like InferCept's: normalized latency against request rate per policy and
model (Fig. 8), completed requests per second, the share of forward time spent recomputing,
GPU memory x time wasted per policy, the per-augmentation breakdown, and the real-engine run.
Also the latency bound's highest sustainable rate per policy (:func:`slo_rates`) and the real
run's medians over rounds (:func:`real_summary`).

One colour per policy in every figure (:data:`COLORS`); the causes of waste are greys, so no
colour means two things. Titles say what the run swept (scale, windows, rounds)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from core.artifact import (
    RunContext,
    anchor_right,
    color_map,
    item_legend,
    log_axis,
    marker_lines,
    spread_panels,
)
from core.metrics import RoundsSummary, highest_rate_within, summarize_rounds

from .sim import ESTIMATED, LONG_KINDS, POLICIES, SETUPS, SHORT_KINDS

SLO_FACTOR = 5.0
"""A policy sustains a rate when its mean normalized latency is at most this many times the
unloaded normalized latency (every request served alone) of the same model and workload."""

ALL_POLICIES = (*POLICIES, ESTIMATED)
COLORS = color_map(ALL_POLICIES)
MARKERS = dict(zip(ALL_POLICIES, ("o", "X", "s", "P", "D", "^"), strict=True))
WASTE_RATES = (1.0, 2.0, 3.0)
WASTE_PARTS = {
    "waste_preserve_gbs": "preserved while paused",
    "waste_recompute_gbs": "recompute",
    "waste_swap_gbs": "swap stall",
}
WASTE_COLORS = dict(zip(WASTE_PARTS.values(), ("#3b3b3b", "#8c8c8c", "#cfcfcf"), strict=True))
"""Greys: the causes of waste must not look like policies."""
LEGEND_FONT = 11


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
        rows.append(
            {
                "setup": setup,
                "policy": policy,
                "slo_rate": best,
                "slo_bound": bound,
                "saturated": saturated,
                "top_rate": float(g["rate"].max()),
                "last_ok_rate": float(g["rate"].to_numpy()[ok].max()) if ok.any() else np.nan,
            }
        )
    return pd.DataFrame(rows)


def _order(present: set[str]) -> list[str]:
    return [p for p in ALL_POLICIES if p in present]


def _window(frame: pd.DataFrame) -> str:
    return "/".join(f"{w:g}" for w in sorted(set(frame["window_s"]))) + " s arrival windows"


def _policy_legend(
    fig: plt.Figure, policies: list[str], *, markers: bool = True, loc: str = "center right", **kw
) -> None:
    kw.setdefault("title", "policy")
    item_legend(
        fig,
        policies,
        COLORS,
        markers=MARKERS if markers else None,
        loc=loc,
        fontsize=LEGEND_FONT,
        title_fontsize=LEGEND_FONT,
        **kw,
    )


def _lines(
    frame: pd.DataFrame, y: str, ylabel: str, title: str, *, log: bool, bound: bool = False
) -> plt.Figure:
    frame = frame.assign(model=setup_label(frame))
    models = list(dict.fromkeys(frame["model"]))
    policies = _order(set(frame["policy"]))
    legend_w = 2.3
    fig, axes = plt.subplots(
        1, len(models), squeeze=False, figsize=(4.4 * len(models) + legend_w, 3.9)
    )
    for j, model in enumerate(models):
        ax = axes[0][j]
        g = frame[frame["model"] == model]
        marker_lines(ax, g, "rate", y, _order(set(g["policy"])), COLORS, MARKERS)
        if bound:
            ax.axhline(
                SLO_FACTOR * g["unloaded_norm_latency"].iloc[0], color="grey", ls=":", lw=1.2
            )
        if log:
            log_axis(ax)
        ax.set_title(model, fontsize=11)
        ax.set_xlabel("requests/s")
        ax.set_ylabel(ylabel if j == 0 else "")
    _policy_legend(fig, policies)
    if bound:
        fig.text(
            1 - legend_w / fig.get_figwidth() + 0.01,
            0.1,
            f"dotted: the bound,\n{SLO_FACTOR:g}x unloaded",
            fontsize=10,
        )
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1 - legend_w / fig.get_figwidth(), 1))
    return fig


def plot_sim(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    main = frame[frame["policy"] != ESTIMATED]
    run = f"simulated A100s, {ctx.scale.value} scale, {_window(frame)}"
    figs = {
        "norm-latency": _lines(
            main,
            "norm_latency_mean",
            "normalized latency (s/token)",
            f"Fig. 8 ({run}): mean normalized latency",
            log=True,
            bound=True,
        ),
        "norm-latency-p90": _lines(
            main,
            "norm_latency_p90",
            "p90 normalized latency (s/token)",
            f"Fig. 8 ({run}): p90 normalized latency",
            log=True,
        ),
        "norm-latency-p99": _lines(
            main,
            "norm_latency_p99",
            "p99 normalized latency (s/token)",
            f"Fig. 8 ({run}): p99 normalized latency",
            log=True,
        ),
        "completed-rps": _lines(
            main,
            "completed_rps",
            "completed requests/s (in the window)",
            f"Requests completed within the window ({run})",
            log=False,
        ),
    }
    figs["slo-rate"] = _slo_bars(frame, run)

    # share of forward time spent recomputing
    figs["recompute-share"] = _lines(
        main,
        "recompute_share",
        "share of forward time recomputing",
        f"Forward time spent recomputing ({run})",
        log=False,
    )

    # GPU memory x time wasted, by cause, at a few rates
    rates = [r for r in WASTE_RATES if r in set(main["rate"])] or sorted(set(main["rate"]))[:3]
    sub = main[main["rate"].isin(rates)]
    long = sub.melt(
        id_vars=["setup", "rate", "policy"],
        value_vars=list(WASTE_PARTS),
        var_name="cause",
        value_name="gbs",
    )
    long["cause"] = long["cause"].map(WASTE_PARTS)
    long["model"] = setup_label(long)
    long["rate"] = long["rate"].map(lambda r: f"{r:g} req/s")
    with plt.rc_context({"legend.fontsize": LEGEND_FONT, "legend.title_fontsize": LEGEND_FONT}):
        grid = sns.catplot(
            data=long,
            x="policy",
            y="gbs",
            hue="cause",
            col="rate",
            row="model",
            kind="bar",
            order=_order(set(long["policy"])),
            palette=WASTE_COLORS,
            hue_order=list(WASTE_PARTS.values()),
            col_order=[f"{r:g} req/s" for r in rates],
            sharey=False,
            height=2.9,
            aspect=1.25,
            edgecolor="black",
            linewidth=0.4,
        )
    grid.set_axis_labels("", "GB x s wasted")
    grid.set_titles("{row_name}, {col_name}", size=10)
    for ax in grid.axes.flat:
        anchor_right(ax, 35, 9)
    grid.figure.suptitle(f"GPU memory x time wasted, by cause ({run})", y=1.02, fontsize=12)
    figs["waste"] = grid.figure

    # InferCept with true call durations (oracle) and per-kind mean durations
    both = set(frame.loc[frame["policy"] == ESTIMATED, "setup"])
    ic = frame[frame["policy"].isin(["infercept", ESTIMATED]) & frame["setup"].isin(both)]
    if both:
        figs["oracle"] = _lines(
            ic,
            "norm_latency_mean",
            "normalized latency (s/token)",
            f"InferCept with true and with per-type mean call durations ({run})",
            log=True,
            bound=True,
        )
    return figs


def _slo_bars(frame: pd.DataFrame, run: str) -> plt.Figure:
    """Per model, the highest rate within the latency bound of each policy run on it (a policy
    not run on a model has no slot, so a missing bar means 0)."""
    slo = slo_rates(frame)
    slo["model"] = setup_label(slo)
    models = list(dict.fromkeys(setup_label(frame)))
    widths = [len(set(slo.loc[slo["model"] == m, "policy"])) for m in models]
    fig, axes = plt.subplots(
        1,
        len(models),
        squeeze=False,
        width_ratios=widths,
        figsize=(0.75 * sum(widths) + 1.0 * len(models), 3.9),
    )
    for ax, model in zip(axes[0], models, strict=True):
        g = slo[slo["model"] == model].set_index("policy")
        order = _order(set(g.index))
        ax.bar(
            range(len(order)),
            [g.at[p, "slo_rate"] for p in order],
            color=[COLORS[p] for p in order],
            width=0.75,
        )
        ax.set_xticks(range(len(order)), order)
        ax.grid(axis="x", visible=False)
        anchor_right(ax, 30)
        ax.set_title(model, fontsize=11)
    axes[0][0].set_ylabel(f"highest req/s with mean\nlatency <= {SLO_FACTOR:g}x unloaded")
    fig.suptitle(
        f"Highest rate within the latency bound ({run})\nno bar: missed at every "
        "swept rate; a bar at a model's top swept rate: met at every swept rate (only "
        "a lower bound)",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def plot_breakdown(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """Per augmentation type alone: normalized latency against load, per policy; the short
    calls (where the paper says preserving is right) in the top row, the long ones below."""
    rows = [
        [k for k in SHORT_KINDS if k in set(frame["kind"])],
        [k for k in LONG_KINDS if k in set(frame["kind"])],
    ]
    rows = [r for r in rows if r]
    ncols = max(len(r) for r in rows)
    policies = _order(set(frame["policy"]))
    legend_w = 2.0
    fig, axes = plt.subplots(
        len(rows), ncols, squeeze=False, figsize=(3.3 * ncols + legend_w, 3.0 * len(rows) + 0.6)
    )
    for i, kinds in enumerate(rows):
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(kinds):
                ax.set_visible(False)
                continue
            kind = kinds[j]
            g = frame[frame["kind"] == kind]
            order = _order(set(g["policy"]))
            marker_lines(ax, g, "rate", "norm_latency_mean", order, COLORS, MARKERS)
            log_axis(ax)
            span = "short calls" if kind in SHORT_KINDS else "long calls"
            ax.set_title(f"{kind} ({span})", fontsize=11)
            ax.set_xlabel("requests/s")
            ax.set_ylabel("normalized latency\n(s/token)" if j == 0 else "")
    _policy_legend(fig, policies)
    loads = ", ".join(f"{x:g}x" for x in sorted(set(frame["load"])))
    setup = SETUPS[frame["setup"].iloc[0]].label if frame["setup"].iloc[0] in SETUPS else ""
    fig.suptitle(
        f"Each augmentation type alone on {setup}, at {loads} its capacity\n"
        f"({ctx.scale.value} scale, {_window(frame)})",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1 - legend_w / fig.get_figwidth(), 1))
    return {"breakdown": fig}


# -- the real engine ----------------------------------------------------------------------------

REAL_METRICS = (
    "norm_latency_mean",
    "norm_latency_p90",
    "ttft_mean_s",
    "recomputed_tokens",
    "tokens_computed",
    "engine_steps",
    "engine_busy_s",
    "engine_cpu_s",
    "cpu_share",
    "wall_s",
    "preemptions",
)


def real_summary(
    frame: pd.DataFrame, baseline: str = "vllm", system: str = "infercept"
) -> RoundsSummary:
    """The real run over its rounds (:func:`core.metrics.summarize_rounds`): per policy the
    median, min and max of each of :data:`REAL_METRICS`, the paired per-round ratios baseline /
    system, and the rounds the two ran."""
    return summarize_rounds(
        frame, "policy", REAL_METRICS, baseline=baseline, system=system, order=ALL_POLICIES
    )


def plot_real(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """The real engine: normalized latency (mean, p90) on the engine's CPU clock, recomputed
    tokens and the engine's CPU seconds per policy; bars at the median over rounds, whiskers
    min-max, dots per round."""
    order = _order(set(frame["policy"]))
    panels = [
        ("norm_latency_mean", "mean normalized latency\n(s/token, engine CPU clock)", 1.0),
        ("norm_latency_p90", "p90 normalized latency\n(s/token, engine CPU clock)", 1.0),
        ("recomputed_tokens", "recomputed tokens\n(thousands)", 1e-3),
        ("engine_cpu_s", "engine CPU seconds\n(steps that ran a forward)", 1.0),
    ]
    fig = spread_panels(frame, panels, order, COLORS, panel_size=(3.4, 3.7))
    _policy_legend(
        fig,
        order,
        markers=False,
        loc="lower center",
        ncol=len(order),
        bbox_to_anchor=(0.5, -0.04),
        title=None,
    )
    s = real_summary(frame)
    c = frame.iloc[0]
    if s.rounds < 2:
        reps = "1 round"
    else:
        fewer = s.per_key["rounds"].min() < s.rounds
        reps = (
            f"{'vLLM and InferCept' if fewer else 'every policy'} in {s.rounds} interleaved "
            f"rounds{', the others once' if fewer else ''}"
        )
    fig.suptitle(
        f"Real engine, 1 thread, ~20M-param Llama: {int(c['requests'])} requests at "
        f"{c['rate']:g} req/s, calls x{c['duration_scale']:g}; {reps}\n"
        "bars: median over rounds; whiskers: min-max; dots: rounds",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    if "profile" in frame:
        fig.text(
            0.01,
            -0.1,
            f"InferCept's T_fwd = {c['policy_a_ms']:.3g} ms x tokens + "
            f"{c['policy_c_ms']:.3g} ms, fitted to the profile {c['profile']} (sha256 "
            f"{str(c['profile_sha256'])[:12]}).\nLatencies on the engine thread's CPU "
            "clock (arrivals and calls not slept): time other processes took from the core "
            "does not count.",
            fontsize=9,
        )
    return {"real": fig}
