"""The fidelity benchmark's figure: predicted against measured, per step and per request
percentile, for each system measured (our engine, vLLM)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_POINTS = 4000  # steps drawn per panel (an even subsample: a scatter of 10^4 is a blot)


def _request_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for pt in [{"name": "offline", **res["offline"]}, *res["loads"]]:
        for key, e in pt["requests"].items():
            metric, stat = key.split("_")
            if e["error"] is None:
                continue
            rows.append(
                {
                    "run": pt["name"],
                    "metric": metric.upper(),
                    "statistic": stat,
                    "measured_s": e["measured"],
                    "predicted_s": e["predicted"],
                }
            )
    return rows


def _diagonal(ax: Any, xs: Sequence[float], ys: Sequence[float]) -> None:
    lo = min(min(xs), min(ys))
    hi = max(max(xs), max(ys))
    ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls="--", zorder=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    # matplotlib's own minor labels overlap at this width; over 2+ decades label 3s only
    subs = (2.0, 5.0) if hi / lo < 100 else (3.0,)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_locator(LogLocator(subs=subs))
        axis.set_minor_formatter(FormatStrFormatter("%g"))
        axis.set_major_formatter(FormatStrFormatter("%g"))


def figure(report: dict[str, Any], pairs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """``fig-fidelity.png`` (and ``.pdf``): a column per system; top, every step's predicted
    (drift-corrected) against measured seconds by kind; bottom, each request statistic's
    predicted against measured (mean of the two runs) by metric and statistic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    systems = [s for s in ("engine", "vllm") if s in pairs and pairs[s]]
    titles = {"engine": "Servelab engine", "vllm": "vLLM (CPU build)"}
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(2, len(systems), figsize=(5.2 * len(systems), 9), squeeze=False)
    for j, name in enumerate(systems):
        steps = pd.DataFrame(pairs[name])
        if len(steps) > MAX_POINTS:
            steps = steps.iloc[:: -(-len(steps) // MAX_POINTS)]
        ax = axes[0][j]
        sns.scatterplot(
            data=steps,
            x="measured_s",
            y="predicted_s",
            hue="kind",
            s=8,
            alpha=0.5,
            linewidth=0,
            ax=ax,
            hue_order=["prefill", "decode", "mixed"],
        )
        _diagonal(ax, steps["measured_s"], steps["predicted_s"])
        ax.set(
            title=f"{titles[name]}: every step",
            xlabel="measured step time (s)",
            ylabel="predicted, drift-corrected (s)",
        )
        ax.legend(title="step", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        reqs = pd.DataFrame(_request_rows(report["results"][name]))
        ax = axes[1][j]
        if not reqs.empty:
            sns.scatterplot(
                data=reqs,
                x="measured_s",
                y="predicted_s",
                hue="metric",
                style="statistic",
                s=40,
                ax=ax,
            )
            _diagonal(ax, reqs["measured_s"], reqs["predicted_s"])
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        ax.set(
            title=f"{titles[name]}: request latency statistics, all loads",
            xlabel="measured, mean of two runs (s)",
            ylabel="simulated (s)",
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)
    return path
