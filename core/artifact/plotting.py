"""One seaborn style for every artifact's figures, saving them as PNG and PDF, and the pieces
several artifacts draw alike: bars for measurements repeated in rounds (:func:`spread_bars`,
a row of them: :func:`spread_panels`), one marked line per item (:func:`marker_lines`), a figure legend of items in their colours
(:func:`item_legend`), a log axis in plain numbers (:func:`log_axis`) and rotated tick labels
(:func:`anchor_right`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window (CI has no display)

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
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


def spread_panels(
    frame: pd.DataFrame,
    panels: Sequence[tuple[str, str, float]],
    order: Sequence[str],
    colors: Mapping[str, Any],
    *,
    key: str = "policy",
    panel_size: tuple[float, float] = (3.0, 3.6),
) -> plt.Figure:
    """A row of :func:`spread_bars` panels, one per ``(metric, y label, scale)`` of ``panels``
    whose metric ``frame`` has, each ``panel_size`` (width, height) inches."""
    present = [p for p in panels if p[0] in frame]
    w, h = panel_size
    fig, axes = plt.subplots(1, len(present), figsize=(w * len(present), h), squeeze=False)
    for ax, (metric, label, scale) in zip(axes[0], present, strict=True):
        spread_bars(ax, frame, metric, order, colors, key=key, scale=scale)
        ax.set_ylabel(label)
    return fig


def marker_lines(
    ax: plt.Axes,
    frame: pd.DataFrame,
    x: str,
    y: str,
    order: Sequence[str],
    colors: Mapping[str, Any],
    markers: Mapping[str, str],
    *,
    key: str = "policy",
) -> None:
    """One solid line of ``y`` against ``x`` per item of ``order`` (the rows whose ``key`` is
    it), in its colour with its marker; no legend on ``ax`` (:func:`item_legend` names them)."""
    sns.lineplot(
        data=frame,
        x=x,
        y=y,
        hue=key,
        style=key,
        hue_order=order,
        style_order=order,
        markers=markers,
        dashes=False,
        palette=colors,
        ax=ax,
        legend=False,
    )


def item_legend(
    fig: plt.Figure,
    items: Sequence[str],
    colors: Mapping[str, Any],
    *,
    markers: Mapping[str, str] | None = None,
    **kw: Any,
) -> None:
    """A figure legend naming ``items`` in their ``colors``: a line with the item's marker when
    ``markers`` is given, else a filled square. ``kw`` goes to ``fig.legend`` (``loc``,
    ``title``, font sizes, ...); the legend has no frame unless ``frameon`` says so."""
    handles: list[Any]
    if markers is not None:
        handles = [plt.Line2D([], [], color=colors[x], marker=markers[x], label=x) for x in items]
    else:
        handles = [plt.Rectangle((0, 0), 1, 1, color=colors[x], label=x) for x in items]
    kw.setdefault("frameon", False)
    fig.legend(handles=handles, **kw)


def log_axis(ax: plt.Axes) -> None:
    """A log y axis labelled ..., 0.1, 0.2, 0.5, 1, 2, 5, 10, ... in plain numbers (no 4x10^-1,
    no crowded minor labels)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(mticker.NullFormatter())


def anchor_right(ax: plt.Axes, rotation: float, size: float | None = None) -> None:
    """X tick labels rotated by ``rotation`` degrees so that each ends under its tick (no label
    runs into its neighbour), in font ``size`` when given."""
    for t in ax.get_xticklabels():
        t.set_rotation(rotation)
        t.set_horizontalalignment("right")
        t.set_rotation_mode("anchor")
        if size:
            t.set_fontsize(size)


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
