"""The report's charts, drawn with matplotlib's object API (no pyplot state, Agg canvas) and returned
as PNG data URIs so the HTML file stands alone."""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.figure import Figure

PALETTE = ("#2f6db5", "#e07b39", "#3a9d5d", "#c0392b", "#8e5ea2", "#7f8c8d", "#d4ac0d", "#16a085")


def to_data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def funnel_chart(stages: list[tuple[str, int]], title: str) -> str:
    """Horizontal bars, first stage on top, each labelled with its count and share of the first."""
    figure = Figure(figsize=(7, 0.45 * len(stages) + 1.0))
    axes = figure.subplots()
    labels = [label for label, _ in stages][::-1]
    counts = [count for _, count in stages][::-1]
    axes.barh(labels, counts, color=PALETTE[0])
    first = max(stages[0][1], 1)
    for position, count in enumerate(counts):
        axes.text(count, position, f" {count:,} ({100 * count / first:.1f}%)", va="center", fontsize=9)
    axes.set_xlim(0, first * 1.3)
    axes.set_title(title)
    axes.spines[["top", "right"]].set_visible(False)
    return to_data_uri(figure)


def stacked_bars(rows: list[str], series: dict[str, list[int]], title: str) -> str:
    """One horizontal bar per row (a domain), stacked by series (a status)."""
    figure = Figure(figsize=(7, 0.5 * len(rows) + 1.4))
    axes = figure.subplots()
    left = np.zeros(len(rows))
    for position, (name, counts) in enumerate(series.items()):
        axes.barh(rows, counts, left=left, label=name, color=PALETTE[position % len(PALETTE)])
        left += np.asarray(counts)
    axes.set_title(title)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.spines[["top", "right"]].set_visible(False)
    return to_data_uri(figure)


def histograms(panels: list[tuple[str, np.ndarray]], title: str) -> str:
    figure = Figure(figsize=(3.2 * len(panels), 2.8))
    for position, (label, values) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), position + 1)
        axes.hist(values, bins=40, color=PALETTE[position % len(PALETTE)])
        axes.set_xlabel(label)
        axes.spines[["top", "right"]].set_visible(False)
    figure.suptitle(title)
    return to_data_uri(figure)


def score_histogram(scores: np.ndarray, threshold: float | None, title: str) -> str:
    """clip_score distribution with the filter's cut-off drawn as a vertical line."""
    figure = Figure(figsize=(7, 3))
    axes = figure.subplots()
    axes.hist(scores, bins=60, color=PALETTE[0])
    if threshold is not None:
        axes.axvline(threshold, color=PALETTE[3], linestyle="--", label=f"threshold {threshold:.3f}")
        axes.legend()
    axes.set_xlabel("clip_score")
    axes.set_ylabel("samples")
    axes.set_title(title)
    axes.spines[["top", "right"]].set_visible(False)
    return to_data_uri(figure)
