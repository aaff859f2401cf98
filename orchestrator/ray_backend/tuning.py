"""A job's ``hpo`` block run as a search: Ray Tune trials, each the job's own TorchTrainer, steered by an
Optuna study and stopped early by ASHA.

Every trial is a Tune function (:func:`.trial.run_trial`, in a light module of its own) that applies its sampled
values to the job spec and fits the same ``TorchTrainer`` a single job builds (the Ray Train V2 pattern), with its
controller inside the trial, reporting to Tune through a ``TuneReportCallback``. The Optuna study lives in an RDB
storage under the job id, and Tune's experiment state sits at ``<storage.path>/<job id>``, so a resubmitted job
restores both: finished trials are not run again, unfinished ones continue from their last checkpoint and the
sampler keeps its history.

MLflow: the job's run is the parent; every trial has a child run with its spec, per-epoch metrics and, at its
end, the tag ``lesa.trial_end`` (completed, stopped_early or failed).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import optuna
import pyarrow.fs
import ray
import ray.train
from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.util import state as ray_state
from ray.util.placement_group import PlacementGroup, remove_placement_group

from ..redaction import redact_url
from ..spec import HpoSection, JobSpec, SearchDimension
from ..tracking import ERROR_TAG, TRIAL_END_TAG, TRIAL_ID_TAG, Tracker
from .cluster import worker_resources
from .failures import one_line
from .trial import EPOCHS_KEY, StudyContext, run_trial, trial_spec

# Tune snapshots its experiment state every second, so a driver killed just after Optuna handed out a trial
# still knows that trial on restore (the default waits 10 s or more and would leave an orphan in the study)
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")


def search_space(hpo: HpoSection) -> dict[str, Any]:
    """Tune domains keyed by the dotted spec path."""
    return {path: _domain(dimension) for path, dimension in hpo.space.items()}


def _domain(dimension: SearchDimension) -> Any:
    low, high = dimension.low, dimension.high
    if dimension.type == "choice":
        return tune.choice(list(dimension.values or []))
    if dimension.type == "uniform":
        return tune.uniform(low, high)
    if dimension.type == "loguniform":
        return tune.loguniform(low, high)
    if dimension.type == "int":
        return tune.qrandint(int(low), int(high), int(dimension.q or 1))  # inclusive of high
    return tune.quniform(low, high, dimension.q)


def build_sampler(hpo: HpoSection) -> optuna.samplers.BaseSampler:
    seed = hpo.sampler.seed
    if hpo.sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if hpo.sampler.type == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if hpo.sampler.type == "grid":
        return optuna.samplers.GridSampler({path: d.grid_points() for path, d in hpo.space.items()}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def study_storage_url(spec: JobSpec) -> str:
    """``hpo.storage``, else the deployment's ``LESA_ORCH_OPTUNA_URL`` (the CLI hands it to the driver)."""
    url = (spec.hpo.storage if spec.hpo else None) or os.environ.get("LESA_ORCH_OPTUNA_URL")
    if not url:
        raise RuntimeError("hpo.storage is unset and LESA_ORCH_OPTUNA_URL is not in the driver's environment")
    return url


_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


