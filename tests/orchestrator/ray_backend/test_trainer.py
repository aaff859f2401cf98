"""The job's TorchTrainer: resources, checkpoints ranked by their score, no Ray Data actor per run, and a search
trial's controller run inline."""

from __future__ import annotations

from pathlib import Path

from orchestrator.ray_backend.compat import (
    BackendSetupCallback,
    DatasetsCallback,
    PlacementGroupCleanerCallback,
    default_callbacks,
)
from orchestrator.ray_backend.scoring import CHECKPOINT_SCORE, CheckpointScore, checkpoint_score
from orchestrator.ray_backend.trainer import build_trainer
from orchestrator.spec import load_spec

JOBS = Path(__file__).resolve().parents[3] / "jobs"


def test_trainer_follows_the_spec_and_starts_no_dataset_manager(tmp_path):
    spec = load_spec(JOBS / "quickstart_coco.yaml", [f"storage.path={tmp_path}", "storage.keep_checkpoints=2"])
    trainer = build_trainer(spec, "job-1", tracking_uri="http://mlflow:5000", run_id="run-1")
    assert trainer.scaling_config.num_workers == 2
    checkpoints = trainer.run_config.checkpoint_config
    assert (checkpoints.num_to_keep, checkpoints.checkpoint_score_attribute) == (2, CHECKPOINT_SCORE)
    assert checkpoints.checkpoint_score_order == "max"
    assert trainer.train_loop_config["checkpoint_score"] == ["coco/bbox_mAP", "max"]
    assert trainer.run_config.name == "job-1" and trainer.train_loop_config["run_id"] == "run-1"
    callbacks = default_callbacks(trainer)
    assert any(isinstance(callback, BackendSetupCallback) for callback in callbacks)  # DDP set-up stays
    assert not any(isinstance(callback, DatasetsCallback) for callback in callbacks)


def test_a_trial_trainer_runs_its_controller_inline_without_the_placement_group_cleaner(tmp_path):
    spec = load_spec(JOBS / "quickstart_tune.yaml", [f"storage.path={tmp_path}"])
    job = build_trainer(spec, "job-1", tracking_uri="http://mlflow:5000", run_id="run-1")
    trial = build_trainer(spec, "job-1", tracking_uri="http://mlflow:5000", run_id="", inline_controller=True)
    assert (job.inline_controller, trial.inline_controller) == (False, True)
    assert any(isinstance(callback, PlacementGroupCleanerCallback) for callback in default_callbacks(job))
    trial_callbacks = default_callbacks(trial)
    assert not any(isinstance(callback, PlacementGroupCleanerCallback | DatasetsCallback)
                   for callback in trial_callbacks)
    assert any(isinstance(callback, BackendSetupCallback) for callback in trial_callbacks)


def test_a_search_ranks_its_trials_checkpoints_by_its_first_objective(tmp_path):
    overrides = [f"storage.path={tmp_path}", 'hpo.objectives=[{"metric": "train/loss", "mode": "min"}]']
    spec = load_spec(JOBS / "quickstart_tune.yaml", overrides)
    assert checkpoint_score(spec) == CheckpointScore("train/loss", "min")
    trial = build_trainer(spec, "job-1", tracking_uri="", run_id="", score=checkpoint_score(spec))
    assert trial.run_config.checkpoint_config.checkpoint_score_order == "min"
    assert trial.train_loop_config["checkpoint_score"] == ["train/loss", "min"]
