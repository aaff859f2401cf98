"""``lesa-orch report``: one self-contained HTML page about a job's MLflow run or an experiment's runs.

:func:`collect` reads MLflow (runs, metric histories, ``spec.json``, the logged model) into plain data,
:func:`build_html` turns that data into one HTML file whose figures are inline base64 PNGs (it opens
offline and is testable without a server), and :func:`publish` writes it and logs it to MLflow.

Sections: a summary of final metrics, learning curves, COCO AP by object size (detection runs), LESA vs
conv vs SA (the experiment's runs grouped by backbone family, best primary metric per family), and the
local vs context contribution of every LESA layer, measured with the run's logged model on a few
validation images; those numbers are also logged as the run's ``contributions.json`` artifact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run

from . import plots
from .spec import JobSpec, parse_spec

CURVE_METRICS = ("train/loss", "train/lr")
SUMMARY_METRICS = {
    "detection": ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/bbox_mAP_75", "coco/segm_mAP", "train/loss"),
    "classification": ("val/acc1", "val/acc5", "val/loss", "train/loss"),
}
AP_SIZE_METRICS = tuple(f"coco/{kind}_mAP_{size}" for kind in ("bbox", "segm") for size in "sml")
FAMILIES = ("LESA", "SA", "conv", "other")
CONTRIBUTION_IMAGES = 4
REPORT_ARTIFACT_DIR = "reports"
CONTRIBUTIONS_ARTIFACT = "contributions.json"


def backbone_family(arch: str) -> str:
    """``LESA``, ``SA``, ``conv`` or ``other`` from a model name (the ``model.arch`` param)."""
    name = arch.lower()
    if name.startswith(("lesa_", "test_lesa")):
        return "LESA"
    if name.startswith("sa_"):
        return "SA"
    if name.startswith(("conv_", "resnet")):
        return "conv"
    return "other"


def slug(target: str) -> str:
    """A file name from a job id or experiment name: ``lesa/coco/detection`` -> ``lesa-coco-detection``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", target).strip("-.") or "report"


def mlflow_ui_url(tracking_uri: str, experiment_id: str, run_id: str = "") -> str:
    """The MLflow UI page of an experiment or run; empty when the tracking URI has no UI (sqlite, file)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return ""
    url = f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}"
    return f"{url}/runs/{run_id}" if run_id else url


@dataclass(frozen=True)
class RunData:
    """What the report shows of one MLflow run: final metrics and the histories it plots (step = epoch)."""

    run_id: str
    name: str
    job_id: str
    experiment_id: str
    status: str
    task: str
    arch: str
    primary_metric: str
    mode: str  # "max" or "min": which way the primary metric improves
    final: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    url: str = ""

    @property
    def family(self) -> str:
        return backbone_family(self.arch)

    @property
    def label(self) -> str:
        return self.job_id or self.name or self.run_id[:8]

    def best(self, metric: str | None = None) -> float | None:
        """Best value of ``metric`` (default: the primary one) over the epochs, else its final value."""
        metric = metric or self.primary_metric
        values = [value for _, value in self.history.get(metric, ())]
        if not values and metric in self.final:
            values = [self.final[metric]]
        if not values:
            return None
        return max(values) if self.mode == "max" else min(values)


@dataclass(frozen=True)
class LayerContribution:
    """Mean |local| and mean |gate * context| of one LESA layer, averaged over the measured images."""

    name: str
    local: float
    context: float

    @property
    def context_share(self) -> float:
        from lesa_core.layers import TermContribution  # torch loads only when contributions are shown

        return TermContribution(self.local, self.context).context_share


@dataclass(frozen=True)
class Contributions:
    """The term contributions of one run's model, or (``note``) why they could not be measured."""

    run_id: str
    label: str
    layers: tuple[LayerContribution, ...] = ()
    images: int = 0
    split: str = ""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "images": self.images, "split": self.split,
            "layers": [{"name": layer.name, "local": layer.local, "context": layer.context,
                        "context_share": layer.context_share} for layer in self.layers],
        }


@dataclass(frozen=True)
class ReportData:
    """Everything :func:`build_html` needs; ``runs`` are covered, ``experiment_runs`` feed the family comparison."""

    target: str
    experiment: str
    tracking_uri: str
    generated_at: datetime
    runs: tuple[RunData, ...]
    experiment_runs: tuple[RunData, ...]
    contributions: tuple[Contributions, ...] = ()
    job_id: str = ""
    experiment_url: str = ""
    logged_to: str = ""  # run id that receives the report artifact

    @property
    def comparison_metric(self) -> str:
        """The primary metric most of the experiment's runs use."""
        runs = self.experiment_runs or self.runs
        return Counter(run.primary_metric for run in runs).most_common(1)[0][0] if runs else ""