class StudySearch(OptunaSearch):
    """OptunaSearch that stays consistent with its study when restored from a snapshot older than the study.

    Tune snapshots its state (this searcher included) every second, while Optuna writes to its storage at once.
    A driver killed in between leaves the study ahead of the snapshot: a trial Optuna handed out that Tune never
    recorded (reused for the next new trial, so the study keeps exactly ``num_samples`` trials), or a trial the
    study already finished that Tune runs on (its results are not told again).
    """

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        known = {trial.number for trial in self._ot_trials.values()}
        running = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        # Trial(study, storage id) is how Optuna itself rebuilds a live trial
        self._orphans = [optuna.trial.Trial(self._ot_study, t._trial_id) for t in running if t.number not in known]

    def suggest(self, trial_id: str) -> dict | None:
        orphans = getattr(self, "_orphans", [])
        if trial_id not in self._ot_trials and orphans:
            self._ot_trials[trial_id] = orphans.pop(0)
        return super().suggest(trial_id)

    def _already_finished(self, trial_id: str) -> bool:
        trial = self._ot_trials.get(trial_id)
        if trial is None:
            return False
        finished = self._ot_study.get_trials(deepcopy=False, states=_FINISHED)
        return any(t.number == trial.number for t in finished)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._already_finished(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._already_finished(trial_id):
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


def build_searcher(spec: JobSpec, study_name: str, storage_url: str) -> OptunaSearch:
    """Optuna on an RDB storage, one study per job id; one or two objectives."""
    hpo = spec.hpo
    assert hpo is not None
    objectives = spec.objectives
    metric: str | list[str] = [o.metric for o in objectives] if len(objectives) > 1 else objectives[0].metric
    mode: str | list[str] = [o.mode for o in objectives] if len(objectives) > 1 else objectives[0].mode
    return StudySearch(search_space(hpo), metric=metric, mode=mode, sampler=build_sampler(hpo),
                        study_name=study_name, storage=optuna.storages.RDBStorage(storage_url))


def build_scheduler(spec: JobSpec) -> ASHAScheduler | FIFOScheduler:
    """ASHA on the first objective, counted in epochs."""
    hpo = spec.hpo
    assert hpo is not None
    if hpo.scheduler.type == "fifo":
        return FIFOScheduler()
    objective = spec.objectives[0]
    return ASHAScheduler(time_attr=EPOCHS_KEY, metric=objective.metric, mode=objective.mode,
                         max_t=hpo.scheduler.max_epochs or spec.schedule.epochs,
                         grace_period=hpo.scheduler.grace_period, reduction_factor=hpo.scheduler.reduction_factor)


def max_concurrent_trials(spec: JobSpec, cluster: dict[str, float]) -> int:
    """``hpo.max_concurrent_trials``, or as many trials as the cluster's CPUs and GPUs hold at once; at most
    ``num_samples``."""
    hpo = spec.hpo
    assert hpo is not None
    if hpo.max_concurrent_trials is not None:
        return min(hpo.max_concurrent_trials, hpo.num_samples)
    fits = hpo.num_samples
    for resource, per_worker in worker_resources(spec).items():
        per_trial = per_worker * spec.resources.num_workers
        if per_trial > 0:
            fits = min(fits, math.floor(cluster.get(resource, 0.0) / per_trial + 1e-9))
    return max(1, fits)


def ended_trials(tracker: Tracker, experiment_id: str, parent_run_id: str) -> dict[str, dict[str, float]]:
    """The search's trials whose child run has ended (none on a first start), with their last metrics."""
    return {run.data.tags[TRIAL_ID_TAG]: dict(run.data.metrics)
            for run in tracker.trial_runs(experiment_id, parent_run_id)
            if TRIAL_END_TAG in run.data.tags and TRIAL_ID_TAG in run.data.tags}


def release_orphaned_worker_groups() -> int:
    """Removes placement groups whose Ray Train workers are all dead; returns how many.

    When ASHA stops a trial, Tune ends the trial's actor and with it the Train controller that would have
    removed its workers' placement group, which then holds its CPUs and GPUs until the search ends. A group
    that had workers and has no live one left is such a leftover: a live run removes its own groups.
    """
    actors = ray_state.list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=10_000, detail=True,
                                   raise_on_missing_output=False)
    by_group: dict[str, list[str]] = {}
    for actor in actors:
        if actor.placement_group_id:
            by_group.setdefault(actor.placement_group_id, []).append(actor.state)
    released = 0
    for group in ray_state.list_placement_groups(filters=[("state", "=", "CREATED")], limit=10_000,
                                                 raise_on_missing_output=False):
        states = by_group.get(group.placement_group_id)
        if states and all(s == "DEAD" for s in states):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group.placement_group_id))))
            released += 1
    return released


def _trial_error(trial: Any) -> BaseException | None:
    """The exception a trial failed with, from the file Tune has just written next to the driver (its copy in
    ``storage.path`` comes later)."""
    path = trial.pickled_error_file
    if not path or not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        return ray.cloudpickle.load(handle)


