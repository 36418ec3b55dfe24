"""Figures laid out like the paper's: per-GPU throughput against the baselines (Fig. 8), per
dollar on heterogeneous GPUs (Fig. 9), the ping-pong schedule (Fig. 5) and the effect of m
(Fig. 12), and the measured timeline of the real 2-process mode."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from core.artifact import RunContext, color_map

SYSTEMS = ["disaggregated", "colocated-tp", "colocated-ep"]
SIDES = {"attention": 0, "expert": 1}


def plot_deployments(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    out: dict[str, plt.Figure] = {}
    best = frame[frame["system"].isin(SYSTEMS)]
    models = list(dict.fromkeys(frame["model"]))
    fig, axes = plt.subplots(
        1, len(models), figsize=(4 * len(models), 3.4), squeeze=False, layout="constrained"
    )
    colors = color_map(SYSTEMS)
    for ax, model in zip(axes[0], models, strict=True):
        sns.barplot(
            data=best[best["model"] == model], x="attention_gpu", y="per_gpu", hue="system",
            hue_order=SYSTEMS, palette=colors, ax=ax,
        )  # fmt: skip
        ax.set_title(model)
        ax.set_xlabel("GPU")
        ax.set_ylabel("Decode tokens/s per GPU")
        if ax is not axes[0][0] and ax.get_legend():
            ax.get_legend().remove()
    axes[0][0].legend(title=None, fontsize="small")
    fig.suptitle("Per-GPU decode throughput under a 150 ms TBT SLO (simulated)")
    out["per-gpu-throughput"] = fig

    per_m = frame[frame["system"].str.startswith("m=")].copy()
    if not per_m.empty:
        per_m["m"] = per_m["system"].str[2:].astype(int)
        base = per_m[per_m["m"] == 1].set_index(["model", "attention_gpu"])["per_gpu"]
        per_m["normalized"] = [
            r.per_gpu / base.get((r.model, r.attention_gpu), float("nan"))
            for r in per_m.itertuples()
        ]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        per_m["deployment"] = per_m["model"] + " / " + per_m["attention_gpu"]
        sns.lineplot(data=per_m, x="m", y="normalized", hue="deployment", marker="o", ax=ax)
        ax.set_xticks(sorted(per_m["m"].unique()))
        ax.set_xlabel("Micro-batches m")
        ax.set_ylabel("Throughput / throughput at m=1")
        ax.legend(title=None, fontsize="x-small")
        ax.set_title("Effect of the number of micro-batches (simulated)")
        out["microbatches"] = fig
    return out


def plot_heterogeneous(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    rows = frame[frame["system"] == "disaggregated (per $)"].copy()
    rows["deployment"] = rows["attention_gpu"] + " attn + " + rows["expert_gpu"] + " experts"
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.barplot(data=rows, x="model", y="per_dollar", hue="deployment", ax=ax)
    ax.set_ylabel("Decode tokens/s per $/h")
    ax.set_xlabel("")
    ax.legend(title=None, fontsize="small")
    ax.set_title("Heterogeneous deployment: throughput per dollar (simulated)")
    return {"heterogeneous": fig}


def _gantt(ax: plt.Axes, slots: pd.DataFrame, title: str, unit: str) -> None:
    colors = sns.color_palette("colorblind", n_colors=int(slots["micro_batch"].max()) + 1)
    t0 = slots["start"].min()
    for s in slots.itertuples():
        y = SIDES[s.side]
        ax.barh(y, s.end - s.start, left=s.start - t0, color=colors[int(s.micro_batch)],
                edgecolor="black", linewidth=0.4, height=0.6)  # fmt: skip
    ax.set_yticks([0, 1], ["attention", "experts"])
    ax.set_title(title, fontsize="small")
    ax.set_xlabel(unit)


def plot_pingpong(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    out: dict[str, plt.Figure] = {}
    pick = frame[(frame["tc_ratio"] == 0.25) & (frame["layer"] < 2)]
    ms = sorted(pick["m"].unique())[:3]
    if ms:
        fig, axes = plt.subplots(
            len(ms), 1, figsize=(7, 1.5 * len(ms) + 0.8), sharex=True, layout="constrained"
        )
        axes = [axes] if len(ms) == 1 else list(axes)
        for ax, m in zip(axes, ms, strict=True):
            _gantt(ax, pick[pick["m"] == m], f"m = {m} (T_c = T_f / 4; first 2 layers)", "")
        axes[-1].set_xlabel("time (units of T_a = T_e)")
        fig.suptitle("Ping-pong schedule (colour: micro-batch)")
        out["pingpong-schedule"] = fig
    per = frame.drop_duplicates(["m", "tc_ratio"])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    sns.lineplot(data=per, x="m", y="expert_busy", hue="tc_ratio", marker="o", ax=ax,
                 palette="colorblind")  # fmt: skip
    ax.set_xticks(sorted(per["m"].unique()))
    ax.set_xlabel("Micro-batches m")
    ax.set_ylabel("Expert side busy share")
    ax.legend(title="T_c / T_f")
    ax.set_title("Communication hidden once m >= 2(1 + T_c/T_f)")
    out["pingpong-utilization"] = fig
    return out


def plot_real(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    out: dict[str, plt.Figure] = {}
    runs = frame[frame["kind"] == "run"].copy()
    runs["setting"] = ["colocated" if m == 0 else f"m={int(m)}" for m in runs["m"]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    order = list(dict.fromkeys(runs.sort_values("m")["setting"]))
    sns.barplot(data=runs, x="setting", y="tokens_per_s", order=order, errorbar=None, ax=ax,
                color="lightgray")  # fmt: skip
    sns.stripplot(data=runs, x="setting", y="tokens_per_s", order=order, ax=ax, color="black")
    ax.set_xlabel("")
    ax.set_ylabel("Decode tokens/s (this CPU)")
    ax.set_title("Real mode: 1 attention + 1 expert process vs colocated")
    out["real-throughput"] = fig
    slots = frame[frame["kind"] == "slot"]
    ms = sorted(slots["m"].unique())
    if ms:
        fig, axes = plt.subplots(len(ms), 1, figsize=(7, 1.7 * len(ms) + 0.8), layout="constrained")
        axes = [axes] if len(ms) == 1 else list(axes)
        for ax, m in zip(axes, ms, strict=True):
            s = slots[slots["m"] == m].copy()
            s[["start", "end"]] *= 1e3
            _gantt(ax, s, f"m = {int(m)}: one decode step, measured", "ms")
        fig.suptitle("Measured timeline of the 2-process run (colour: micro-batch)")
        out["real-timeline"] = fig
    return out
