"""What every Ray Train worker runs: a job spec turned into a ``lesa_core.tasks`` run, plus Ray and MLflow.

Under DDP (gloo on CPU, NCCL on GPU, set up by Ray Train) each worker trains on its shard; rank 0 logs
the epoch's metrics to MLflow and saves the checkpoint that ``ray.train.report`` hands to Ray Train, with what
that epoch measured and the score Ray Train ranks it by (``scoring.CheckpointScore``). Every worker also exports
live step metrics through Ray's metrics agent (``metrics.TrainingMetrics``).
A restarted worker group, or a resubmitted job with the same run name, continues from
``ray.train.get_checkpoint()``. No model math here: only wiring.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray.train
import ray.train.torch
from torch import nn

from lesa_core import tasks
from lesa_core.engine.checkpoint import load_checkpoint, save_checkpoint
from lesa_core.tasks import build_task

from ..spec import JobSpec, parse_spec
from ..spec.checks import task_config
from ..tracking import Tracker
from .metrics import TrainingMetrics
from .scoring import CHECKPOINT_SCORE, EPOCHS_KEY, CheckpointScore

CHECKPOINT_FILE = "checkpoint.pth"


def build_model(spec: JobSpec, num_classes: int) -> nn.Module:
    """The spec's network (``num_classes`` as its checkpoint recorded it)."""
    return tasks.build_model(task_config(spec), num_classes)


def _has_checkpoint_file(filesystem: pyarrow.fs.FileSystem, folder: str) -> bool:
    return filesystem.get_file_info(f"{folder}/{CHECKPOINT_FILE}").type == pyarrow.fs.FileType.File


def newest_complete_checkpoint(filesystem: pyarrow.fs.FileSystem, run_dir: str) -> ray.train.Checkpoint | None:
    """The newest ``checkpoint_*`` folder of a run that holds its checkpoint file, or None."""
    entries = filesystem.get_file_info(pyarrow.fs.FileSelector(run_dir, allow_not_found=True))
    # folder names are checkpoint_<timestamp>, so name order is time order
    folders = sorted((e.path for e in entries if e.type == pyarrow.fs.FileType.Directory
                      and e.base_name.startswith("checkpoint_")), reverse=True)
    folder = next((f for f in folders if _has_checkpoint_file(filesystem, f)), None)
    return ray.train.Checkpoint(folder, filesystem=filesystem) if folder else None


def restore_point(
    reported: ray.train.Checkpoint | None, storage_path: str, run_name: str
) -> ray.train.Checkpoint | None:
    """Where a (re)started worker group continues from.

    Ray Train's checkpoint if its file arrived. Otherwise the newest complete checkpoint in the run's storage:
    a driver killed while a checkpoint was being persisted leaves that folder without its file, and a worker
    killed before the controller polled its last reports leaves Ray with no checkpoint at all although the
    worker had written them.
    """
    if reported is not None and _has_checkpoint_file(reported.filesystem, reported.path):
        return reported
    if reported is not None:
        filesystem, run_dir = reported.filesystem, reported.path.rstrip("/").rsplit("/", 1)[0]
    else:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(storage_path)
        run_dir = f"{root.rstrip('/')}/{run_name}"
    found = newest_complete_checkpoint(filesystem, run_dir)
    if found is not None and reported is not None:
        print(f"lesa-orch: checkpoint {reported.path} is incomplete; using {found.path}", flush=True)
    return found


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: ``config`` holds the resolved spec, the MLflow URI and run id."""
    spec = parse_spec(config["spec"], source=f"job {config['job_id']}")
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    task = build_task(task_config(spec), device=device, prepare_model=ray.train.torch.prepare_model)
    score = CheckpointScore(*config["checkpoint_score"])
    start_epoch, last_eval = 0, {}
    run_name = config.get("run_name", config["job_id"])  # a search names each trial's run
    checkpoint = restore_point(ray.train.get_checkpoint(), spec.storage.path, run_name)
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(Path(directory) / CHECKPOINT_FILE, model=task.model, optimizer=task.optimizer,
                                    scheduler=task.scheduler)
        start_epoch = state["epoch"]  # finished epochs
        last_eval = state.get("extra", {}).get("eval_metrics", {})
        if rank == 0:
            print(f"lesa-orch: resumed from checkpoint {checkpoint.path} at epoch {start_epoch}", flush=True)
    tracker, run_id = None, config.get("run_id")
    if rank == 0 and (run_id or config.get("parent_run_id")):
        tracker = Tracker(config["tracking_uri"])
        if not run_id:  # a search trial: rank 0 opens (or, resumed, reopens) the trial's child run
            run_id = tracker.start_trial_run(spec, config["job_id"], config["parent_run_id"], config["trial_id"])
    if rank == 0:
        print(f"lesa-orch: training on {context.get_world_size()} worker(s), device {device}", flush=True)
    live_metrics = TrainingMetrics(config["job_id"], config.get("trial_id", ""), rank, device)

    first_step_at = time.time()  # when training starts: a search's per-trial start-up cost ends here
    if start_epoch >= spec.schedule.epochs:  # restored after the last epoch: say so, or a search sees no result
        ray.train.report({**last_eval, "epoch": float(start_epoch - 1), EPOCHS_KEY: start_epoch,
                          "first_step_at": first_step_at})
    for epoch in range(start_epoch, spec.schedule.epochs):
        metrics = task.train_one_epoch(epoch, on_step=live_metrics.on_step,
                                       loader=live_metrics.wrap(task.train_loader, epoch))
        fresh_eval: dict[str, float] = {}
        if task.config.evaluates_after(epoch):
            fresh_eval = last_eval = task.evaluate()
        # MLflow and Ray Train get an epoch's own measurements: evaluations only when they happen
        measured = {**metrics, "epoch": float(epoch), **fresh_eval}
        if tracker is not None:
            tracker.log_metrics(run_id, measured, step=epoch)
            summary = " ".join(f"{key}={value:.4g}" for key, value in sorted(measured.items()))
            print(f"lesa-orch: epoch {epoch} {summary}", flush=True)
        with tempfile.TemporaryDirectory() as directory:
            report_checkpoint = None
            if rank == 0:
                save_checkpoint(Path(directory) / CHECKPOINT_FILE, model=task.model, optimizer=task.optimizer,
                                scheduler=task.scheduler, scaler=None, epoch=epoch + 1,
                                extra={**task.extra, "num_classes": task.num_classes, "eval_metrics": last_eval})
                report_checkpoint = ray.train.Checkpoint.from_directory(directory)
            progress = {EPOCHS_KEY: epoch + 1, "first_step_at": first_step_at}
            ray.train.report({**measured, CHECKPOINT_SCORE: score.value(measured if fresh_eval else {}), **progress},
                             checkpoint=report_checkpoint)
