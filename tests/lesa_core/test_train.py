"""The standalone trainer: command line, outputs, and an exact resume after an interruption."""

import json
import random

import numpy as np
import pytest
import torch

from lesa_core.data.synthetic import write_imagenet_dataset
from lesa_core.train import build_parser, task_config, train


class Interrupted(Exception):
    """Stands for the process dying mid-epoch."""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_imagenet_dataset(tmp_path_factory.mktemp("data"), num_classes=3, train_per_class=8,
                                  val_per_class=2, image_size=40)


def _args(root, output, *extra):
    return build_parser().parse_args([
        "classification", "--data", str(root), "--model", "test_lesa_resnet", "--quickstart", "--epochs", "2",
        "--batch-size", "8", "--img-size", "32", "--workers", "0", "--seed", "7", "--device", "cpu",
        "--output", str(output), *extra,
    ])


def test_parser_applies_overrides_to_the_named_preset(tmp_path):
    args = build_parser().parse_args([
        "classification", "--data", str(tmp_path), "--model", "lesa_resnet50", "--batch-size", "64", "--lr", "0.3",
        "--auto-augment", "rand-m9-mstd0.5", "--mixup", "0.2", "--label-smoothing", "0.1",
    ])
    config = task_config(args)
    assert args.preset == "lesa_imagenet" and args.run is train
    optim = config.optim
    assert (config.data.batch_size, optim.epochs, optim.optimizer, optim.nesterov) == (64, 95, "sgd", True)
    assert optim.peak_lr(global_batch=64) == pytest.approx(0.3)
    assert (config.data.auto_augment, config.data.mixup_alpha, config.data.label_smoothing) == (
        "rand-m9-mstd0.5", 0.2, 0.1)
    default_lr = task_config(build_parser().parse_args(
        ["classification", "--data", str(tmp_path), "--model", "m", "--batch-size", "256"]))
    assert default_lr.optim.peak_lr(global_batch=256) == pytest.approx(0.05 * 256 / 128)


def test_a_preset_of_the_other_task_is_refused(tmp_path):
    args = build_parser().parse_args(["detection", "--data", str(tmp_path)])
    args.preset = "quickstart_imagenet"
    with pytest.raises(SystemExit, match="is a classification preset"):
        task_config(args)


def test_resume_after_an_interruption_replays_exactly_what_an_uninterrupted_run_does(root, tmp_path):
    straight_losses = []
    straight = train(_args(root, tmp_path / "straight"),
                                    on_step=lambda step, metrics: straight_losses.append(metrics["train/loss"]))
    steps_per_epoch = len(straight_losses) // 2
    assert steps_per_epoch == 3  # 24 images, batches of 8

    def die_in_epoch_two(step, metrics):
        if step == steps_per_epoch + 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(_args(root, tmp_path / "interrupted"), on_step=die_in_epoch_two)
    # a fresh process: every random generator somewhere else
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    resumed_losses = []
    resumed = train(
        _args(root, tmp_path / "interrupted", "--resume", str(tmp_path / "interrupted" / "last.pth")),
        on_step=lambda step, metrics: resumed_losses.append(metrics["train/loss"]),
    )

    assert resumed_losses == straight_losses[steps_per_epoch:]
    resumed.pop("train/images_per_sec"), straight.pop("train/images_per_sec")  # wall clock, the one difference
    assert resumed == straight
    weights = [torch.load(tmp_path / run / "last.pth", weights_only=True)["model"]
               for run in ("straight", "interrupted")]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=0, atol=0, msg=key)


def test_outputs_last_best_and_a_metrics_log(root, tmp_path):
    metrics = train(_args(root, tmp_path / "run", "--epochs", "1", "--warmup-epochs", "0"))
    assert {"train/loss", "train/lr", "train/images_per_sec", "epoch", "val/acc1", "val/acc5", "val/loss",
            "best/val/acc1"} == set(metrics)
    assert 0 <= metrics["val/acc1"] <= metrics["val/acc5"] <= 1
    checkpoint = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert checkpoint["extra"]["classes"] == ["n00000000", "n00000001", "n00000002"]
    assert checkpoint["extra"]["img_size"] == 32
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log == [metrics]
