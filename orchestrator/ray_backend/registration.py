"""Best checkpoint -> logged MLflow model -> registered version, for a job and for a search.

A job registers the best evaluated checkpoint of its Ray Train result (``scoring.CheckpointScore``: never one
whose epoch did not evaluate); a search, its best trial's best checkpoint. Either
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
from .scoring import checkpoint_score
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
    """A job's best evaluated checkpoint among those Ray Train kept, with that checkpoint's metrics."""
    score = checkpoint_score(spec)
    best = score.best(result.best_checkpoints or [])
    if best is None:
        raise RuntimeError(f"training reported no checkpoint of an epoch that evaluated {score.metric}")
    checkpoint, metrics = best
    return checkpoint, dict(metrics)


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
