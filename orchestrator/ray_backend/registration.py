"""Best checkpoint -> logged MLflow model -> registered version, for a job and for a search.

A job registers the best checkpoint of its Ray Train result; a search, its best trial's best checkpoint. Either
way the model is rebuilt from the checkpoint, logged in the job's run, registered as ``lesa-<task>-<arch>`` with
the alias ``candidate``, and the run is tagged with the name and version (the job store reads them back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.fs
import torch
from ray.train import Checkpoint

from lesa_core.engine.checkpoint import load_weights, read_weights

from ..spec import JobSpec
from ..tracking import Tracker
from .train_loop import CHECKPOINT_FILE, build_model


def load_checkpoint_model(spec: JobSpec, checkpoint: Checkpoint) -> torch.nn.Module:
    """The model saved in a lesa-orch checkpoint, built as ``spec`` describes it, in eval mode."""
    with checkpoint.as_directory() as directory:
        path = Path(directory) / CHECKPOINT_FILE
        state_dict, extra = read_weights(path)
        model = build_model(spec, extra["num_classes"])
        load_weights(model, state_dict, name=f"checkpoint {checkpoint.path}")
    return model.eval()


def best_job_checkpoint(spec: JobSpec, result: Any) -> tuple[Checkpoint, dict[str, float]]:
    """A job's best checkpoint by its primary metric (else its last one), with that checkpoint's metrics."""
    checkpoint = result.get_best_checkpoint(metric=spec.primary_metric, mode=spec.eval.mode) or result.checkpoint
    if checkpoint is None:
        raise RuntimeError("training reported no checkpoint")
    best_metrics = next((m for c, m in result.best_checkpoints if c.path == checkpoint.path), result.metrics)
    return checkpoint, dict(best_metrics)


def stored_checkpoint(path: str, storage_path: str) -> Checkpoint:
    """The checkpoint at ``path`` on the filesystem of ``storage_path`` (a local folder, ``s3://...``)."""
    filesystem, _ = pyarrow.fs.FileSystem.from_uri(storage_path)
    return Checkpoint(path, filesystem=filesystem)


def register_checkpoint(
    tracker: Tracker, run_id: str, spec: JobSpec, checkpoint: Checkpoint, model_name: str
) -> dict[str, str]:
    """Logs the checkpoint's model in run ``run_id`` and registers it as ``model_name`` (alias ``candidate``).

    Returns the ``registered_model`` and ``registered_version`` entries of the job's outcome.
    """
    version = tracker.register_model(run_id, load_checkpoint_model(spec, checkpoint), model_name)
    tracker.set_tags(run_id, {"lesa.registered_model": model_name, "lesa.registered_version": version})
    return {"registered_model": model_name, "registered_version": version}
