"""Figures laid out like Preble's Fig. 3 (latency against request rate per workload) and
Table 1 (the ablation ladder), plus the highest rate under the latency SLO and the real run.

One colour per router across every figure (:data:`ROUTER_COLORS`); titles and captions say what
the run swept (its scale, requests per point, rounds of the real mode)."""

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

from .fleet import FLEET_ROUTERS, LADDER, WORKLOADS
from .real import E2_LABEL

SLO_FACTOR = 5.0
"""A router meets the latency SLO at a rate when its average latency is at most this many times
the workload's unloaded latency (one request alone on a replica, its shared prefix cached)."""

ROUTER_COLORS = color_map((*FLEET_ROUTERS, E2_LABEL, *LADDER[::-1]))
"""Router -> colour, the same in every figure (the real mode's E2 is the ladder's
``e2+rebalance+pd`` rung, given the stronger of the rungs' colours)."""
ROUTER_MARKERS = dict(zip(ROUTER_COLORS, ("o", "X", "s", "P", "D", "^", "v"), strict=True))
LEGEND_FONT = 11


def fleet_label(frame: pd.DataFrame) -> pd.Series:
    return frame["setup"] + ", " + frame["gpus"].astype(str) + " GPUs"


def slo_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (fleet, workload, router): the highest swept rate whose average latency meets the
    SLO (0 when none does), by linear interpolation between the last rate that meets it and the
    first that does not; ``saturated`` is False when every swept rate meets it (the rate is then
    only a lower bound)."""
    rows = []
    for key, g in frame.groupby(["setup", "gpus", "workload", "router"]):
        bound = SLO_FACTOR * g["unloaded_latency_s"].iloc[0]
        best, saturated = highest_rate_within(g["rate"], g["avg_latency_s"], bound)
        rows.append(
            dict(
                zip(["setup", "gpus", "workload", "router"], key, strict=True),
                slo_rate=best,
                slo_bound_s=bound,
                saturated=saturated,
            )
        )
    return pd.DataFrame(rows)


def gains(
    frame: pd.DataFrame, baseline: str = "round-robin", system: str = "preble"
) -> pd.DataFrame:
    """Per (fleet, workload, rate): the baseline's average and p99 latency over the system's."""
    key = ["setup", "gpus", "workload", "load", "rate"]
    wide = frame.pivot_table(
        index=key, columns="router", values=["avg_latency_s", "p99_latency_s"], aggfunc="first"
    )
    out = wide.index.to_frame(index=False)
    out["avg_gain"] = (
        wide[("avg_latency_s", baseline)] / wide[("avg_latency_s", system)]
    ).to_numpy()
    out["p99_gain"] = (
        wide[("p99_latency_s", baseline)] / wide[("p99_latency_s", system)]
    ).to_numpy()
    return out


def _router_legend(fig: plt.Figure, routers: list[str], *, markers: bool) -> None:
    item_legend(
        fig,
        routers,
        ROUTER_COLORS,
        markers=ROUTER_MARKERS if markers else None,
        title="router",
        loc="center right",
        fontsize=LEGEND_FONT,
        title_fontsize=LEGEND_FONT,
    )


def _per_point(frame: pd.DataFrame) -> str:
    requests = sorted(set(int(x) for x in frame["requests"]))
    return "/".join(f"{x:,}" for x in requests) + " requests per point"


def _curves(frame: pd.DataFrame, metric: str, title: str, ctx: RunContext) -> plt.Figure:
    frame = frame.assign(fleet=fleet_label(frame))
    fleets = list(dict.fromkeys(frame["fleet"]))
    workloads = [w for w in WORKLOADS if w in set(frame["workload"])]
    routers = [r for r in ROUTER_COLORS if r in set(frame["router"])]
    fig, axes = plt.subplots(
        len(fleets),
        len(workloads),
        squeeze=False,
        figsize=(3.0 * len(workloads) + 2.2, 2.9 * len(fleets) + 0.5),
    )
    for i, fleet in enumerate(fleets):
        for j, w in enumerate(workloads):
            ax = axes[i][j]
            g = frame[(frame["fleet"] == fleet) & (frame["workload"] == w)]
            if g.empty:  # a workload this fleet's grid leaves out
                ax.set_visible(False)
                continue
            marker_lines(
                ax, g, "rate", metric, routers, ROUTER_COLORS, ROUTER_MARKERS, key="router"
            )
            log_axis(ax)
            ax.set_title(f"{w}\n{fleet}", fontsize=10)
            ax.set_xlabel("requests/s")
            ax.set_ylabel(title if j == 0 else "")
    _router_legend(fig, routers, markers=True)
    fig.suptitle(
        f"Fig. 3, simulated ({ctx.scale.value} scale, {_per_point(frame)}): "
        f"{title} against request rate",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    return fig


def plot_fleet(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """Fig. 3 (average and p99 latency against rate) and the highest rate under the SLO."""
    figs = {
        "fleet-avg": _curves(frame, "avg_latency_s", "avg latency (s)", ctx),
        "fleet-p99": _curves(frame, "p99_latency_s", "p99 latency (s)", ctx),
    }
    figs["slo-rate"] = _slo_bars(frame, ctx)
    return figs


def _slo_bars(frame: pd.DataFrame, ctx: RunContext) -> plt.Figure:
    """Per fleet, the highest rate under the SLO of each router, for the workloads that fleet
    sweeps (a workload a fleet does not sweep has no slot, so a missing bar means 0)."""
    slo = slo_rates(frame)
    slo["fleet"] = fleet_label(slo)
    fleets = list(dict.fromkeys(fleet_label(frame)))
    routers = [r for r in ROUTER_COLORS if r in set(slo["router"])]
    widths = [len(set(slo.loc[slo["fleet"] == f, "workload"])) for f in fleets]
    fig, axes = plt.subplots(
        1,
        len(fleets),
        squeeze=False,
        width_ratios=widths,
        figsize=(0.9 * sum(widths) + 1.2 * len(fleets) + 2.2, 3.8),
    )
    bar = 0.8 / len(routers)
    for ax, fleet in zip(axes[0], fleets, strict=True):
        g = slo[slo["fleet"] == fleet]
        workloads = [w for w in WORKLOADS if w in set(g["workload"])]
        for k, router in enumerate(routers):
            h = [
                g.loc[(g["workload"] == w) & (g["router"] == router), "slo_rate"].sum()
                for w in workloads
            ]
            ax.bar(
                np.arange(len(workloads)) - 0.4 + (k + 0.5) * bar,
                h,
                width=bar,
                color=ROUTER_COLORS[router],
                label=router,
            )
        ax.set_xticks(range(len(workloads)), workloads)
        ax.grid(axis="x", visible=False)
        anchor_right(ax, 25)
        ax.set_title(fleet, fontsize=11)
    axes[0][0].set_ylabel(f"highest req/s with\navg latency <= {SLO_FACTOR:g}x unloaded")
    _router_legend(fig, routers, markers=False)
    fig.suptitle(
        f"Highest rate under the SLO, simulated ({ctx.scale.value} scale, "
        f"{_per_point(frame)})\nno bar: missed at every swept rate; a bar at a "
        "workload's top swept rate: met at every rate (only a lower bound)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    return fig


def plot_ablation(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """Table 1 as bars: average and p99 latency of each rung, one row of panels per rate."""
    long = frame.melt(
        id_vars=["router", "load", "rate"],
        value_vars=["avg_latency_s", "p99_latency_s"],
        var_name="metric",
        value_name="latency_s",
    )
    long["metric"] = long["metric"].map({"avg_latency_s": "average", "p99_latency_s": "p99"})
    long["at"] = [
        f"{lo:g}x nominal ({ra:.3g} req/s)"
        for lo, ra in zip(long["load"], long["rate"], strict=True)
    ]
    rows = [
        f"{lo:g}x nominal ({ra:.3g} req/s)"
        for lo, ra in sorted(
            {(lo, ra) for lo, ra in zip(frame["load"], frame["rate"], strict=True)}
        )
    ]
    grid = sns.catplot(
        data=long,
        x="router",
        y="latency_s",
        hue="router",
        col="metric",
        row="at",
        row_order=rows,
        kind="bar",
        order=list(LADDER),
        hue_order=list(LADDER),
        palette=ROUTER_COLORS,
        legend=False,
        sharey=False,
        height=2.8,
        aspect=1.6,
        saturation=1,
    )
    grid.set_axis_labels("", "latency (s)")
    grid.set_titles("{col_name}, {row_name}")
    for ax in grid.axes.flat:
        anchor_right(ax, 25)
    a = frame.iloc[0]
    grid.figure.suptitle(
        f"Table 1, simulated: ToolBench (Zipf-1.1) on {int(a['gpus'])} "
        f"{str(a['setup']).split('/')[-1].upper()}s, {int(a['requests']):,} "
        f"requests per point ({ctx.scale.value} scale)",
        y=1.03,
        fontsize=12,
    )
    return {"ablation": grid.figure}


# -- the real mode ------------------------------------------------------------------------------

REAL_METRICS = (
    "avg_latency_s",
    "p99_latency_s",
    "ttft_mean_s",
    "prefill_tokens",
    "prefill_tokens_max_replica",
)


def real_summary(
    frame: pd.DataFrame, baseline: str = "round-robin", system: str = E2_LABEL
) -> RoundsSummary:
    """The real run over its rounds (:func:`core.metrics.summarize_rounds`): per router the
    median, min and max of each of :data:`REAL_METRICS`, and the paired per-round ratios
    baseline / system."""
    return summarize_rounds(
        frame, "router", REAL_METRICS, baseline=baseline, system=system, order=(baseline, system)
    )


def plot_real(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """The two-replica run: average and p99 latency, TTFT and the prefill tokens computed, per
    router; bars at the median over rounds, whiskers min-max, dots per round."""
    order = [r for r in ROUTER_COLORS if r in set(frame["router"])]
    panels = [
        ("avg_latency_s", "average latency (s)", 1.0),
        ("p99_latency_s", "p99 latency (s)", 1.0),
        ("prefill_tokens", "prefill tokens computed\n(thousands, both replicas)", 1e-3),
        (
            "prefill_tokens_max_replica",
            "prefill tokens computed\n(thousands, busiest replica)",
            1e-3,
        ),
    ]
    fig = spread_panels(frame, panels, order, ROUTER_COLORS, key="router", panel_size=(3.0, 3.6))
    item_legend(
        fig,
        order,
        ROUTER_COLORS,
        loc="lower center",
        ncol=len(order),
        fontsize=LEGEND_FONT,
        bbox_to_anchor=(0.5, -0.02),
    )
    s = real_summary(frame)
    c = frame.iloc[0]
    fig.suptitle(
        f"2 engine replicas on this machine (1 core each, ~20M-param Llama): VideoQA "
        f"x0.1, {int(c['requests'])} requests at {c['rate']:g} req/s, "
        f"{s.rounds} interleaved round{'s' if s.rounds > 1 else ''}\nbars: median over rounds; whiskers: min-max; dots: rounds",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    if "profile" in frame:
        fig.text(
            0.01,
            -0.05,
            f"E2's step-cost estimates from the profile {c['profile']} "
            f"(sha256 {str(c['profile_sha256'])[:12]}); the replicas' times are measured.",
            fontsize=9,
        )
    return {"real": fig}
