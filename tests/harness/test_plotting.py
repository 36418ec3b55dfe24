"""The shared figure pieces: spread_bars (a bar at the median over rounds, whiskers min-max, one
dot per round) and its row of panels, marked lines per item, item legends, the plain-number log
axis and right-anchored tick labels."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection

from core.artifact import (
    anchor_right,
    color_map,
    item_legend,
    log_axis,
    marker_lines,
    spread_bars,
    spread_panels,
)


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


def test_spread_panels_one_per_metric_present():
    frame = pd.DataFrame({"policy": ["a", "a", "b"], "x": [1.0, 3.0, 2.0]})
    panels = [("x", "x (s)", 1.0), ("missing", "never drawn", 1.0), ("x", "x (ms)", 1e3)]
    fig = spread_panels(frame, panels, ["a", "b"], color_map(["a", "b"]), panel_size=(2.0, 3.0))
    try:
        assert [ax.get_ylabel() for ax in fig.axes] == ["x (s)", "x (ms)"]
        assert tuple(fig.get_size_inches()) == pytest.approx((4.0, 3.0))
        assert [b.get_height() for b in fig.axes[1].patches] == pytest.approx([2e3, 2e3])
    finally:
        plt.close(fig)


def test_marker_lines_and_item_legend():
    frame = pd.DataFrame(
        {"router": ["r", "r", "s", "s"], "rate": [1, 2, 1, 2], "ms": [1.0, 2.0, 3.0, 4.0]}
    )
    colors, markers = color_map(["s", "r"]), {"r": "o", "s": "X"}
    fig, ax = plt.subplots()
    try:
        marker_lines(ax, frame, "rate", "ms", ["s", "r"], colors, markers, key="router")
        assert ax.get_legend() is None
        by_color = {tuple(line.get_color()[:3]): line for line in ax.get_lines()}
        assert list(by_color[tuple(colors["r"])].get_ydata()) == [1.0, 2.0]
        assert by_color[tuple(colors["s"])].get_marker() == "X"
        assert all(line.get_linestyle() == "-" for line in ax.get_lines())
        item_legend(fig, ["s", "r"], colors, markers=markers, title="router")
        item_legend(fig, ["r"], colors, frameon=True)
        lines, squares = fig.legends
        assert [t.get_text() for t in lines.get_texts()] == ["s", "r"]
        assert lines.get_title().get_text() == "router" and not lines.get_frame_on()
        assert [h.get_marker() for h in lines.legend_handles] == ["X", "o"]
        assert squares.get_frame_on() and squares.legend_handles[0].get_facecolor()[:3] == (
            pytest.approx(colors["r"])
        )
    finally:
        plt.close(fig)


def test_log_axis_in_plain_numbers_and_labels_anchored_right():
    fig, ax = plt.subplots()
    try:
        ax.plot(["first", "second"], [0.02, 30.0])
        log_axis(ax)
        anchor_right(ax, 30, 9)
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_yticklabels() if 0.02 <= t.get_position()[1] <= 30]
        assert labels[:3] == ["0.02", "0.05", "0.1"] and "20" in labels
        ticks = ax.get_xticklabels()
        assert [t.get_rotation() for t in ticks] == [30, 30]
        assert {
            (t.get_horizontalalignment(), t.get_rotation_mode(), t.get_fontsize()) for t in ticks
        } == {("right", "anchor", 9)}
    finally:
        plt.close(fig)
