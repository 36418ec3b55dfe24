"""Figures laid out like Marconi's Figs. 7-9, plus alpha tuning and the real-engine run (and
the real run's medians over rounds, :func:`real_summary`)."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Patch

from core.artifact import RunContext, color_map, spread_bars
from core.metrics import RoundsSummary, order_words, summarize_rounds

KEY = ["workload", "rate", "response_s", "sessions", "cache_gb"]
POLICY_ORDER = ["marconi", "sglang+", "vllm+", "marconi-alpha0"]


def by_policy(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per configuration, one column per policy holding ``metric``."""
    wide = frame.pivot_table(index=KEY, columns="policy", values=metric, aggfunc="first")
    return wide.reset_index()


def comparisons(frame: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: Marconi's hit rate over vLLM+'s, its gain over SGLang+ (points),
    the P95 TTFT reduction against both, and the FLOPs-saved gain of tuning alpha."""
    hit = by_policy(frame, "token_hit_rate")
    p95 = by_policy(frame, "ttft_p95_ms")
    flops = by_policy(frame, "flops_saved_fraction")
    out = hit[KEY].copy()
    out["ratio_vs_vllm"] = hit["marconi"] / hit["vllm+"]
    out["gain_vs_sglang_pp"] = 100 * (hit["marconi"] - hit["sglang+"])
    out["p95_cut_vs_vllm_pct"] = 100 * (1 - p95["marconi"] / p95["vllm+"])
    out["p95_cut_vs_sglang_pct"] = 100 * (1 - p95["marconi"] / p95["sglang+"])
    out["p95_cut_vs_vllm_ms"] = p95["vllm+"] - p95["marconi"]
    if "ttft_cpu_p95_s" in frame:
        cpu = by_policy(frame, "ttft_cpu_p95_s")
        out["cpu_p95_cut_vs_vllm_pct"] = 100 * (1 - cpu["marconi"] / cpu["vllm+"])
    if "marconi-alpha0" in flops:
        out["alpha_gain_pp"] = 100 * (flops["marconi"] - flops["marconi-alpha0"])
    return out


def _label(frame: pd.DataFrame) -> pd.Series:
    return frame["rate"].map(lambda r: f"{r:g} sess/s" if r else "trace order")


def _annotate(ax: plt.Axes, text: str, y: float = 0.5) -> None:
    ax.text(
        0.5,
        y,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=9,
        color="0.25",
        bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.7", "alpha": 0.9},
    )


def _title(fig: plt.Figure, title: str, subtitle: str) -> None:
    """A title and a subtitle saying what the run replayed, above the panels (wrapped to about
    the figure's width)."""
    width = max(50, int(13 * fig.get_figwidth()))
    text = "\n".join(textwrap.wrap(title, width) + textwrap.wrap(subtitle, width))
    fig.suptitle(text, y=1.0, va="bottom", fontsize=11)


def plot_hitrate(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """Fig. 7 (vs vLLM+), Fig. 8 (vs SGLang+), the absolute hit rates, Fig. 9 (P95 TTFT) and
    the tuned alphas. Titles name what was replayed (describe.stream_title)."""
    from .describe import stream_title

    cmp = comparisons(frame)
    cmp["arrivals"] = _label(cmp)
    frame = frame.assign(arrivals=_label(frame))
    workloads = list(dict.fromkeys(frame["workload"]))
    subtitle = stream_title(frame, ctx)
    figs: dict[str, plt.Figure] = {}

    def grid(
        data: pd.DataFrame,
        y: str,
        ylabel: str,
        title: str,
        hue: str = "arrivals",
        order: list[str] | None = None,
        ref: float | None = None,
    ) -> sns.FacetGrid:
        palette = color_map(order or sorted(data[hue].unique()))
        g = sns.relplot(
            data=data,
            x="cache_gb",
            y=y,
            hue=hue,
            col="workload",
            col_order=workloads,
            kind="line",
            marker="o",
            palette=palette,
            hue_order=order,
            facet_kws={"sharex": False, "sharey": False},
            height=2.8,
            aspect=1.0,
        )
        g.set_axis_labels("Cache size (GB)", ylabel)
        g.set_titles("{col_name}")
        if ref is not None:
            for ax in g.axes.flat:
                ax.axhline(ref, color="black", lw=0.9, ls="--", zorder=2)
        _title(g.figure, title, subtitle)
        return g

    g7 = grid(
        cmp,
        "ratio_vs_vllm",
        "Hit rate: Marconi / vLLM+",
        "Fig. 7: token hit rate of Marconi relative to vLLM+ (paper: up to 34.4x)",
        ref=1.0,
    )
    for w, ax in g7.axes_dict.items():
        if (cmp[cmp["workload"] == w]["ratio_vs_vllm"] < 1).any():
            ax.axhspan(ax.get_ylim()[0], 1.0, color="0.85", alpha=0.5, zorder=0, lw=0)
            _annotate(ax, "shaded: vLLM+ hits more", y=0.08)
    figs["fig7-vs-vllm"] = g7.figure

    g8 = grid(
        cmp,
        "gain_vs_sglang_pp",
        "Marconi - SGLang+ (points)",
        "Fig. 8: token hit rate gain of Marconi over SGLang+",
        ref=0.0,
    )
    hit = by_policy(frame, "hit_tokens")
    for w, ax in g8.axes_dict.items():
        h = hit[hit["workload"] == w]
        if not h.empty and (h["marconi"] == h["sglang+"]).all():
            _annotate(ax, "Marconi and SGLang+ hit\nthe same tokens at every size", y=0.75)
    figs["fig8-vs-sglang"] = g8.figure

    policies = [p for p in POLICY_ORDER if p in set(frame["policy"]) and p != "marconi-alpha0"]
    shown = frame[frame["policy"].isin(policies)]
    gh = grid(
        shown.assign(token_hit_pct=100 * shown["token_hit_rate"]),
        "token_hit_pct",
        "Token hit rate (%)",
        "Token hit rate by policy (line: mean over arrival rates)",
        hue="policy",
        order=policies,
    )
    for w, ax in gh.axes_dict.items():
        h = hit[hit["workload"] == w]
        if not h.empty and (h["marconi"] == h["sglang+"]).all():
            _annotate(ax, "marconi = sglang+\n(the lines coincide)", y=0.5)
    figs["hit-rates"] = gh.figure
    figs["fig9-ttft"] = _ttft_bars(shown, workloads, policies, subtitle)
    if "alpha_gain_pp" in cmp:
        figs["alpha"] = _alpha(frame, cmp, workloads, subtitle)
    return figs


def _ttft_bars(
    frame: pd.DataFrame, workloads: list[str], policies: list[str], subtitle: str
) -> plt.Figure:
    from .describe import profile_title

    rows = [("ttft_p95_ms", "P95 TTFT (ms)\n7B hybrid, H100 roofline")]
    if "ttft_cpu_p95_s" in frame:
        rows.append(("ttft_cpu_p95_s", "P95 TTFT (s), tiny hybrid,\n" + profile_title(frame)))
    fig, axes = plt.subplots(
        len(rows),
        len(workloads),
        squeeze=False,
        figsize=(max(3.2 * len(workloads), 4.5) + 0.6, 3.0 * len(rows)),
    )
    colors = color_map(policies)
    frame = frame.assign(
        cache=frame["cache_gb"].map(lambda g: f"{g:,.0f}" if g >= 10 else f"{g:.3g}")
    )
    for r, (column, label) in enumerate(rows):
        for ax, w in zip(axes[r], workloads, strict=True):
            sub = frame[frame["workload"] == w].sort_values("cache_gb")
            sns.barplot(
                data=sub,
                x="cache",
                y=column,
                hue="policy",
                hue_order=policies,
                palette=colors,
                ax=ax,
                errorbar=None,
                legend=False,
            )
            ax.set_title(w if r == 0 else "")
            ax.set_xlabel("Cache size (GB)" if r == len(rows) - 1 else "")
            ax.set_ylabel(label if ax is axes[r][0] else "", fontsize=9 if r else None)
    handles = [Patch(facecolor=colors[p], label=p) for p in policies]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.9), frameon=False)
    fig.tight_layout()
    _title(fig, "Fig. 9: P95 time to first token (mean over arrival rates)", subtitle)
    return fig


def _alpha(
    frame: pd.DataFrame, cmp: pd.DataFrame, workloads: list[str], subtitle: str
) -> plt.Figure:
    from .describe import untuned_reason

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    tuned = frame[frame["policy"] == "marconi"].copy()
    # cache sizes differ by workload: label each by its rank within its workload
    rank = tuned.groupby("workload")["cache_gb"].rank(method="dense").astype(int)
    names = {1: "smallest cache", 2: "middle cache", 3: "largest cache"}
    tuned["cache"] = rank.map(lambda k: names.get(k, f"cache #{k}"))
    sns.stripplot(
        data=tuned,
        x="workload",
        y="tuned_alpha",
        hue="cache",
        order=workloads,
        ax=axes[0],
        palette="crest",
        dodge=True,
        size=7,
    )
    axes[0].set_ylabel("Tuned alpha")
    # alpha's grid is 0, 0.1, ..., 2.0; the band above it holds the notes on untuned configs
    axes[0].set_ylim(-0.1, 3.3)
    axes[0].set_yticks(np.arange(0, 2.01, 0.5))
    axes[0].legend(title=None, loc="upper left", bbox_to_anchor=(0.0, -0.12), ncol=3)
    # right: per workload, the mean gain over the configurations that tuned (untuned ones run
    # alpha = 0 throughout, the baseline itself: their gain is 0 by construction, not measured)
    status = tuned.set_index(KEY)["alpha_status"]
    gains = cmp.set_index(KEY).join(status)
    gains = gains[gains["alpha_status"] == "tuned"].reset_index()
    color = color_map(["marconi"])["marconi"]
    for i, w in enumerate(workloads):
        g = gains[gains["workload"] == w]["alpha_gain_pp"]
        if g.empty:
            axes[1].text(
                i,
                0,
                "not tuned",
                ha="center",
                va="center",
                fontsize=9,
                color="0.25",
                bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.7"},
            )
            continue
        axes[1].bar(i, g.mean(), 0.6, color=color)
        axes[1].scatter(np.full(len(g), i), g, color="black", s=14, zorder=3)
        up = g.mean() >= 0
        axes[1].annotate(
            f"{g.mean():+.2f}\n({len(g)} tuned)",
            (i, g.max() if up else g.min()),
            xytext=(0, 6 if up else -6),
            textcoords="offset points",
            ha="center",
            va="bottom" if up else "top",
            fontsize=9,
        )
    axes[1].set_xticks(range(len(workloads)), workloads)
    axes[1].set_xlim(-0.5, len(workloads) - 0.5)
    axes[1].grid(axis="x", visible=False)
    axes[1].axhline(0, color="black", lw=0.8)
    lo, hi = axes[1].get_ylim()
    pad = 0.25 * max(hi - lo, 1.0)
    axes[1].set_ylim(lo - pad, hi + pad)
    axes[1].set_ylabel("FLOPs saved (points):\ntuned alpha - alpha 0")
    for i, w in enumerate(workloads):
        why = untuned_reason(tuned[tuned["workload"] == w])
        if why:
            axes[0].text(
                i,
                2.7,
                why,
                ha="center",
                va="center",
                fontsize=8,
                color="0.25",
                bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.7"},
            )
    for ax in axes:
        ax.set_xlabel("")
    axes[0].set_title("The alpha each configuration chose")
    axes[1].set_title("Gain over alpha = 0 where tuned (bar: mean; dots: configs)")
    fig.tight_layout()
    _title(fig, "Alpha tuning by replay", subtitle)
    return fig


REAL_METRICS = (
    "real_hit_rate",
    "replay_hit_rate",
    "ttft_mean_ms",
    "ttft_p95_ms",
    "wall_s",
    "clock_s",
)


def real_summary(frame: pd.DataFrame) -> RoundsSummary:
    """The real run over its rounds (:func:`core.metrics.summarize_rounds`): per policy the
    median, min and max of each of :data:`REAL_METRICS`, and its number of rounds."""
    return summarize_rounds(frame, "policy", REAL_METRICS, order=POLICY_ORDER)


def plot_real(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """Real engine on this CPU: hit rate (engine vs cache replay) and TTFT on the engine's CPU
    clock per policy; bars at the median over rounds, whiskers min-max, dots per round. Colour
    is the policy in every panel; the replay's bars are hatched."""
    from core.sim.profiled import cpu_model_name

    policies = [p for p in POLICY_ORDER if p in set(frame["policy"])]
    colors = color_map(policies)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))
    ax = axes[0]
    spread_bars(ax, frame, "real_hit_rate", policies, colors, shift=-0.2, width=0.4)
    spread_bars(
        ax,
        frame,
        "replay_hit_rate",
        policies,
        colors,
        shift=0.2,
        width=0.4,
        alpha=0.45,
        hatch="//",
        edgecolor="0.3",
        linewidth=0,
        labels=True,
    )
    ax.set_ylabel("Token hit rate")
    ax.legend(
        handles=[
            Patch(facecolor="0.5", label="real engine"),
            Patch(facecolor="0.5", alpha=0.45, hatch="//", edgecolor="0.3", label="cache replay"),
        ],
        loc="upper right",
    )
    ax.set_ylim(0, 1.15)
    for ax, col, label in (
        (axes[1], "ttft_mean_ms", "Mean TTFT (ms, engine CPU clock)"),
        (axes[2], "ttft_p95_ms", "P95 TTFT (ms, engine CPU clock)"),
    ):
        spread_bars(ax, frame, col, policies, colors, width=0.6, labels=True)
        ax.set_ylabel(label)
    sessions, requests = int(frame["sessions"].iloc[0]), int(frame["requests"].iloc[0])
    rounds = real_summary(frame).rounds
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.text(
        0.01,
        -0.02,
        "Bars: median over rounds; whiskers: min-max; dots: rounds. Times on "
        "the engine thread's CPU clock: its CPU seconds plus the sessions' arrival gaps "
        "(not slept), so time other processes take from the core does not count.",
        fontsize=9,
    )
    _title(
        fig,
        "Real mode: a tiny hybrid model served by the engine, measured on this machine",
        f"{cpu_model_name()}; {sessions} LMSys-like sessions ({requests} turns) made for the "
        f"tiny model; {rounds} interleaved round{'s' if rounds != 1 else ''}, each run on a "
        f"fresh engine: {order_words(frame, 'policy')}",
    )
    return {"real-mode": fig}
