"""One seaborn style for every artifact's figures, saving them as PNG and PDF, and the bars
every artifact draws for measurements repeated in rounds (:func:`spread_bars`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window (CI has no display)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

PALETTE = "colorblind"
RC = {
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # embed TrueType so PDF text stays text (camera-ready requirement)
}


@contextmanager
def figure_style():
    """Servelab's figure style: seaborn ``whitegrid`` at paper context, colorblind palette."""
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.2):
        with plt.rc_context(RC), sns.color_palette(PALETTE):
            yield


def color_map(labels: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    """Label -> colour, stable across figures of one artifact (the order of first appearance)."""
    labels = list(dict.fromkeys(labels))
    colors = sns.color_palette(PALETTE, n_colors=max(len(labels), 1))
    return dict(zip(labels, colors, strict=False))


def spread_bars(
    ax: plt.Axes,
    frame: pd.DataFrame,
    metric: str,
    order: Sequence[str],
    colors: Mapping[str, Any],
    *,
    key: str = "policy",
    scale: float = 1.0,
    shift: float = 0.0,
    width: float = 0.7,
    labels: bool = False,
    **bar: Any,
) -> None:
    """Per item of ``order`` (the rows whose ``key`` is it), at x = its index + ``shift``: a bar
    at the median of ``metric`` x ``scale`` over its rounds, whiskers from min to max and one
    dot per round (when it has more than one); an item without rows gets no bar. ``bar`` goes
    to ``ax.bar`` (``hatch``, ``alpha``, ...). X ticks name the items when ``labels``, else
    there are none (a legend names the colours)."""
    for i, item in enumerate(order):
        v = frame.loc[frame[key] == item, metric].to_numpy(dtype=float) * scale
        if not len(v):
            continue
        x, med = i + shift, float(np.median(v))
        ax.bar(x, med, color=colors[item], width=width, **bar)
        if len(v) > 1:
            ax.errorbar(
                x,
                med,
                yerr=[[med - v.min()], [v.max() - med]],
                color="black",
                capsize=4 * width / 0.7,
                lw=1.2,
            )
            ax.scatter(x + np.linspace(-0.2, 0.2, len(v)) * width, v, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(order)), list(order) if labels else [])
    ax.set_xlim(-0.6, len(order) - 0.4)


def save_figure(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """Write ``fig-<name>.png`` and ``fig-<name>.pdf`` into ``out`` and close the figure."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"fig-{name}.png", out / f"fig-{name}.pdf"]
    try:
        for p in paths:
            fig.savefig(p)
    finally:
        plt.close(fig)
    return paths
