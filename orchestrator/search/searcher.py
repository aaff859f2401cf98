"""What picks a search's trials (``OptunaSearch`` on the job's study), stops them early (ASHA) and how many run at
once.

The Optuna study lives in an RDB storage under the job id, so a resubmitted search continues it: the sampler keeps
its history and the study keeps exactly ``num_samples`` trials.
"""

from __future__ import annotations

import math
import os

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from ..ray_backend.cluster import worker_resources
from ..ray_backend.compat import live_trial, mark_searcher_trial_completed, searcher_study, searcher_trials
from ..ray_backend.scoring import EPOCHS_KEY
from ..spec import JobSpec
from .space import build_sampler, search_space

_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def study_storage_url(spec: JobSpec) -> str:
    """``hpo.storage``, else the deployment's ``LESA_ORCH_OPTUNA_URL`` (the CLI hands it to the driver)."""
    url = (spec.hpo.storage if spec.hpo else None) or os.environ.get("LESA_ORCH_OPTUNA_URL")
    if not url:
        raise RuntimeError("hpo.storage is unset and LESA_ORCH_OPTUNA_URL is not in the driver's environment")
    return url


class StudySearch(OptunaSearch):
    """OptunaSearch that stays consistent with its study when restored from a snapshot older than the study.

    Tune snapshots its state (this searcher included) every second, while Optuna writes to its storage at once.
    A driver killed in between leaves the study ahead of the snapshot: a trial Optuna handed out that Tune never
    recorded (reused for the next new trial, so the study keeps exactly ``num_samples`` trials), or a trial the
    study already finished that Tune runs on (its results are not told again).
    """

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        study = searcher_study(self)
        known = {trial.number for trial in searcher_trials(self).values()}
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        self._orphans = [live_trial(study, t) for t in running if t.number not in known]

    def suggest(self, trial_id: str) -> dict | None:
        orphans = getattr(self, "_orphans", [])
        trials = searcher_trials(self)
        if trial_id not in trials and orphans:
            trials[trial_id] = orphans.pop(0)
        return super().suggest(trial_id)

    def _already_finished(self, trial_id: str) -> bool:
        trial = searcher_trials(self).get(trial_id)
        if trial is None:
            return False
        finished = searcher_study(self).get_trials(deepcopy=False, states=_FINISHED)
        return any(t.number == trial.number for t in finished)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._already_finished(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._already_finished(trial_id):
            mark_searcher_trial_completed(self, trial_id)
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