class TrialTracking(tune.Callback):
    """Closes each trial's MLflow run with how it ended, times its start-up, and frees what stopped trials hold."""

    def __init__(self, tracker: Tracker, experiment_id: str, parent_run_id: str, max_epochs: int) -> None:
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.started_at: dict[str, float] = {}
        self.startup_s: dict[str, float] = {}
        self._last_sweep = 0.0

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started_at[trial.trial_id] = time.time()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        started = self.started_at.get(trial.trial_id)
        if started is not None and trial.trial_id not in self.startup_s and "first_step_at" in result:
            self.startup_s[trial.trial_id] = max(0.0, result["first_step_at"] - started)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epochs = int((trial.last_result or {}).get(EPOCHS_KEY, 0))
        self._end(trial, "completed" if epochs >= self.max_epochs else "stopped_early")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _trial_error(trial)
        self._end(trial, "failed", {ERROR_TAG: one_line(error)} if error else {})

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last_sweep > 2.0:
            self._last_sweep = time.monotonic()
            release_orphaned_worker_groups()

    def _end(self, trial: Any, outcome: str, tags: dict[str, str] | None = None) -> None:
        runs = self.tracker.trial_runs(self.experiment_id, self.parent_run_id, trial_id=trial.trial_id)
        if not runs:
            return
        metrics = {"trial/startup_s": self.startup_s[trial.trial_id]} if trial.trial_id in self.startup_s else {}
        if tags:
            self.tracker.set_tags(runs[0].info.run_id, tags)
        self.tracker.end_trial_run(runs[0].info.run_id, outcome, metrics)


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


def _trial_records(spec: JobSpec, grid: Any, max_epochs: int) -> list[TrialRecord]:
    objective = spec.objectives[0]
    records = []
    for result in grid:
        frame = result.metrics_dataframe
        metrics = result.metrics or {}
        epochs = int(metrics.get(EPOCHS_KEY, 0))
        outcome = "failed" if result.error else ("completed" if epochs >= max_epochs else "stopped_early")
        best: dict[str, float] = {}
        checkpoint = None
        if frame is not None and objective.metric in frame:
            scored = frame.dropna(subset=[objective.metric])
            if CHECKPOINT_PATH_KEY in scored:
                scored = scored.dropna(subset=[CHECKPOINT_PATH_KEY])
            if len(scored):
                row = scored.loc[scored[objective.metric].idxmax() if objective.mode == "max"
                                 else scored[objective.metric].idxmin()]
                best = {o.metric: float(row[o.metric]) for o in spec.objectives if o.metric in row}
                checkpoint = row.get(CHECKPOINT_PATH_KEY)
        records.append(TrialRecord(
            trial_id=metrics.get("trial_id", result.path.rsplit("/", 1)[-1]),
            params={path: result.config.get(path) for path in spec.hpo.space} if result.config else {},
            outcome=outcome, epochs=epochs, best=best,
            images_per_sec=float(metrics.get("train/images_per_sec", float("nan"))),
            train_time_s=float(metrics.get("time_total_s", 0.0)), best_checkpoint=checkpoint,
            error=one_line(result.error) if result.error else None,
        ))
    return records


def _best_record(spec: JobSpec, records: list[TrialRecord]) -> TrialRecord | None:
    objective = spec.objectives[0]
    scored = [r for r in records if objective.metric in r.best and r.best_checkpoint]
    if not scored:
        return None
    sign = 1 if objective.mode == "max" else -1
    return max(scored, key=lambda r: sign * r.best[objective.metric])


