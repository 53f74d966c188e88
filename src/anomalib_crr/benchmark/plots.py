# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Plots of a benchmark run (matplotlib, Agg backend, PNG).

* ``accuracy_vs_latency.png``: mAD (mean over categories) against batch-1 latency (log scale, ms), one panel
  per dataset setting, one labelled point per model. Labels are placed greedily at the first of several
  offsets around their point where they overlap no other label, point or the axes border, so they stay
  readable without a label-placement dependency.
* ``image_auroc_per_category.png``: grouped bars of image AUROC per category (one bar per model), one panel
  per dataset setting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MEAN = "mean"
OFFSETS = [(8, 8), (8, -14), (-8, 8), (-8, -14), (0, 14), (0, -18), (14, 0), (-14, 0), (20, 20), (-20, -24)]
# Mantissas of the labelled latency ticks, sparsest first: the first set that puts at least MIN_TICKS ticks in
# the axis range is used (1-2-5 steps for a narrow range, decades for a wide one).
TICK_MANTISSAS = [(1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)]
MIN_TICKS = 3


def _settings(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["dataset"], r["mode"]) for r in rows))


def _mean_over_seeds(rows: Sequence[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in rows if r[key] is not None and not math.isnan(float(r[key]))]
    return sum(values) / len(values) if values else math.nan


def _place_labels(ax: Any, points: list[tuple[float, float, str]]) -> None:
    """Annotate each point with its label at the first offset that overlaps nothing already placed."""
    figure = ax.figure
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    occupied = []
    for x, y, _ in points:
        px, py = ax.transData.transform((x, y))
        occupied.append(matplotlib.transforms.Bbox.from_extents(px - 5, py - 5, px + 5, py + 5))
    for x, y, label in points:
        chosen = None
        for dx, dy in OFFSETS:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            text = ax.annotate(
                label, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va="bottom", fontsize=8
            )
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            inside = axes_box.contains(box.x0, box.y0) and axes_box.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in occupied):
                chosen = box
                break
            text.remove()
        if chosen is None:  # every offset collides: fall back to the first one, with an arrow
            text = ax.annotate(
                label,
                (x, y),
                xytext=OFFSETS[-1],
                textcoords="offset points",
                fontsize=8,
                arrowprops={"arrowstyle": "-", "lw": 0.5},
            )
            chosen = text.get_window_extent(renderer)
        occupied.append(chosen)


def log_ticks(low: float, high: float) -> list[float]:
    """Tick positions for a log axis from ``low`` to ``high`` with at least :data:`MIN_TICKS` of them.

    Why: matplotlib's log axis labels decades only, so latencies of 8 to 11 ms (x-range 4 to 23 ms) got the
    single label "10", and a reader could not tell 9 ms from 20 ms. Labelling the decades' 1-2-5 (or finer)
    points when there are too few decades keeps at least three readable numbers on every panel.

    Args:
        low: Lower end of the axis (> 0).
        high: Upper end of the axis (> ``low``).

    Returns:
        Increasing positions inside ``[low, high]``; the densest set of :data:`TICK_MANTISSAS` when even that one
        gives fewer than :data:`MIN_TICKS` (then the range is less than a factor of about 1.5).
    """
    ticks: list[float] = []
    for mantissas in TICK_MANTISSAS:
        ticks = [
            m * 10.0**exponent
            for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
            for m in mantissas
            if low <= m * 10.0**exponent <= high
        ]
        if len(ticks) >= MIN_TICKS:
            break
    return ticks


def accuracy_vs_latency(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Scatter of mAD vs batch-1 latency, one labelled point per model, a panel per dataset setting."""
    fig = latency_figure(rows)
    if fig is None:
        return None
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def latency_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """The figure :func:`accuracy_vs_latency` saves (``None`` without mean rows); the caller closes it."""
    means = [r for r in rows if r["category"] == MEAN]
    settings = _settings(means)
    if not settings:
        return None
    models = list(dict.fromkeys(r["model"] for r in means))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    fig, axes = plt.subplots(1, len(settings), figsize=(7.5 * len(settings), 5), squeeze=False)
    to_label = []
    for ax, (dataset, mode) in zip(axes[0], settings, strict=True):
        points = []
        for model in models:
            subset = [r for r in means if r["model"] == model and r["dataset"] == dataset and r["mode"] == mode]
            if not subset:
                continue
            x, y = _mean_over_seeds(subset, "latency_ms"), _mean_over_seeds(subset, "mAD")
            if math.isnan(x) or math.isnan(y):
                continue
            ax.scatter([x], [y], s=60, color=colors[model], label=model, edgecolor="black", linewidth=0.5, zorder=3)
            points.append((x, y, model))
        ax.set_xscale("log")
        # Plain numbers on the major ticks only (see log_ticks): log-axis minor labels (3x10^3, ...) collide.
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("latency per image at batch 1 (ms, log scale)")
        ax.set_ylabel("mAD (mean of 7 metrics over categories)")
        ax.set_title(f"{dataset} ({mode.replace('_', '-')})")
        ax.grid(True, which="both", alpha=0.3)
        if points:
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            ax.set_xlim(min(xs) / 2.2, max(xs) * 2.2)
            ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(log_ticks(min(xs) / 2.2, max(xs) * 2.2)))
            span = max(max(ys) - min(ys), 0.05)
            ax.set_ylim(min(ys) - 0.35 * span, max(ys) + 0.35 * span)
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="model")
            to_label.append((ax, points))
    fig.tight_layout()
    for ax, points in to_label:  # after the layout, so the overlap checks see the final positions
        _place_labels(ax, points)
    return fig


def image_auroc_bars(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Grouped bars of image AUROC per category (bars = models), a panel per dataset setting."""
    per_category = [r for r in rows if r["category"] != MEAN]
    settings = _settings(per_category)
    if not settings:
        return None
    models = list(dict.fromkeys(r["model"] for r in per_category))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    widths = [max(4.0, 1.2 * len({r["category"] for r in per_category if r["dataset"] == d}) + 3) for d, _ in settings]
    fig, axes = plt.subplots(1, len(settings), figsize=(sum(widths), 4.5), squeeze=False)
    for ax, (dataset, mode) in zip(axes[0], settings, strict=True):
        subset = [r for r in per_category if r["dataset"] == dataset and r["mode"] == mode]
        categories = list(dict.fromkeys(r["category"] for r in subset))
        present = [m for m in models if any(r["model"] == m for r in subset)]
        width = 0.8 / max(len(present), 1)
        for i, model in enumerate(present):
            heights = []
            for category in categories:
                cell = [r for r in subset if r["model"] == model and r["category"] == category]
                heights.append(_mean_over_seeds(cell, "image_AUROC") if cell else 0.0)
            xs = [c + (i - (len(present) - 1) / 2) * width for c in range(len(categories))]
            ax.bar(xs, heights, width=width, color=colors[model], label=model, edgecolor="black", linewidth=0.4)
        ax.set_xticks(range(len(categories)), categories)
        ax.set_ylim(0, 1.05)
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylabel("image AUROC (0.5 = chance)")
        ax.set_xlabel("category")
        ax.set_title(f"{dataset} ({mode.replace('_', '-')})")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_plots(rows: Sequence[dict[str, Any]], folder: Path) -> list[Path]:
    """Write both plots into ``folder``; returns the paths written."""
    written = [
        accuracy_vs_latency(rows, folder / "accuracy_vs_latency.png"),
        image_auroc_bars(rows, folder / "image_auroc_per_category.png"),
    ]
    return [p for p in written if p is not None]
