"""Figures laid out like Marconi's Figs. 7-9, plus alpha tuning and the real-engine run."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from core.artifact import RunContext, color_map

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
    return frame["rate"].map(lambda r: f"{r:g} sess/s" if r else "trace")


def plot_hitrate(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """Fig. 7 (vs vLLM+), Fig. 8 (vs SGLang+), the absolute hit rates, Fig. 9 (P95 TTFT) and
    the tuned alphas."""
    cmp = comparisons(frame)
    cmp["arrivals"] = _label(cmp)
    frame = frame.assign(arrivals=_label(frame))
    workloads = list(dict.fromkeys(frame["workload"]))
    figs: dict[str, plt.Figure] = {}

    def grid(data: pd.DataFrame, y: str, ylabel: str, title: str, hue: str = "arrivals",
             kind: str = "line", order: list[str] | None = None) -> plt.Figure:
        palette = color_map(order or sorted(data[hue].unique()))
        common = dict(data=data, x="cache_gb", y=y, hue=hue, col="workload", col_order=workloads,
                      kind=kind, palette=palette, facet_kws={"sharex": False, "sharey": False},
                      height=2.8, aspect=1.0)  # fmt: skip
        if kind == "line":
            common["marker"] = "o"
        if order is not None:
            common["hue_order"] = order
        g = sns.relplot(**common)
        g.set_axis_labels("Cache size (GB)", ylabel)
        g.set_titles("{col_name}")
        g.figure.suptitle(title, y=1.03)
        return g.figure

    figs["fig7-vs-vllm"] = grid(
        cmp, "ratio_vs_vllm", "Hit rate: Marconi / vLLM+",
        "Fig. 7: token hit rate of Marconi relative to vLLM+ (paper: up to 34.4x)")
    figs["fig8-vs-sglang"] = grid(
        cmp, "gain_vs_sglang_pp", "Marconi - SGLang+ (points)",
        "Fig. 8: token hit rate gain of Marconi over SGLang+")
    policies = [p for p in POLICY_ORDER if p in set(frame["policy"])]
    shown = frame[frame["policy"] != "marconi-alpha0"]
    figs["hit-rates"] = grid(
        shown.assign(token_hit_pct=100 * shown["token_hit_rate"]), "token_hit_pct",
        "Token hit rate (%)", "Token hit rate by policy (mean over arrival rates)", hue="policy",
        order=[p for p in policies if p != "marconi-alpha0"])
    figs["fig9-ttft"] = _ttft_bars(shown, workloads,
                                   [p for p in policies if p != "marconi-alpha0"])
    if "alpha_gain_pp" in cmp:
        figs["alpha"] = _alpha(frame, cmp, workloads)
    return figs


def _ttft_bars(frame: pd.DataFrame, workloads: list[str], policies: list[str]) -> plt.Figure:
    rows = [("ttft_p95_ms", "P95 TTFT (ms)\n7B hybrid, H100 roofline")]
    if "ttft_cpu_p95_s" in frame:
        rows.append(("ttft_cpu_p95_s", "P95 TTFT (s)\ntiny hybrid, this CPU"))
    fig, axes = plt.subplots(len(rows), len(workloads), figsize=(3.2 * len(workloads),
                                                                  2.8 * len(rows)), squeeze=False)
    colors = color_map(policies)
    for r, (column, label) in enumerate(rows):
        for ax, w in zip(axes[r], workloads, strict=True):
            sub = frame[frame["workload"] == w]
            sns.barplot(data=sub, x="cache_gb", y=column, hue="policy", hue_order=policies,
                        palette=colors, ax=ax, errorbar=None)
            ax.set_title(w if r == 0 else "")
            ax.set_xlabel("Cache size (GB)" if r == len(rows) - 1 else "")
            ax.set_ylabel(label if ax is axes[r][0] else "")
            if (r, ax) != (0, axes[0][-1]):
                ax.get_legend().remove()
            else:
                sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), title=None)
    fig.suptitle("Fig. 9: P95 time to first token (mean over arrival rates)")
    fig.tight_layout()
    return fig


def _alpha(frame: pd.DataFrame, cmp: pd.DataFrame, workloads: list[str]) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    tuned = frame[frame["policy"] == "marconi"].copy()
    # cache sizes differ by workload: label each by its rank within its workload
    rank = tuned.groupby("workload")["cache_gb"].rank(method="dense").astype(int)
    names = {1: "smallest cache", 2: "middle cache", 3: "largest cache"}
    tuned["cache"] = rank.map(lambda k: names.get(k, f"cache #{k}"))
    sns.stripplot(data=tuned, x="workload", y="tuned_alpha", hue="cache", order=workloads,
                  ax=axes[0], palette="crest", dodge=True)
    axes[0].set_ylabel("Tuned alpha (none: window not over)")
    axes[0].legend(title=None, fontsize=7)
    sns.barplot(data=cmp, x="workload", y="alpha_gain_pp", order=workloads, ax=axes[1],
                color=color_map(["marconi"])["marconi"], errorbar=None)
    axes[1].axhline(0, color="black", lw=0.8)
    axes[1].set_ylabel("FLOPs saved: tuned - alpha 0 (points)")
    fig.suptitle("Alpha tuning by replay: the chosen alpha and what it gains over recency only")
    fig.tight_layout()
    return fig


def plot_real(frame: pd.DataFrame, ctx: RunContext) -> dict[str, plt.Figure]:
    """Real engine on this CPU: hit rate (real vs cache replay) and TTFT per policy."""
    policies = [p for p in POLICY_ORDER if p in set(frame["policy"])]
    colors = color_map(policies)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    long = frame.melt(id_vars=["policy"], value_vars=["real_hit_rate", "replay_hit_rate"],
                      var_name="source", value_name="hit")
    long["source"] = long["source"].map({"real_hit_rate": "real engine",
                                         "replay_hit_rate": "cache replay"})
    sns.barplot(data=long, x="policy", y="hit", hue="source", order=policies, ax=axes[0],
                errorbar=None)
    axes[0].set_ylabel("Token hit rate")
    sns.barplot(data=frame, x="policy", y="ttft_mean_ms", order=policies, palette=colors,
                hue="policy", ax=axes[1], errorbar=None, legend=False)
    axes[1].set_ylabel("Mean TTFT (ms, this CPU)")
    sns.barplot(data=frame, x="policy", y="ttft_p95_ms", order=policies, palette=colors,
                hue="policy", ax=axes[2], errorbar=None, legend=False)
    axes[2].set_ylabel("P95 TTFT (ms, this CPU)")
    for ax in axes:
        ax.set_xlabel("")
    axes[0].legend(title=None, fontsize=8)
    fig.suptitle("Real mode: a tiny hybrid model served by the engine on this CPU")
    fig.tight_layout()
    return {"real-mode": fig}