# -------------------------------------------------------------------------------------------------- gathering


def read_run(client: MlflowClient, run: Run, tracking_uri: str, metrics: Iterable[str] = ()) -> RunData:
    """A run's metadata, final metrics and the history of ``metrics`` and its primary metric."""
    params, tags = run.data.params, run.data.tags
    task = params.get("task") or tags.get("lesa.task", "")
    primary = params.get("eval.metric") or ("coco/bbox_mAP" if task == "detection" else "val/acc1")
    wanted = sorted({*metrics, primary} & set(run.data.metrics))
    history = {metric: [(point.step, point.value) for point in client.get_metric_history(run.info.run_id, metric)]
               for metric in wanted}
    return RunData(
        run_id=run.info.run_id, name=run.info.run_name or "", job_id=tags.get("lesa.job_id", ""),
        experiment_id=run.info.experiment_id, status=run.info.status, task=task,
        arch=params.get("model.arch") or tags.get("lesa.arch", ""), primary_metric=primary,
        mode=params.get("eval.mode") or "max", final=dict(run.data.metrics), history=history,
        url=mlflow_ui_url(tracking_uri, run.info.experiment_id, run.info.run_id),
    )


@contextlib.contextmanager
def _quiet_artifact_downloads() -> Iterator[None]:
    """MLflow draws tqdm bars on downloads, which would tear through the CLI's spinner."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _validation_inputs(spec: JobSpec, model: Any, num_images: int) -> tuple[list[Any], str]:
    """The first ``num_images`` validation images of the spec's dataset as model inputs, and the split."""
    import torch

    split = spec.data.val_split or "val"
    if spec.task == "detection":
        from lesa_core.data.coco import CocoInstances

        dataset = CocoInstances(spec.data.root, split, train=False)
        samples = [dataset[index] for index in range(min(num_images, len(dataset)))]
        return [[image] for image, _ in filter(None, samples)], split
    from lesa_core.data.imagenet import ImageNetDataset, create_imagenet_transforms, resolve_imagenet_data_config

    _, eval_transform = create_imagenet_transforms(resolve_imagenet_data_config(model, spec.data.img_size))
    dataset = ImageNetDataset(spec.data.root, split, transform=eval_transform)
    return [torch.unsqueeze(dataset[index][0], 0) for index in range(min(num_images, len(dataset)))], split


def _logged_model_location(client: MlflowClient, run: RunData, name: str = "model") -> str | None:
    """Artifact location of the newest model ``name`` logged by the run (what ``runs:/<id>/<name>`` means).

    Resolved here because MLflow 3 resolves ``runs:/`` model URIs against the global tracking URI only.
    """
    models = client.search_logged_models(
        experiment_ids=[run.experiment_id], filter_string=f"name = '{name}' AND source_run_id = '{run.run_id}'",
        order_by=[{"field_name": "creation_time", "ascending": False}], max_results=1)
    return models[0].artifact_location if models else None


