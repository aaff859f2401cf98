"""A job's ``hpo`` block run as a search on the job's Ray cluster: a Tune ``Tuner`` over :func:`.trial.run_trial`.

Every trial applies its sampled values to the job spec and fits the same ``TorchTrainer`` a single job builds (the
Ray Train V2 pattern), with its controller inside the trial. The pieces come from ``orchestrator.search``; Tune's
experiment state sits at ``<storage.path>/<job id>`` and the Optuna study under the job id, so a resubmitted job
restores both: finished trials are not run again, unfinished ones continue from their last checkpoint and the
sampler keeps its history. The search ends by registering its best trial's best checkpoint.
"""

from __future__ import annotations

import os
import time
from typing import Any

import optuna
import ray
from ray import tune

from ..redaction import redact_url
from ..search.callbacks import OrphanedWorkerGroupSweep, TrialRunTracking, ended_trials
from ..search.searcher import build_scheduler, build_searcher, max_concurrent_trials, study_storage_url
from ..search.summary import best_record, log_study_summary, trial_records
from ..spec import JobSpec
from ..tracking import Tracker
from .compat import set_restored_callbacks
from .registration import register_checkpoint, stored_checkpoint
from .trial import StudyContext, run_trial, trial_spec


def snapshot_every_second() -> None:
    """Tune snapshots its experiment state every second (unless the environment says otherwise), so a driver killed
    just after Optuna handed out a trial still knows that trial on restore (the default waits 10 s or more and
    would leave an orphan in the study). Tune reads it when a run starts."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")


def run_study(spec: JobSpec, job_id: str, tracker: Tracker, run_id: str, stop: Any = None) -> dict[str, Any]:
    """Runs (or, for a job seen before, restores) the search and registers its best trial's best checkpoint."""
    hpo = spec.hpo
    assert hpo is not None
    snapshot_every_second()
    started = time.monotonic()
    storage_url = study_storage_url(spec)
    study_dir = f"{spec.storage.path.rstrip('/')}/{job_id}"
    max_epochs = hpo.scheduler.max_epochs or spec.schedule.epochs
    experiment_id = tracker.experiment_id(spec.experiment_name)
    context = StudyContext(spec.model_dump(mode="json"), job_id, tracker.tracking_uri, run_id, f"{study_dir}/runs",
                           ended_trials=ended_trials(tracker, experiment_id, run_id))
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), {"cpu": 0, "memory": 1})
    tracking = TrialRunTracking(tracker, experiment_id, run_id, max_epochs)
    callbacks: list[tune.Callback] = [tracking, OrphanedWorkerGroupSweep()]
    ray.init(ignore_reinit_error=True)  # the job's cluster (Tune would connect on fit anyway)
    concurrency = max_concurrent_trials(spec, ray.cluster_resources())
    restoring = tune.Tuner.can_restore(study_dir)
    print(f"lesa-orch: {'restoring' if restoring else 'starting'} the search: {hpo.num_samples} trials, "
          f"{concurrency} at a time, study {job_id!r} in {redact_url(storage_url)}", flush=True)
    if restoring:
        tuner = tune.Tuner.restore(study_dir, trainable=trainable, resume_unfinished=True)
        set_restored_callbacks(tuner, callbacks)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=build_searcher(spec, job_id, storage_url),
                                        scheduler=build_scheduler(spec), num_samples=hpo.num_samples,
                                        max_concurrent_trials=concurrency,
                                        trial_name_creator=lambda t: f"trial-{t.trial_id}",
                                        trial_dirname_creator=lambda t: f"trial-{t.trial_id}"),
            run_config=tune.RunConfig(name=job_id, storage_path=spec.storage.path, callbacks=callbacks),
        )
    grid = tuner.fit()
    if stop is not None and stop.received:
        raise KeyboardInterrupt("search stopped")
    records = trial_records(spec, grid, max_epochs)
    outcome: dict[str, Any] = {"job_id": job_id, "run_id": run_id, "trials": len(records)}
    study = optuna.load_study(study_name=job_id, storage=optuna.storages.RDBStorage(storage_url))
    outcome.update(log_study_summary(spec, study, tracker, run_id, records, list(tracking.startup_s.values()),
                                     time.monotonic() - started))
    best = best_record(spec, records)
    if best is None:
        failed = [r for r in records if r.error]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(records)} trials failed and none reported a checkpoint; "
                               f"trial {failed[0].trial_id}: {failed[0].error}")
        raise RuntimeError("no trial reported a checkpoint with its objective")
    outcome.update(best_trial=best.trial_id, best_params=best.params, best_metrics=best.best,
                   final_metrics=best.best)
    if spec.tracking.register_model:
        outcome.update(register_checkpoint(tracker, run_id, trial_spec(spec, best.params, context.study_dir),
                                           stored_checkpoint(best.best_checkpoint, spec.storage.path),
                                           spec.registered_model_name))
    return outcome
