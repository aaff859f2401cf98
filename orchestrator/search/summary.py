"""What a search leaves on its parent MLflow run: the trials table, the best trial, counts and timings, plots."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import optuna
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from ..ray_backend.failures import one_line
from ..ray_backend.scoring import EPOCHS_KEY, checkpoint_score
from ..spec import JobSpec
from ..tracking import Tracker
from .plots import write_study_plots

OUTCOMES = ("completed", "stopped_early", "failed")


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the search ends: sampled values, how it ended, its best objective and speed."""

    trial_id: str
    params: dict[str, Any]
    outcome: str
    epochs: int
    best: dict[str, float]
    images_per_sec: float
    train_time_s: float
    best_checkpoint: str | None
    error: str | None = None


def trial_records(spec: JobSpec, grid: Any, max_epochs: int) -> list[TrialRecord]:
    """A record per trial of Tune's result grid; a trial's best is its best scored checkpoint
    (``scoring.CheckpointScore`` by the first objective, which its Ray Train run kept)."""
    score = checkpoint_score(spec)
    records = []
    for result in grid:
        frame = result.metrics_dataframe
        metrics = result.metrics or {}
        epochs = int(metrics.get(EPOCHS_KEY, 0))
        outcome = "failed" if result.error else ("completed" if epochs >= max_epochs else "stopped_early")
        best: dict[str, float] = {}
        checkpoint = None
        if frame is not None and CHECKPOINT_PATH_KEY in frame:
            reports = frame.dropna(subset=[CHECKPOINT_PATH_KEY])
            found = score.best((row[CHECKPOINT_PATH_KEY], row) for _, row in reports.iterrows())
            if found is not None:
                checkpoint, row = found
                best = {o.metric: float(row[o.metric]) for o in spec.objectives if o.metric in row}
        records.append(TrialRecord(
            trial_id=metrics.get("trial_id", result.path.rsplit("/", 1)[-1]),
            params={path: result.config.get(path) for path in spec.hpo.space} if result.config else {},
            outcome=outcome, epochs=epochs, best=best,
            images_per_sec=float(metrics.get("train/images_per_sec", float("nan"))),
            train_time_s=float(metrics.get("time_total_s", 0.0)), best_checkpoint=checkpoint,
            error=one_line(result.error) if result.error else None,
        ))
    return records


def best_record(spec: JobSpec, records: list[TrialRecord]) -> TrialRecord | None:
    """The trial with the best first objective among those with a checkpoint."""
    objective = spec.objectives[0]
    scored = [r for r in records if objective.metric in r.best and r.best_checkpoint]
    if not scored:
        return None
    sign = 1 if objective.mode == "max" else -1
    return max(scored, key=lambda r: sign * r.best[objective.metric])


def log_study_summary(
    spec: JobSpec, study: optuna.Study, tracker: Tracker, run_id: str, records: list[TrialRecord],
    startup_s: list[float], wall_s: float,
) -> dict[str, Any]:
    """Parent-run metrics, ``trials.json``, ``best_trial.json`` and the study plots; returns the outcome's
    ``trial_outcomes`` (and ``trial_startup_s``)."""
    counts = {outcome: sum(r.outcome == outcome for r in records) for outcome in OUTCOMES}
    metrics = {f"hpo/trials_{name}": float(count) for name, count in counts.items()}
    metrics.update({"hpo/wall_time_s": wall_s, "hpo/trial_time_sum_s": sum(r.train_time_s for r in records)})
    if startup_s:
        metrics["hpo/trial_startup_s_mean"] = sum(startup_s) / len(startup_s)
        metrics["hpo/trial_startup_s_max"] = max(startup_s)
    best = best_record(spec, records)
    if best is not None:
        for metric, value in best.best.items():
            metrics[f"hpo/best_{metric}"] = value
    tracker.log_metrics(run_id, metrics, step=0)
    table = [r.__dict__ for r in records]
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, "trials.json"), "w") as handle:
            json.dump(table, handle, indent=2, default=str)
        if best is not None:
            with open(os.path.join(directory, "best_trial.json"), "w") as handle:
                json.dump(best.__dict__, handle, indent=2, default=str)
        tracker.log_artifacts(run_id, directory)
    with tempfile.TemporaryDirectory() as directory:
        write_study_plots(spec, study, records, directory)
        tracker.log_artifacts(run_id, directory, "plots")
    if best is not None:
        tracker.set_tags(run_id, {"lesa.best_trial_id": best.trial_id})
    return {"trial_outcomes": counts, **({"trial_startup_s": startup_s} if startup_s else {})}