def measure_contributions(
    client: MlflowClient, run: RunData, tracking_uri: str, *, num_images: int = CONTRIBUTION_IMAGES
) -> Contributions:
    """Runs the run's logged model (``runs:/<id>/model``) on validation images from its ``spec.json`` data root.

    Never raises for a missing or unusable spec, model or dataset: the returned ``note`` says what was missing.
    """
    def unavailable(note: str) -> Contributions:
        return Contributions(run.run_id, run.label, note=note)

    if run.family == "conv":
        return unavailable(f"{run.arch} is a convolution backbone: it has no LESA layers")
    import mlflow.artifacts
    import mlflow.pytorch
    import torch

    from lesa_core.layers import collect_contributions, record_contributions

    # each stage may fail in many ways (missing artifact, unpicklable model, unreadable data); a report says so
    with tempfile.TemporaryDirectory() as scratch, _quiet_artifact_downloads():
        try:
            spec_path = client.download_artifacts(run.run_id, "spec.json", scratch)
            spec = parse_spec(json.loads(Path(spec_path).read_text()), source=f"run {run.run_id} spec.json")
        except Exception as error:
            return unavailable(f"no usable spec.json artifact ({_first_line(error)})")
        model_uri = f"runs:/{run.run_id}/model"
        try:
            location = _logged_model_location(client, run)
            if location is None:
                return unavailable(f"no logged model at {model_uri}")
            local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=scratch,
                                                        tracking_uri=tracking_uri)
            model = mlflow.pytorch.load_model(local, map_location="cpu").eval()
        except Exception as error:
            return unavailable(f"the model at {model_uri} does not load ({_first_line(error)})")
    try:
        inputs, split = _validation_inputs(spec, model, num_images)
    except Exception as error:
        return unavailable(f"validation images at {spec.data.root} are not available ({_first_line(error)})")
    if not inputs:
        return unavailable(f"the {spec.data.val_split or 'val'} split at {spec.data.root} has no readable images")
    totals: dict[str, list[float]] = {}
    record_contributions(model)
    try:
        with torch.no_grad():
            for batch in inputs:
                model(batch)
                for name, term in collect_contributions(model).items():
                    total = totals.setdefault(name, [0.0, 0.0])
                    total[0] += term.local
                    total[1] += term.context
    except Exception as error:
        return unavailable(f"running the model on validation images failed ({_first_line(error)})")
    finally:
        record_contributions(model, enabled=False)
    if not totals:
        return unavailable(f"the model of {run.arch} has no LESA layers")
    layers = tuple(LayerContribution(name, local / len(inputs), context / len(inputs))
                   for name, (local, context) in totals.items())
    return Contributions(run.run_id, run.label, layers, images=len(inputs), split=split)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _best_run(runs: Iterable[RunData], metric: str) -> RunData | None:
    """The run with the best ``metric``; runs without it win only when none has it (then the first)."""
    chosen, chosen_value = None, None
    for run in runs:
        value = run.best(metric)
        improves = value is not None and (
            chosen_value is None or (value > chosen_value if run.mode == "max" else value < chosen_value))
        if chosen is None or improves:
            chosen, chosen_value = run, value
    return chosen


def _leaders(runs: Sequence[RunData], metric: str) -> dict[str, RunData]:
    """The best run of each backbone family present, in :data:`FAMILIES` order."""
    by_family = {family: [run for run in runs if run.family == family] for family in FAMILIES}
    return {family: _best_run(members, metric) for family, members in by_family.items() if members}


def collect(
    client: MlflowClient,
    tracking_uri: str,
    experiment_name: str,
    *,
    target: str,
    run_id: str = "",
    job_id: str = "",
    progress: Callable[[str], None] = lambda message: None,
    num_images: int = CONTRIBUTION_IMAGES,
) -> ReportData:
    """Gathers a report on run ``run_id`` (a job report) or, without it, on all runs of an experiment.

    A job report measures contributions of its run and is logged there; an experiment report measures the
    best LESA and SA runs and is logged to the experiment's best run.
    """
    progress(f"reading the runs of {experiment_name}")
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise ValueError(f"no MLflow experiment named {experiment_name!r}")
    found = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)
    if run_id:
        experiment_runs = [read_run(client, run, tracking_uri) for run in found]
        runs = [read_run(client, client.get_run(run_id), tracking_uri, CURVE_METRICS)]
    else:
        runs = experiment_runs = [read_run(client, run, tracking_uri, CURVE_METRICS) for run in found]
    data = ReportData(target=target, experiment=experiment.name, tracking_uri=tracking_uri,
                      generated_at=datetime.now(UTC), runs=tuple(runs), experiment_runs=tuple(experiment_runs),
                      job_id=job_id, experiment_url=mlflow_ui_url(tracking_uri, experiment.experiment_id))
    metric = data.comparison_metric
    leaders = _leaders(experiment_runs, metric)
    measured = runs if run_id else [leaders[family] for family in ("LESA", "SA") if family in leaders]
    contributions = []
    for run in measured:
        progress(f"measuring local vs context contributions of {run.label}")
        contributions.append(measure_contributions(client, run, tracking_uri, num_images=num_images))
    best = _best_run(runs, metric)
    return dataclasses.replace(data, contributions=tuple(contributions),
                               logged_to=run_id or (best.run_id if best else ""))


