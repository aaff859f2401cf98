"""The job's ``TorchTrainer``, built without importing the training code.

A search builds one trainer per trial inside a fresh Tune actor, so this module stays light: the per-worker
loop (torch models, data, engines) is imported by the workers that run it, not by whoever builds the trainer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ray.train import CheckpointConfig, FailureConfig, Result, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.controller import TrainController

from ..spec import JobSpec
from .cluster import worker_resources


class DataLoaderTrainer(TorchTrainer):
    """A TorchTrainer for workers that read through torch DataLoaders, not Ray Data.

    Ray Train's dataset callback starts a ``DatasetManager`` actor for every run, datasets or not, and the workers
    wait for it before the training function starts: 2.5 s of every run's (and every search trial's) start-up on
    2 CPU cores, measured with the actor timeline of a search. Without Ray Data datasets it is left out.

    ``inline_controller`` runs Ray Train's controller in the calling process instead of a controller actor of its
    own. A search trial sets it: its Tune actor lives exactly as long as the run, so a second process that imports
    Ray Train and torch again only adds start-up (3.7 s a trial at 2 trials on 2 cores). The workers are then
    owned by the trial's actor and end with it; the placement-group cleaner actor, which watches the controller
    for the same purpose, is left out: a stopped trial aborts its worker group itself, and the search sweeps what a
    killed one leaves (``tuning.release_orphaned_worker_groups``). Inline, the workers see the trial's actor as
    their controller, so ``ray.train.get_all_reported_checkpoints`` is not available to them; and it takes one
    Train run per actor, which holds while Tune does not reuse trial actors (its default).
    """

    def __init__(self, *args: Any, inline_controller: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inline_controller = inline_controller

    def _create_default_callbacks(self) -> list:
        dropped: tuple[type, ...] = () if self.datasets else (DatasetsCallback,)
        if self.inline_controller:
            dropped += (PlacementGroupCleanerCallback,)
        return [callback for callback in super()._create_default_callbacks() if not isinstance(callback, dropped)]

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Result:
        if not self.inline_controller:
            return super()._initialize_and_run_controller(**controller_init_kwargs)
        controller = TrainController(**controller_init_kwargs)
        try:
            asyncio.run(controller.run())
        except BaseException:  # Tune stopping the trial (SystemExit out of tune.report), or an interrupt
            _abort_worker_group(controller)
            raise
        return controller.get_result()


def _abort_worker_group(controller: TrainController) -> None:
    """Ends an interrupted run's workers, sync actor and placement group now, not when the trial's actor dies.

    ``TrainController.abort`` would do the same but then exits its actor, which here is the trial's own.
    """
    worker_group = controller._worker_group
    if worker_group is None or not worker_group.has_started():
        return
    try:
        worker_group.abort()
    except Exception as error:  # best effort: the search's sweep still frees what is left
        print(f"lesa-orch: aborting the trial's workers failed: {error}", flush=True)


def run_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry: imports and runs ``train_loop.train_loop_per_worker``."""
    from .train_loop import train_loop_per_worker

    train_loop_per_worker(config)


def build_trainer(
    spec: JobSpec, job_id: str, *, tracking_uri: str, run_id: str, run_name: str | None = None,
    trial_id: str = "", parent_run_id: str = "", callbacks: Sequence[Any] = (), inline_controller: bool = False,
) -> DataLoaderTrainer:
    """The job's TorchTrainer: workers and resources, failure handling, best-k checkpoints by the metric.

    ``run_name`` (default the job id) names the Ray Train run under ``storage.path``, so a resubmission restores
    it; a search passes each trial's name, id, its parent MLflow run (``run_id`` empty: rank 0 opens the trial's
    child run), a ``TuneReportCallback`` and ``inline_controller`` (see ``DataLoaderTrainer``).
    """
    resources = worker_resources(spec)
    scaling = ScalingConfig(num_workers=spec.resources.num_workers, use_gpu=spec.resources.use_gpu,
                            resources_per_worker=resources)
    run_name = run_name or job_id
    run = RunConfig(
        name=run_name,
        storage_path=spec.storage.path,
        failure_config=FailureConfig(max_failures=spec.fault_tolerance.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=spec.storage.keep_checkpoints,
                                           checkpoint_score_attribute=spec.primary_metric,
                                           checkpoint_score_order=spec.eval.mode),
        callbacks=list(callbacks),
    )
    config = {"spec": spec.model_dump(mode="json"), "job_id": job_id, "tracking_uri": tracking_uri, "run_id": run_id,
              "run_name": run_name, "trial_id": trial_id, "parent_run_id": parent_run_id}
    return DataLoaderTrainer(run_worker, train_loop_config=config, scaling_config=scaling, run_config=run,
                             inline_controller=inline_controller)
