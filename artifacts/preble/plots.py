"""Figures laid out like Preble's Fig. 3 (latency against request rate per workload) and
Table 1 (the ablation ladder), plus the highest rate under the latency SLO and the real run."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from core.artifact import RunContext, color_map
from core.metrics import highest_rate_within

from .fleet import FLEET_ROUTERS, LADDER, WORKLOADS

SLO_FACTOR = 5.0
"""A router meets the latency SLO at a rate when its average latency is at most this many times
the workload's unloaded latency (one request alone on a replica, its shared prefix cached)."""


def fleet_label(frame: pd.DataFrame) -> pd.Series:
    return frame["setup"] + ", " + frame["gpus"].astype(str) + " GPUs"


def slo_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (fleet, workload, router): the highest swept rate whose average latency meets the
    SLO (0 when none does), by linear interpolation between the last rate that meets it and the
    first that does not."""
    rows = []
    for key, g in frame.groupby(["setup", "gpus", "workload", "router"]):
        bound = SLO_FACTOR * g["unloaded_latency_s"].iloc[0]
        best, saturated = highest_rate_within(g["rate"], g["avg_latency_s"], bound)
        rows.append(dict(zip(["setup", "gpus", "workload", "router"], key, strict=True),
                         slo_rate=best, slo_bound_s=bound, saturated=saturated))
    return pd.DataFrame(rows)


def gains(frame: pd.DataFrame, baseline: str = "round-robin", system: str = "preble") -> pd.DataFrame:
    """Per (fleet, workload, rate): the baseline's average and p99 latency over the system's."""
    key = ["setup", "gpus", "workload", "load", "rate"]
    wide = frame.pivot_table(index=key, columns="router",
                             values=["avg_latency_s", "p99_latency_s"], aggfunc="first")
    out = wide.index.to_frame(index=False)
    out["avg_gain"] = (wide[("avg_latency_s", baseline)] / wide[("avg_latency_s", system)]).to_numpy()
    out["p99_gain"] = (wide[("p99_latency_s", baseline)] / wide[("p99_latency_s", system)]).to_numpy()
    return out


def _curves(frame: pd.DataFrame, metric: str, title: str, colors: dict) -> plt.Figure:
    frame = frame.assign(fleet=fleet_label(frame))
    fleets = list(dict.fromkeys(frame["fleet"]))
    workloads = [w for w in WORKLOADS if w in set(frame["workload"])]
    fig, axes = plt.subplots(len(fleets), len(workloads), squeeze=False,
                             figsize=(3.2 * len(workloads), 2.8 * len(fleets)))
    for i, fleet in enumerate(fleets):
        for j, w in enumerate(workloads):
            ax = axes[i][j]
            g = frame[(frame["fleet"] == fleet) & (frame["workload"] == w)]
            if g.empty:  # a workload this fleet's grid leaves out
                ax.set_visible(False)
                continue
            sns.lineplot(data=g, x="rate", y=metric, hue="router", style="router", markers=True,
                         dashes=False, palette=colors, hue_order=[r for r in colors if r in set(g["router"])],
                         ax=ax, legend=(i == 0 and j == len(workloads) - 1))
            ax.set_yscale("log")
            ax.set_title(f"{w}\n{fleet}", fontsize=9)
            ax.set_xlabel("requests/s")
            ax.set_ylabel(title if j == 0 else "")
    if axes[0][-1].get_legend() is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return fig


def plot_fleet(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """Fig. 3 (average and p99 latency against rate) and the highest rate under the SLO."""
    colors = color_map(FLEET_ROUTERS)
    figs = {"fleet-avg": _curves(frame, "avg_latency_s", "avg latency (s)", colors),
            "fleet-p99": _curves(frame, "p99_latency_s", "p99 latency (s)", colors)}
    slo = slo_rates(frame)
    slo["fleet"] = fleet_label(slo)
    grid = sns.catplot(data=slo, x="workload", y="slo_rate", hue="router", col="fleet",
                       kind="bar", palette=colors, hue_order=list(FLEET_ROUTERS),
                       order=[w for w in WORKLOADS if w in set(slo["workload"])],
                       sharey=False, height=3.0, aspect=1.6)
    grid.set_axis_labels("", f"req/s with avg latency <= {SLO_FACTOR:g}x unloaded")
    grid.set_titles("{col_name}")
    grid.figure.text(0.01, -0.04, "0: the SLO is missed at every swept rate; a bar at a "
                     "workload's top swept rate: met at every rate (the sweep did not saturate it)",
                     fontsize=8)
    figs["slo-rate"] = grid.figure
    return figs


def plot_ablation(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """Table 1 as bars: average and p99 latency of each rung, per request rate."""
    long = frame.melt(id_vars=["router", "rate"], value_vars=["avg_latency_s", "p99_latency_s"],
                      var_name="metric", value_name="latency_s")
    long["metric"] = long["metric"].map({"avg_latency_s": "average", "p99_latency_s": "p99"})
    long["rate"] = long["rate"].map(lambda r: f"{r:.3g} req/s")
    grid = sns.catplot(data=long, x="router", y="latency_s", hue="rate", col="metric",
                       kind="bar", order=list(LADDER), sharey=False, height=3.2, aspect=1.4)
    grid.set_axis_labels("", "latency (s)")
    grid.set_titles("ToolBench (Zipf-1.1): {col_name}")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=30)
    return {"ablation": grid.figure}


def plot_real(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """The two-replica run on this CPU: average and p99 latency of each router."""
    long = frame.melt(id_vars=["router"], value_vars=["avg_latency_s", "p99_latency_s", "ttft_mean_s"],
                      var_name="metric", value_name="seconds")
    grid = sns.catplot(data=long, x="metric", y="seconds", hue="router", kind="bar",
                       palette=color_map(frame["router"]), height=3.2, aspect=1.5)
    grid.set_axis_labels("", "seconds (measured)")
    grid.figure.suptitle("2 engine replicas on this CPU", y=1.02)
    return {"real": grid.figure}