def run_study(spec: JobSpec, job_id: str, tracker: Tracker, run_id: str, stop: Any = None) -> dict[str, Any]:
    """Runs (or, for a job seen before, restores) the search and registers its best trial's best checkpoint."""
    hpo = spec.hpo
    assert hpo is not None
    started = time.monotonic()
    storage_url = study_storage_url(spec)
    study_dir = f"{spec.storage.path.rstrip('/')}/{job_id}"
    max_epochs = hpo.scheduler.max_epochs or spec.schedule.epochs
    experiment_id = tracker.experiment_id(spec.experiment_name)
    context = StudyContext(spec.model_dump(mode="json"), job_id, tracker.tracking_uri, run_id, f"{study_dir}/runs",
                           ended_trials=ended_trials(tracker, experiment_id, run_id))
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), {"cpu": 0, "memory": 1})
    callback = TrialTracking(tracker, experiment_id, run_id, max_epochs)
    ray.init(ignore_reinit_error=True)  # the job's cluster (Tune would connect on fit anyway)
    concurrency = max_concurrent_trials(spec, ray.cluster_resources())
    restoring = tune.Tuner.can_restore(study_dir)
    print(f"lesa-orch: {'restoring' if restoring else 'starting'} the search: {hpo.num_samples} trials, "
          f"{concurrency} at a time, study {job_id!r} in {redact_url(storage_url)}", flush=True)
    if restoring:
        tuner = tune.Tuner.restore(study_dir, trainable=trainable, resume_unfinished=True)
        # callbacks are not part of the saved state; hand the new ones to the restored run
        tuner._local_tuner._run_config.callbacks = [callback]
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=build_searcher(spec, job_id, storage_url),
                                        scheduler=build_scheduler(spec), num_samples=hpo.num_samples,
                                        max_concurrent_trials=concurrency,
                                        trial_name_creator=lambda t: f"trial-{t.trial_id}",
                                        trial_dirname_creator=lambda t: f"trial-{t.trial_id}"),
            run_config=tune.RunConfig(name=job_id, storage_path=spec.storage.path, callbacks=[callback]),
        )
    grid = tuner.fit()
    if stop is not None and stop.received:
        raise KeyboardInterrupt("search stopped")
    records = _trial_records(spec, grid, max_epochs)
    outcome: dict[str, Any] = {"job_id": job_id, "run_id": run_id, "trials": len(records)}
    study = optuna.load_study(study_name=job_id, storage=optuna.storages.RDBStorage(storage_url))
    summary = _log_study_summary(spec, study, tracker, run_id, records, callback, time.monotonic() - started)
    outcome.update(summary)
    best = _best_record(spec, records)
    if best is None:
        failed = [r for r in records if r.error]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(records)} trials failed and none reported a checkpoint; "
                               f"trial {failed[0].trial_id}: {failed[0].error}")
        raise RuntimeError("no trial reported a checkpoint with its objective")
    outcome.update(best_trial=best.trial_id, best_params=best.params, best_metrics=best.best,
                   final_metrics=best.best)
    if spec.tracking.register_model:
        filesystem, _ = pyarrow.fs.FileSystem.from_uri(spec.storage.path)
        best_spec = trial_spec(spec, best.params, context.study_dir)
        from .entry import load_checkpoint_model  # torch models: only the driver needs them

        model = load_checkpoint_model(best_spec, ray.train.Checkpoint(best.best_checkpoint, filesystem=filesystem))
        version = tracker.register_model(run_id, model, spec.registered_model_name)
        outcome.update(registered_model=spec.registered_model_name, registered_version=version)
        tracker.set_tags(run_id, {"lesa.registered_model": spec.registered_model_name,
                                  "lesa.registered_version": version})
    return outcome


def _log_study_summary(
    spec: JobSpec, study: optuna.Study, tracker: Tracker, run_id: str, records: list[TrialRecord],
    callback: TrialTracking, wall_s: float,
) -> dict[str, Any]:
    """Parent-run metrics, ``trials.json``, ``best_trial.json`` and the study plots."""
    from ..study_plots import write_study_plots

    counts = {outcome: sum(r.outcome == outcome for r in records) for outcome in ("completed", "stopped_early",
                                                                                   "failed")}
    startup = list(callback.startup_s.values())
    metrics = {f"hpo/trials_{name}": float(count) for name, count in counts.items()}
    metrics.update({"hpo/wall_time_s": wall_s, "hpo/trial_time_sum_s": sum(r.train_time_s for r in records)})
    if startup:
        metrics["hpo/trial_startup_s_mean"] = sum(startup) / len(startup)
        metrics["hpo/trial_startup_s_max"] = max(startup)
    best = _best_record(spec, records)
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
    return {"trial_outcomes": counts, **({"trial_startup_s": startup} if startup else {})}
