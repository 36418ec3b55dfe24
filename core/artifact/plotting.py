"""One seaborn style for every artifact's figures, and saving them as PNG and PDF."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window (CI has no display)

import matplotlib.pyplot as plt  # noqa: E402
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
