"""Checkpoint scores: only evaluated epochs score, the best evaluated checkpoint is the one registered, and Ray
Train's pruning keeps it (a real run on a local Ray)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import ray.train
from ray.util import state as ray_state

from lesa_core.data.synthetic import write_imagenet_dataset
from orchestrator.ray_backend.registration import best_job_checkpoint
from orchestrator.ray_backend.scoring import CHECKPOINT_SCORE, EPOCHS_KEY, CheckpointScore, checkpoint_score
from orchestrator.ray_backend.trainer import build_trainer
from orchestrator.spec import load_spec
from tests.orchestrator.ray_backend.local_ray import local_ray

JOBS = Path(__file__).resolve().parents[3] / "jobs"


@pytest.mark.parametrize("mode", ["max", "min"])
def test_an_epoch_without_evaluation_scores_worse_than_any_measured_value(mode):
    score = CheckpointScore("val/acc1", mode)
    worst = max if mode == "min" else min
    assert score.value({"val/acc1": 0.5, "train/loss": 2.0}) == 0.5
    for unevaluated in ({}, {"train/loss": 2.0}, {"val/acc1": math.nan}):
        assert score.value(unevaluated) == score.unscored
    assert worst(score.unscored, -1e300, 1e300) == score.unscored
    assert json.loads(json.dumps(score.unscored)) == score.unscored  # finite: Ray's snapshot keeps it


def _reports(score: CheckpointScore, *values: float | None) -> list[tuple[str, dict[str, Any]]]:
    """Reports of epochs 0, 1, ... scored ``values`` (None: unevaluated), plus one from before scores existed."""
    scored = [(f"checkpoint-{epoch}", {EPOCHS_KEY: epoch + 1,
                                       CHECKPOINT_SCORE: score.unscored if value is None else value})
              for epoch, value in enumerate(values)]
    return [*scored, ("checkpoint-old", {"val/loss": 0.1})]


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_best_checkpoint_is_the_best_evaluated_one_and_a_tie_goes_to_the_later_epoch(mode):
    score = CheckpointScore("val/loss", mode)
    best = "checkpoint-3" if mode == "max" else "checkpoint-1"
    assert score.best(_reports(score, None, 0.7, None, 0.9, math.nan))[0] == best
    assert score.best(_reports(score, None, 0.7, None, 0.9, 0.7, 0.9))[0] == ("checkpoint-5" if mode == "max"
                                                                               else "checkpoint-4")
    assert score.best(_reports(score, None, None)) is None


class ReportLog(ray.train.UserCallback):
    """Appends every report's checkpoint path and rank-0 metrics to a JSON-lines file (it runs in the controller)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"checkpoint": checkpoint and checkpoint.path, "metrics": metrics[0]}) + "\n")


@pytest.fixture(scope="module")
def ray_address():
    with local_ray(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2") as address:  # the controller polls reports this often
        yield address


@pytest.mark.slow
def test_only_evaluated_epochs_score_and_pruning_keeps_the_best_evaluated_checkpoint(tmp_path, ray_address):
    root = write_imagenet_dataset(tmp_path / "data", num_classes=2, train_per_class=8, val_per_class=4, image_size=32)
    spec = load_spec(JOBS / "quickstart_imagenet.yaml", [
        f"data.root={root}", "data.generate=false", "data.img_size=32", "model.img_size=32",
        "schedule.batch_size_per_worker=8", "schedule.epochs=4", "schedule.warmup_epochs=0", "eval.every_epochs=2",
        "eval.metric=val/loss", "eval.mode=min", f"storage.path={tmp_path}/runs", "storage.keep_checkpoints=1"])
    log = tmp_path / "reports.jsonl"
    result = build_trainer(spec, "scores", tracking_uri="", run_id="", callbacks=[ReportLog(log)]).fit()

    reports = [json.loads(line) for line in log.read_text().splitlines()]
    assert [report["metrics"]["epoch"] for report in reports] == [0, 1, 2, 3]
    for report in reports:
        metrics, evaluated = report["metrics"], report["metrics"]["epoch"] in (1, 3)
        assert ("val/loss" in metrics) == evaluated  # a checkpoint carries no earlier epoch's evaluation
        assert metrics[CHECKPOINT_SCORE] == (metrics["val/loss"] if evaluated else checkpoint_score(spec).unscored)
    # on this data epoch 1 evaluates best: had epoch 2 carried that evaluation on, it would have pruned epoch 1
    best = min((r for r in reports if "val/loss" in r["metrics"]),
               key=lambda r: (r["metrics"]["val/loss"], -r["metrics"]["epoch"]))
    checkpoint, metrics = best_job_checkpoint(spec, result)
    assert checkpoint.path == best["checkpoint"] and metrics["val/loss"] == best["metrics"]["val/loss"]
    assert [kept.path for kept, _ in result.best_checkpoints] == [best["checkpoint"]]
    on_disk = {str(path) for path in (tmp_path / "runs" / "scores").glob("checkpoint_*") if path.is_dir()}
    assert on_disk == {best["checkpoint"], result.checkpoint.path}  # and the latest, to resume from
    assert result.checkpoint.path == reports[-1]["checkpoint"]

    controller = ray_state.list_actors(address=ray_address, filters=[("class_name", "=", "TrainController")])
    driver_output = "".join(ray_state.get_log(address=ray_address, actor_id=controller[0].actor_id, suffix="err"))
    assert "Started training worker group" in driver_output  # the controller's log, as its driver gets it
    assert "Result dict has no key" not in driver_output
