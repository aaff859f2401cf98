"""The figures of ``lesa-orch report``, each returned as a base64 PNG for an inline ``<img>``.

Figures are built on matplotlib's Agg canvas without pyplot, so no global figure state is touched and
no display is needed. Inputs are plain values; every function returns None when it has nothing to draw.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lesa_core.metrics import names

FAMILY_COLOURS = {"LESA": "#1f77b4", "SA": "#ff7f0e", "conv": "#2ca02c", "other": "#7f7f7f"}
TERM_COLOURS = {"local": "#17becf", "context": "#9467bd"}
_RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_MAX_LEGEND = 10
Points = Sequence[tuple[int, float]]  # (step, value)


def to_base64_png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def learning_curves(runs: Sequence[tuple[str, Mapping[str, Points]]], metrics: Sequence[str]) -> str | None:
    """One panel per metric (x: epoch), one line per run; ``runs`` is (label, {metric: points})."""
    drawn = [metric for metric in metrics if any(history.get(metric) for _, history in runs)]
    if not drawn:
        return None
    figure = Figure(figsize=(3.8 * len(drawn), 3.3))
    axes = figure.subplots(1, len(drawn), squeeze=False)[0]
    for ax, metric in zip(axes, drawn, strict=True):
        for index, (label, history) in enumerate(runs):
            points = sorted(history.get(metric, ()))
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o", markersize=3, linewidth=1.8,
                        color=_RUN_COLOURS[index % len(_RUN_COLOURS)], label=label if index < _MAX_LEGEND else None)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if metric == names.TRAIN_LR:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axes[-1].legend(fontsize=8, loc="best")
    figure.tight_layout()
    return to_base64_png(figure)


def _ap_of_size(kind: str, size: str) -> str:
    return names.coco_metric(kind, f"mAP_{size}")


def ap_by_size(runs: Sequence[tuple[str, Mapping[str, float]]]) -> str | None:
    """COCO AP of small, medium and large objects, box and mask panels, one bar per run."""
    kinds = [kind for kind in names.IOU_TYPES
             if any(_ap_of_size(kind, size) in metrics for _, metrics in runs for size in names.OBJECT_SIZES)]
    if not kinds:
        return None
    figure = Figure(figsize=(5.5 * len(kinds), 3.3))
    axes = figure.subplots(1, len(kinds), squeeze=False)[0]
    width = 0.8 / len(runs)
    for ax, kind in zip(axes, kinds, strict=True):
        for index, (label, metrics) in enumerate(runs):
            values = [metrics.get(_ap_of_size(kind, size), 0.0) for size in names.OBJECT_SIZES]
            positions = [group + (index - (len(runs) - 1) / 2) * width for group in range(3)]
            ax.bar(positions, values, width=width, color=_RUN_COLOURS[index % len(_RUN_COLOURS)],
                   label=label if index < _MAX_LEGEND else None)
        ax.set_xticks(range(3), ["small", "medium", "large"])
        ax.set_title(f"{kind} AP by object size")
        ax.set_ylabel("AP")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].legend(fontsize=8, loc="best")
    figure.tight_layout()
    return to_base64_png(figure)


def family_bars(best: Sequence[tuple[str, float]], metric: str) -> str | None:
    """Best ``metric`` per backbone family: ``best`` is (family, value)."""
    if not best:
        return None
    figure = Figure(figsize=(5.5, 3.3))
    ax = figure.subplots()
    families = [family for family, _ in best]
    values = [value for _, value in best]
    bars = ax.bar(families, values, color=[FAMILY_COLOURS.get(f, FAMILY_COLOURS["other"]) for f in families])
    ax.bar_label(bars, fmt="%.4g", fontsize=9)
    ax.set_ylabel(f"best {metric}")
    ax.set_title(f"best {metric} per backbone family")
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.15)
    figure.tight_layout()
    return to_base64_png(figure)


def contribution_bars(layers: Sequence[tuple[str, float, float]], title: str) -> str | None:
    """Mean |local| and mean |gate * context| per LESA layer: ``layers`` is (name, local, context)."""
    if not layers:
        return None
    figure = Figure(figsize=(8.0, 1.0 + 0.38 * len(layers)))
    ax = figure.subplots()
    rows = range(len(layers))
    ax.barh([row - 0.2 for row in rows], [local for _, local, _ in layers], height=0.4,
            color=TERM_COLOURS["local"], label="local term: mean |local|")
    ax.barh([row + 0.2 for row in rows], [context for _, _, context in layers], height=0.4,
            color=TERM_COLOURS["context"], label="context term: mean |gate * context|")
    ax.set_yticks(list(rows), [name for name, _, _ in layers], fontsize=8)
    ax.invert_yaxis()  # first layer on top
    ax.set_xlabel("mean absolute value entering the layer output")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside, not over, bars
    figure.tight_layout()
    return to_base64_png(figure)
