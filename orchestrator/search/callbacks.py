"""Tune callbacks of a search: each trial's MLflow child run closed with how it ended, and the worker groups of
stopped trials freed.

MLflow: the job's run is the parent; every trial has a child run (opened by the trial's rank-0 worker) with its
spec, per-epoch metrics and, at its end, the tag ``lesa.trial_end`` (completed, stopped_early or failed).
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
from ray import tune
from ray.util import state as ray_state
from ray.util.placement_group import PlacementGroup, remove_placement_group

from ..ray_backend.failures import one_line
from ..ray_backend.scoring import EPOCHS_KEY
from ..tracking import ERROR_TAG, TRIAL_END_TAG, TRIAL_ID_TAG, Tracker

SWEEP_INTERVAL_S = 2.0


def ended_trials(tracker: Tracker, experiment_id: str, parent_run_id: str) -> dict[str, dict[str, float]]:
    """The search's trials whose child run has ended (none on a first start), with their last metrics."""
    return {run.data.tags[TRIAL_ID_TAG]: dict(run.data.metrics)
            for run in tracker.trial_runs(experiment_id, parent_run_id)
            if TRIAL_END_TAG in run.data.tags and TRIAL_ID_TAG in run.data.tags}


def _trial_error(trial: Any) -> BaseException | None:
    """The exception a trial failed with, from the file Tune has just written next to the driver (its copy in
    ``storage.path`` comes later)."""
    path = trial.pickled_error_file
    if not path or not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        return ray.cloudpickle.load(handle)


class TrialRunTracking(tune.Callback):
    """Closes each trial's MLflow run with how it ended and times each trial's start-up (``startup_s``)."""

    def __init__(self, tracker: Tracker, experiment_id: str, parent_run_id: str, max_epochs: int) -> None:
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.started_at: dict[str, float] = {}
        self.startup_s: dict[str, float] = {}

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

    def _end(self, trial: Any, outcome: str, tags: dict[str, str] | None = None) -> None:
        runs = self.tracker.trial_runs(self.experiment_id, self.parent_run_id, trial_id=trial.trial_id)
        if not runs:
            return
        metrics = {"trial/startup_s": self.startup_s[trial.trial_id]} if trial.trial_id in self.startup_s else {}
        if tags:
            self.tracker.set_tags(runs[0].info.run_id, tags)
        self.tracker.end_trial_run(runs[0].info.run_id, outcome, metrics)


def release_orphaned_worker_groups() -> int:
    """Removes the calling Ray job's placement groups whose Ray Train workers are all dead; returns how many.

    When ASHA stops a trial, Tune ends the trial's actor and with it the Train controller that would have
    removed its workers' placement group, which then holds its CPUs and GPUs until the search ends. A group
    that had workers and has no live one left is such a leftover: a live run removes its own groups. Only this
    job's groups and workers are looked at (the search's trials are its actors): another job's are not its to free.
    The cluster is the one this driver is connected to, not whatever ``RAY_ADDRESS`` or a local lookup would find.
    """
    context = ray.get_runtime_context()
    job_id, address = context.get_job_id(), context.gcs_address
    actors = ray_state.list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"),
                                                             ("job_id", "=", job_id)],
                                   limit=10_000, detail=True, raise_on_missing_output=False)
    by_group: dict[str, list[str]] = {}
    for actor in actors:
        if actor.placement_group_id:
            by_group.setdefault(actor.placement_group_id, []).append(actor.state)
    groups = ray_state.list_placement_groups(address=address, filters=[("state", "=", "CREATED"),
                                                                       ("creator_job_id", "=", job_id)],
                                             limit=10_000, raise_on_missing_output=False)
    released = 0
    for group in groups:
        states = by_group.get(group.placement_group_id)
        if states and all(s == "DEAD" for s in states):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group.placement_group_id))))
            released += 1
    return released


class OrphanedWorkerGroupSweep(tune.Callback):
    """Every ``SWEEP_INTERVAL_S`` of the search loop, frees the worker groups that stopped trials left behind."""

    def __init__(self) -> None:
        self._last_sweep = 0.0

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last_sweep > SWEEP_INTERVAL_S:
            self._last_sweep = time.monotonic()
            release_orphaned_worker_groups()
