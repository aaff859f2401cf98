"""The job's ``TorchTrainer``, built without importing the training code.

A search builds one trainer per trial inside a fresh Tune actor, so this module stays light: the per-worker
loop (torch models, data, engines) is imported by the workers that run it, not by whoever builds the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

from ..spec import JobSpec
from .cluster import worker_resources
from .compat import DataLoaderTrainer
from .scoring import CHECKPOINT_SCORE, CheckpointScore, checkpoint_score


def run_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry: imports and runs ``train_loop.train_loop_per_worker``."""
    from .train_loop import train_loop_per_worker

    train_loop_per_worker(config)


def build_trainer(
    spec: JobSpec, job_id: str, *, tracking_uri: str, run_id: str, run_name: str | None = None,
    trial_id: str = "", parent_run_id: str = "", callbacks: Sequence[Any] = (), inline_controller: bool = False,
    score: CheckpointScore | None = None,
) -> DataLoaderTrainer:
    """The job's TorchTrainer: workers and resources, failure handling, the best checkpoints by ``score``.

    ``run_name`` (default the job id) names the Ray Train run under ``storage.path``, so a resubmission restores
    it; a search passes each trial's name, id, its parent MLflow run (``run_id`` empty: rank 0 opens the trial's
    child run), a ``TuneReportCallback``, ``inline_controller`` (see ``compat.DataLoaderTrainer``) and the search's
    objective as ``score`` (default :func:`checkpoint_score` of ``spec``).
    """
    score = score or checkpoint_score(spec)
    resources = worker_resources(spec)
    scaling = ScalingConfig(num_workers=spec.resources.num_workers, use_gpu=spec.resources.use_gpu,
                            resources_per_worker=resources)
    run_name = run_name or job_id
    run = RunConfig(
        name=run_name,
        storage_path=spec.storage.path,
        failure_config=FailureConfig(max_failures=spec.fault_tolerance.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=spec.storage.keep_checkpoints,
                                           checkpoint_score_attribute=CHECKPOINT_SCORE,
                                           checkpoint_score_order=score.mode),
        callbacks=list(callbacks),
    )
    config = {"spec": spec.model_dump(mode="json"), "job_id": job_id, "tracking_uri": tracking_uri, "run_id": run_id,
              "run_name": run_name, "trial_id": trial_id, "parent_run_id": parent_run_id,
              "checkpoint_score": [score.metric, score.mode]}
    return DataLoaderTrainer(run_worker, train_loop_config=config, scaling_config=scaling, run_config=run,
                             inline_controller=inline_controller)
