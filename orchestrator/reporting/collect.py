"""Gathering a report: MLflow reads through :class:`~orchestrator.tracking.Tracker` into plain data, and the
local vs context contributions of run models measured with :mod:`lesa_core.analysis`."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from mlflow.entities import Run

from lesa_core.metrics import names

from ..spec import parse_spec
from ..tracking import JOB_ID_TAG, Tracker
from .data import Contributions, ReportData, RunData, best_run, family_leaders

CURVE_METRICS = (names.TRAIN_LOSS, names.TRAIN_LR)
CONTRIBUTION_IMAGES = 4


def read_run(tracker: Tracker, run: Run, metrics: Iterable[str] = ()) -> RunData:
    """A run's metadata, final metrics and the history of ``metrics`` and its primary metric."""
    params, tags = run.data.params, run.data.tags
    task = params.get("task") or tags.get("lesa.task", "")
    primary = params.get("eval.metric") or names.PRIMARY_METRIC.get(task, names.VAL_ACC1)
    wanted = sorted({*metrics, primary} & set(run.data.metrics))
    return RunData(
        run_id=run.info.run_id, name=run.info.run_name or "", job_id=tags.get(JOB_ID_TAG, ""),
        experiment_id=run.info.experiment_id, status=run.info.status, task=task,
        arch=params.get("model.arch") or tags.get("lesa.arch", ""), primary_metric=primary,
        mode=params.get("eval.mode") or "max", final=dict(run.data.metrics),
        history={metric: tracker.metric_history(run.info.run_id, metric) for metric in wanted},
        url=tracker.ui_url(run.info.experiment_id, run.info.run_id),
    )


def measure_contributions(tracker: Tracker, run: RunData, *, num_images: int = CONTRIBUTION_IMAGES) -> Contributions:
    """Runs the run's logged model (``runs:/<id>/model``) on validation images from its ``spec.json`` data root.

    Never raises for a missing or unusable spec, model or dataset: the returned ``note`` says what was missing.
    """
    def unavailable(note: str) -> Contributions:
        return Contributions(run.run_id, run.label, note=note)

    if run.family == "conv":
        return unavailable(f"{run.arch} is a convolution backbone: it has no LESA layers")
    from lesa_core import analysis  # torch loads only when contributions are measured

    # each stage may fail in many ways (missing artifact, unpicklable model, unreadable data); a report says so
    with tempfile.TemporaryDirectory() as scratch:
        try:
            spec_path = tracker.download_artifact(run.run_id, "spec.json", scratch)
            spec = parse_spec(json.loads(Path(spec_path).read_text()), source=f"run {run.run_id} spec.json")
        except Exception as error:
            return unavailable(f"no usable spec.json artifact ({_first_line(error)})")
        model_uri = f"runs:/{run.run_id}/model"
        try:
            model = tracker.load_logged_model(run.run_id, run.experiment_id, scratch)
            if model is None:
                return unavailable(f"no logged model at {model_uri}")
            model.eval()
        except Exception as error:
            return unavailable(f"the model at {model_uri} does not load ({_first_line(error)})")
    split = spec.data.val_split or "val"
    try:
        inputs = analysis.validation_inputs(spec.task, spec.data.root, split, model, num_images=num_images,
                                            img_size=spec.data.img_size)
    except Exception as error:
        return unavailable(f"validation images at {spec.data.root} are not available ({_first_line(error)})")
    if not inputs:
        return unavailable(f"the {split} split at {spec.data.root} has no readable images")
    try:
        layers = analysis.measure_contributions(model, inputs)
    except Exception as error:
        return unavailable(f"running the model on validation images failed ({_first_line(error)})")
    if not layers:
        return unavailable(f"the model of {run.arch} has no LESA layers")
    return Contributions(run.run_id, run.label, layers, images=len(inputs), split=split)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def collect(
    tracker: Tracker,
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
    experiment = tracker.experiment(experiment_name)
    if experiment is None:
        raise ValueError(f"no MLflow experiment named {experiment_name!r}")
    found = tracker.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    if run_id:
        experiment_runs = [read_run(tracker, run) for run in found]
        runs = [read_run(tracker, tracker.get_run(run_id), CURVE_METRICS)]
    else:
        runs = experiment_runs = [read_run(tracker, run, CURVE_METRICS) for run in found]
    data = ReportData(target=target, experiment=experiment.name, tracking_uri=tracker.tracking_uri,
                      generated_at=datetime.now(UTC), runs=tuple(runs), experiment_runs=tuple(experiment_runs),
                      job_id=job_id, experiment_url=tracker.ui_url(experiment.experiment_id))
    metric = data.comparison_metric
    leaders = family_leaders(experiment_runs, metric)
    measured = runs if run_id else [leaders[family] for family in ("LESA", "SA") if family in leaders]
    contributions = []
    for run in measured:
        progress(f"measuring local vs context contributions of {run.label}")
        contributions.append(measure_contributions(tracker, run, num_images=num_images))
    best = best_run(runs, metric)
    return dataclasses.replace(data, contributions=tuple(contributions),
                               logged_to=run_id or (best.run_id if best else ""))
