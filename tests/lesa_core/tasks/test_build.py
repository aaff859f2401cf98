"""Tasks from a plain config: the same config and seed build the same run; the engines share one meaning of a step."""

from dataclasses import replace

import pytest
import torch

from lesa_core.data.synthetic import write_coco_dataset, write_imagenet_dataset
from lesa_core.metrics import names
from lesa_core.tasks import PRESETS, build_task
from lesa_core.train import build_parser, train


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_dataset(tmp_path_factory.mktemp("coco"), num_train=8, num_val=4, image_size=64, seed=0)


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    return write_imagenet_dataset(tmp_path_factory.mktemp("imagenet"), num_classes=3, train_per_class=4,
                                  val_per_class=2, image_size=32)


def _coco_config(root, epochs=2):
    preset = PRESETS["quickstart_coco"]
    detector = replace(preset.model.detector, min_size=64, max_size=64)
    return replace(preset, model=replace(preset.model, img_size=64, detector=detector),
                   data=replace(preset.data, root=str(root)), optim=replace(preset.optim, epochs=epochs),
                   eval_every=1)


def _steps(task, epoch):
    seen = []
    metrics = task.train_one_epoch(epoch, on_step=lambda step, m: seen.append((step, m["train/loss"])))
    return metrics, seen


def test_the_same_config_and_seed_build_the_same_detection_run(coco_root):
    first = build_task(_coco_config(coco_root))
    initial = {key: value.clone() for key, value in first.model.state_dict().items()}
    metrics0, seen0 = _steps(first, 0)
    second = build_task(_coco_config(coco_root))  # seeds everything again, as a fresh process would
    for key, value in second.model.state_dict().items():
        torch.testing.assert_close(value, initial[key], rtol=0, atol=0, msg=key)
    assert [loss for _, loss in seen0] == [loss for _, loss in _steps(second, 0)[1]]
    # one meaning of a step for both tasks: the global batch index; the sampler follows the epoch
    _, seen1 = _steps(first, 1)
    assert [step for step, _ in seen0 + seen1] == list(range(2 * len(first.train_loader)))
    assert {"train/loss", "train/loss_classifier", "train/loss_mask", "train/lr", "epoch"} <= set(metrics0)
    assert first.extra["class_names"][0] == "__background__" and first.num_classes == len(first.extra["class_names"])


def test_a_classification_task_evaluates_with_its_engine(imagenet_root):
    preset = PRESETS["quickstart_imagenet"]
    config = replace(preset, model=replace(preset.model, img_size=32),
                     data=replace(preset.data, root=str(imagenet_root), batch_size=4, workers=0, img_size=32),
                     optim=replace(preset.optim, epochs=1, warmup_epochs=0))
    task = build_task(config)
    assert task.num_classes == 3 and task.extra["classes"] == ["n00000000", "n00000001", "n00000002"]
    task.train_one_epoch(0)
    assert set(task.evaluate()) == set(names.CLASSIFICATION_EVAL)


def test_detection_trainer_prints_coco_ap_and_writes_its_outputs(coco_root, tmp_path, capsys):
    args = build_parser().parse_args([
        "detection", "--quickstart", "--data", str(coco_root), "--epochs", "1", "--output", str(tmp_path),
        "--device", "cpu",
    ])
    # the quickstart's 128 px detector on 64 px images: still a valid run of the preset
    metrics = train(args)
    assert set(names.COCO_EVAL) <= set(metrics) and f"best/{names.coco_metric('bbox')}" in metrics
    assert "COCO AP: bbox" in capsys.readouterr().out
    checkpoint = torch.load(tmp_path / "best.pth", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["extra"]["eval_metrics"] == {
        key: metrics[key] for key in checkpoint["extra"]["eval_metrics"]}


def test_evaluation_cadence_includes_the_last_epoch():
    config = replace(PRESETS["quickstart_coco"], eval_every=10)
    assert [epoch for epoch in range(config.optim.epochs) if config.evaluates_after(epoch)] == [9, 19, 29, 37]