def publish(client: MlflowClient, data: ReportData, out_path: Path) -> str:
    """Writes the HTML, logs it to run ``data.logged_to`` (and each measured ``contributions.json``);
    returns the report's artifact URI (empty when there was no run to log it to)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(build_html(data), encoding="utf-8")
    for measured in data.contributions:
        if measured.layers:
            client.log_dict(measured.run_id, measured.to_json(), CONTRIBUTIONS_ARTIFACT)
    if not data.logged_to:
        return ""
    client.log_artifact(data.logged_to, str(out_path), REPORT_ARTIFACT_DIR)
    artifact_root = client.get_run(data.logged_to).info.artifact_uri
    return f"{artifact_root.rstrip('/')}/{REPORT_ARTIFACT_DIR}/{out_path.name}"


# ------------------------------------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto; max-width: 1180px;
       padding: 0 1rem; color: #1d1d1f; }
h1 { font-size: 1.7rem; margin-bottom: .4rem; }
h2 { border-bottom: 2px solid #d8dde3; padding-bottom: .3rem; margin-top: 2.4rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { border: 1px solid #d8dde3; padding: .3rem .6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #f1f4f7; }
table.meta th { background: #f1f4f7; width: 9rem; }
img.figure { display: block; max-width: 100%; margin: .8rem 0; }
div.wide { overflow-x: auto; }
td:first-child { white-space: nowrap; }
p.note { color: #8a4b00; background: #fff6e5; padding: .4rem .7rem; border-left: 4px solid #f0a020; }
code { font-size: .85rem; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _link(text: str, url: str) -> str:
    return f'<a href="{_esc(url)}">{_esc(text)}</a>' if url else _esc(text)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int) -> str:
    """Cells are HTML already; columns from ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{_esc(name)}</th>" for name in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{cell}</td>' if index >= numeric_from else f"<td>{cell}</td>"
                         for index, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _figure(png: str | None, alt: str) -> str:
    if png is None:
        return f'<p class="note">{_esc(alt)}: nothing to plot.</p>'
    return f'<img class="figure" alt="{_esc(alt)}" src="data:image/png;base64,{png}">'


def _header(data: ReportData) -> str:
    rows = []
    if data.job_id:
        rows.append(("job", _esc(data.job_id)))
    rows.append(("experiment", _link(data.experiment, data.experiment_url)))
    links = [_link(run.label, run.url) + f" <code>{_esc(run.run_id)}</code>" for run in data.runs]
    rows.append(("runs" if len(data.runs) != 1 else "run", "<br>".join(links) or "none"))
    rows.append(("generated", _esc(f"{data.generated_at:%Y-%m-%d %H:%M:%S} UTC")))
    rows.append(("MLflow", _esc(data.tracking_uri)))
    meta = "".join(f"<tr><th>{name}</th><td>{cell}</td></tr>" for name, cell in rows)
    return f'<header><h1>LESA report: {_esc(data.target)}</h1><table class="meta">{meta}</table></header>'


def _summary(data: ReportData) -> str:
    tasks = {run.task for run in data.runs}
    metrics = [metric for task in ("detection", "classification") if task in tasks
               for metric in SUMMARY_METRICS[task] if any(metric in run.final for run in data.runs)]
    primaries = sorted({run.primary_metric for run in data.runs})
    header = ["run", "family", "arch", "status", "epochs",
              *[f"best {metric.removeprefix('coco/')}" for metric in primaries],
              *[metric.removeprefix("coco/") for metric in metrics]]
    rows = []
    for run in data.runs:
        epochs = str(int(run.final["epoch"]) + 1) if "epoch" in run.final else ""
        bests = [_fmt(run.best(metric)) if metric == run.primary_metric else "" for metric in primaries]
        rows.append([_link(run.label, run.url), _esc(run.family), _esc(run.arch), _esc(run.status), epochs, *bests,
                     *[_fmt(run.final.get(metric)) for metric in metrics]])
    return ('<section id="summary"><h2>Summary: final metrics</h2>'
            "<p>Metrics are on a 0..1 scale (<code>coco/</code> left out of the names); <em>best</em> is the best "
            "epoch of the primary metric, the others are the last logged values.</p>"
            + _table(header, rows, numeric_from=4) + "</section>")


def _learning_curves(data: ReportData) -> str:
    metrics = [*CURVE_METRICS, *sorted({run.primary_metric for run in data.runs})]
    png = plots.learning_curves([(run.label, run.history) for run in data.runs], metrics)
    return ('<section id="learning-curves"><h2>Learning curves</h2>'
            f"<p>{_esc(', '.join(metrics))} per epoch, from the MLflow metric history.</p>"
            + _figure(png, "learning curves") + "</section>")


