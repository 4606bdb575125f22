"""The report's charts, drawn with matplotlib's object API (no pyplot state, Agg canvas) and returned
as PNG data URIs so the HTML file stands alone. Histograms arrive counted (aggregates of the dataset),
never as the values themselves."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

if TYPE_CHECKING:
    from mmdata.report.aggregates import Histogram

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


def histograms(panels: list[tuple[str, "Histogram"]], title: str) -> str:
    """One panel per histogram, counted beforehand (a log-scale one is drawn on a log x axis)."""
    figure = Figure(figsize=(3.2 * len(panels), 2.8))
    for position, (label, histogram) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), position + 1)
        _bars(axes, histogram, PALETTE[position % len(PALETTE)])
        axes.set_xlabel(label)
        axes.spines[["top", "right"]].set_visible(False)
    figure.suptitle(title)
    return to_data_uri(figure)


def score_histogram(histogram: "Histogram", threshold: float | None, title: str) -> str:
    """clip_score distribution with the filter's cut-off drawn as a vertical line."""
    figure = Figure(figsize=(7, 3))
    axes = figure.subplots()
    _bars(axes, histogram, PALETTE[0])
    if threshold is not None:
        axes.axvline(threshold, color=PALETTE[3], linestyle="--", label=f"threshold {threshold:.3f}")
        axes.legend()
    axes.set_xlabel("clip_score")
    axes.set_ylabel("samples")
    axes.set_title(title)
    axes.spines[["top", "right"]].set_visible(False)
    return to_data_uri(figure)


def bars(labels: list[str], counts: list[int], title: str) -> str:
    """Vertical bars, one per label, in the order given."""
    figure = Figure(figsize=(7, 3))
    axes = figure.subplots()
    axes.bar(labels, counts, color=PALETTE[2])
    axes.set_ylabel("rows")
    axes.set_title(title)
    axes.spines[["top", "right"]].set_visible(False)
    return to_data_uri(figure)


def _bars(axes, histogram: "Histogram", colour: str) -> None:
    edges = 10.0 ** histogram.edges if histogram.log else histogram.edges
    axes.stairs(histogram.counts, edges, fill=True, color=colour)
    if histogram.log:
        axes.set_xscale("log")


def entry_count_curves(before: np.ndarray, after: np.ndarray, t: int, title: str, points: int = 2000) -> str:
    """Per-entry sample counts before and after balancing, each sorted from the largest, on log-log axes
    with the cap ``t`` drawn: the head flattens to ``t``, the tail is unchanged. At most ``points``
    log-spaced ranks are drawn, so a 500k-entry list makes a small picture."""
    figure = Figure(figsize=(7, 3.2))
    axes = figure.subplots()
    for position, (label, counts) in enumerate((("before", before), ("after", after))):
        ordered = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
        ordered = ordered[ordered > 0]
        if not len(ordered):
            continue
        ranks = np.unique(np.geomspace(1, len(ordered), min(points, len(ordered))).astype(np.int64))
        axes.plot(ranks, ordered[ranks - 1], color=PALETTE[position], label=f"{label} ({len(ordered):,} entries)")
    axes.axhline(t, color=PALETTE[3], linestyle="--", label=f"t = {t:,}")
    axes.set_xscale("log")
    axes.set_yscale("log")
    for axis in (axes.xaxis, axes.yaxis):  # plain counts, not 2×10⁰ (after set_*scale, which resets them)
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}"))
        axis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("entry rank")
    axes.set_ylabel("matched samples")
    axes.set_title(title)
    axes.legend(fontsize=8)
    axes.spines[["top", "right"]].set_visible(False)
    return to_data_uri(figure)
