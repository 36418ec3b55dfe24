"""spread_bars: a bar at the median over rounds, whiskers min-max, one dot per round."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection

from core.artifact import color_map, spread_bars


def test_median_bar_min_max_whiskers_and_a_dot_per_round():
    frame = pd.DataFrame({"router": ["A", "A", "A", "B", "C"], "ms": [3.0, 1.0, 8.0, 2.0, 5.0]})
    colors = color_map(["A", "B", "C", "D"])
    fig, ax = plt.subplots()
    try:
        spread_bars(ax, frame, "ms", ["D", "A", "B"], colors, key="router", scale=1e-3)
        bars = ax.patches
        # D has no rows (no bar), C is not in the order (not drawn)
        assert [round(b.get_x() + b.get_width() / 2, 6) for b in bars] == [1.0, 2.0]
        assert [b.get_height() for b in bars] == pytest.approx([3e-3, 2e-3])
        assert bars[0].get_facecolor()[:3] == pytest.approx(colors["A"])
        # one whisker (A ran 3 rounds; B one) from min to max, and A's three dots
        (whisker,) = [c for c in ax.collections if isinstance(c, LineCollection)]
        (seg,) = whisker.get_segments()
        assert seg[:, 1] == pytest.approx([1e-3, 8e-3])
        (dots,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert sorted(dots.get_offsets()[:, 1]) == pytest.approx([1e-3, 3e-3, 8e-3])
        assert list(ax.get_xticks()) == [0, 1, 2] and not any(
            t.get_text() for t in ax.get_xticklabels()
        )
    finally:
        plt.close(fig)


def test_shifted_bars_side_by_side_with_labels():
    frame = pd.DataFrame({"policy": ["a", "b"], "x": [1.0, 2.0], "y": [1.5, 2.5]})
    colors = color_map(["a", "b"])
    fig, ax = plt.subplots()
    try:
        spread_bars(ax, frame, "x", ["a", "b"], colors, shift=-0.2, width=0.4)
        spread_bars(
            ax, frame, "y", ["a", "b"], colors, shift=0.2, width=0.4, hatch="//", labels=True
        )
        centers = [b.get_x() + b.get_width() / 2 for b in ax.patches]
        assert centers == pytest.approx([-0.2, 0.8, 0.2, 1.2])
        assert ax.patches[2].get_hatch() == "//"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
        assert np.allclose(ax.get_xlim(), (-0.6, 1.6))
    finally:
        plt.close(fig)