def _ap_by_size(data: ReportData) -> str:
    runs = [run for run in data.runs if run.task == "detection"]
    if not runs:
        return ""
    png = plots.ap_by_size([(run.label, run.final) for run in runs])
    header = ["run", *[metric.removeprefix("coco/") for metric in AP_SIZE_METRICS]]
    rows = [[_link(run.label, run.url), *[_fmt(run.final.get(metric)) for metric in AP_SIZE_METRICS]] for run in runs]
    return ('<section id="ap-by-size"><h2>COCO AP by object size</h2>'
            "<p>Box and mask AP of small (&lt; 32&sup2; px), medium and large (&gt; 96&sup2; px) objects, "
            "last evaluation.</p>" + _figure(png, "COCO AP by object size") + _table(header, rows, 1) + "</section>")


def _families(data: ReportData) -> str:
    metric = data.comparison_metric
    runs = data.experiment_runs or data.runs
    leaders = _leaders(runs, metric)
    counts = Counter(run.family for run in runs)
    present = [family for family in FAMILIES if family in leaders]
    best = [(family, value) for family in present if (value := leaders[family].best(metric)) is not None]
    rows = [[_esc(family), _link(leaders[family].label, leaders[family].url), _esc(leaders[family].arch),
             str(counts[family]), _fmt(leaders[family].best(metric))] for family in present]
    missing = [family for family in ("LESA", "SA", "conv") if family not in leaders]
    note = ""
    if missing:
        note = (f'<p class="note">No {" or ".join(missing)} runs in {_esc(data.experiment)}: submit the same job with '
                "<code>--set model.arch=...</code> (e.g. <code>sa_resnet50</code>, <code>conv_resnet50_s16</code>) "
                "to compare.</p>")
    scope = f"All runs of experiment <code>{_esc(data.experiment)}</code>"
    if data.job_id:
        scope += f" (this job's run is {_esc(data.runs[0].family)})"
    return ('<section id="families"><h2>LESA vs conv vs SA</h2>'
            f"<p>{scope}, grouped by backbone family (<code>model.arch</code>), best <code>{_esc(metric)}</code> "
            "of each family.</p>" + _figure(plots.family_bars(best, metric), "best primary metric per family")
            + _table(["family", "best run", "arch", "runs", f"best {metric}"], rows, 3) + note + "</section>")


def _contributions(data: ReportData) -> str:
    parts = ['<section id="contributions"><h2>Local vs context contribution per layer</h2>',
             "<p>Mean |local term| and mean |gate &times; context term| entering each LESA layer's output, averaged "
             "over a few validation images with the run's logged model: the paper's unary/binary analysis.</p>"]
    if not data.contributions:
        parts.append('<p class="note">No LESA or SA run to measure.</p>')
    for measured in data.contributions:
        parts.append(f"<h3>{_esc(measured.label)}</h3>")
        if not measured.layers:
            parts.append(f'<p class="note">Not measured: {_esc(measured.note)}.</p>')
            continue
        names = [layer.name.removeprefix("backbone.body.") for layer in measured.layers]
        png = plots.contribution_bars(
            [(name, layer.local, layer.context) for name, layer in zip(names, measured.layers, strict=True)],
            f"{measured.label}: {measured.images} {measured.split} image(s)")
        rows = [[f"<code>{_esc(name)}</code>", _fmt(layer.local), _fmt(layer.context), f"{layer.context_share:.1%}"]
                for name, layer in zip(names, measured.layers, strict=True)]
        parts.append(_figure(png, f"local vs context contribution of {measured.label}")
                     + _table(["layer", "mean |local|", "mean |gate * context|", "context share"], rows, 1)
                     + f"<p>Logged as <code>{CONTRIBUTIONS_ARTIFACT}</code> in run "
                       f"<code>{_esc(measured.run_id)}</code>.</p>")
    parts.append("</section>")
    return "".join(parts)


def build_html(data: ReportData) -> str:
    """The report as one HTML document: inline CSS and base64 PNG figures, no scripts, no network."""
    body = "".join((_header(data), _summary(data), _learning_curves(data), _ap_by_size(data), _families(data),
                    _contributions(data)))
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>LESA report: {_esc(data.target)}</title><style>{_STYLE}</style></head>"
            f"<body>{body}<footer><p>Written by <code>lesa-orch report</code>.</p></footer></body></html>\n")
