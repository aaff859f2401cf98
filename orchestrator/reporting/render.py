"""Rendering a report: :class:`~orchestrator.reporting.data.ReportData` into ``templates/report.html.j2``.

This module decides what each section shows (columns, rows, figures); the template only lays it out, with
autoescaping on. Figures are inline base64 PNGs, so the page opens offline and needs no server.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import jinja2

from lesa_core.metrics import names

from . import plots
from .data import CONTRIBUTIONS_ARTIFACT, FAMILIES, ReportData, family_leaders

SUMMARY_METRICS = {
    "detection": (names.coco_metric("bbox"), names.coco_metric("bbox", "mAP_50"), names.coco_metric("bbox", "mAP_75"),
                  names.coco_metric("segm"), names.TRAIN_LOSS),
    "classification": (*names.CLASSIFICATION_EVAL, names.TRAIN_LOSS),
}
_LAYER_PREFIX = "backbone.body."  # a detector's backbone layers are named as in the bare backbone


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _short(metric: str) -> str:
    return metric.removeprefix("coco/")


def _summary(data: ReportData) -> dict[str, Any]:
    tasks = {run.task for run in data.runs}
    metrics = [metric for task in ("detection", "classification") if task in tasks
               for metric in SUMMARY_METRICS[task] if any(metric in run.final for run in data.runs)]
    primaries = sorted({run.primary_metric for run in data.runs})
    rows = []
    for run in data.runs:
        epochs = str(int(run.final[names.EPOCH]) + 1) if names.EPOCH in run.final else ""
        bests = [_fmt(run.best(metric)) if metric == run.primary_metric else "" for metric in primaries]
        rows.append({"run": run, "numbers": [epochs, *bests, *[_fmt(run.final.get(metric)) for metric in metrics]]})
    header = ["epochs", *[f"best {_short(metric)}" for metric in primaries], *map(_short, metrics)]
    return {"numeric_header": header, "rows": rows}


def _learning_curves(data: ReportData) -> dict[str, Any]:
    metrics = [names.TRAIN_LOSS, names.TRAIN_LR, *sorted({run.primary_metric for run in data.runs})]
    return {"metrics": metrics, "png": plots.learning_curves([(run.label, run.history) for run in data.runs], metrics)}


def _ap_by_size(data: ReportData) -> dict[str, Any] | None:
    runs = [run for run in data.runs if run.task == "detection"]
    if not runs:
        return None
    return {"png": plots.ap_by_size([(run.label, run.final) for run in runs]),
            "header": [_short(metric) for metric in names.COCO_BY_SIZE],
            "rows": [{"run": run, "numbers": [_fmt(run.final.get(metric)) for metric in names.COCO_BY_SIZE]}
                     for run in runs]}


def _families(data: ReportData) -> dict[str, Any]:
    metric = data.comparison_metric
    runs = data.experiment_runs or data.runs
    leaders = family_leaders(runs, metric)
    counts = Counter(run.family for run in runs)
    present = [family for family in FAMILIES if family in leaders]
    best = [(family, value) for family in present if (value := leaders[family].best(metric)) is not None]
    return {
        "metric": metric, "png": plots.family_bars(best, metric),
        "rows": [{"family": family, "leader": leaders[family], "runs": counts[family],
                  "best": _fmt(leaders[family].best(metric))} for family in present],
        "missing": [family for family in ("LESA", "SA", "conv") if family not in leaders],
        "job_family": data.runs[0].family if data.job_id else "",
    }


def _contributions(data: ReportData) -> list[dict[str, Any]]:
    measured = []
    for contributions in data.contributions:
        layers = [{"name": layer.name.removeprefix(_LAYER_PREFIX), "local": layer.local, "context": layer.context,
                   "share": f"{layer.context_share:.1%}"} for layer in contributions.layers]
        png = plots.contribution_bars(
            [(layer["name"], layer["local"], layer["context"]) for layer in layers],
            f"{contributions.label}: {contributions.images} {contributions.split} image(s)") if layers else None
        measured.append({"measured": contributions, "layers": layers, "png": png})
    return measured


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("orchestrator.reporting", "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["fmt"] = _fmt
    return environment


def build_html(data: ReportData) -> str:
    """The report as one HTML document: inline CSS and base64 PNG figures, no scripts, no network."""
    return _environment().get_template("report.html.j2").render(
        data=data, summary=_summary(data), curves=_learning_curves(data), ap_by_size=_ap_by_size(data),
        families=_families(data), contributions=_contributions(data), contributions_artifact=CONTRIBUTIONS_ARTIFACT,
    )
