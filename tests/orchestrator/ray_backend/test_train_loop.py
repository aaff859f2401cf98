import inspect
from dataclasses import replace
from pathlib import Path

import pyarrow.fs
import ray.train
from torch import nn

from lesa_core.engine.optim import OptimConfig
from lesa_core.layers import LesaAttention
from lesa_core.tasks import PRESETS, QUICKSTART_DATA
from orchestrator.ray_backend.train_loop import CHECKPOINT_FILE, build_model, restore_point
from orchestrator.spec import load_spec, parse_spec
from orchestrator.spec.checks import task_config


def _checkpoint(path) -> ray.train.Checkpoint:
    return ray.train.Checkpoint(str(path), filesystem=pyarrow.fs.LocalFileSystem())


def _folder(run, name, complete=True):
    folder = run / name
    folder.mkdir(parents=True)
    if complete:
        (folder / CHECKPOINT_FILE).write_bytes(b"weights")
    return folder


def test_a_complete_reported_checkpoint_is_used_as_is(tmp_path):
    latest = _folder(tmp_path / "job", "checkpoint_2026-01-01_00-00-02.000000")
    assert restore_point(_checkpoint(latest), str(tmp_path), "job").path == str(latest)


def test_an_incomplete_checkpoint_falls_back_to_the_newest_complete_one(tmp_path):
    run = tmp_path / "job"
    _folder(run, "checkpoint_2026-01-01_00-00-01.000000")
    second = _folder(run, "checkpoint_2026-01-01_00-00-02.000000")
    latest = _folder(run, "checkpoint_2026-01-01_00-00-03.000000", complete=False)
    assert restore_point(_checkpoint(latest), str(tmp_path), "job").path == str(second)


def test_checkpoints_ray_never_registered_are_found_in_storage(tmp_path):
    newest = _folder(tmp_path / "job", "checkpoint_2026-01-01_00-00-05.000000")
    _folder(tmp_path / "job", "checkpoint_2026-01-01_00-00-04.000000")
    _folder(tmp_path / "other-job", "checkpoint_2026-01-01_00-00-09.000000")
    assert restore_point(None, str(tmp_path), "job").path == str(newest)


def test_a_fresh_run_starts_from_nothing(tmp_path):
    assert restore_point(None, str(tmp_path), "job") is None
    latest = _folder(tmp_path / "job", "checkpoint_2026-01-01_00-00-03.000000", complete=False)
    assert restore_point(_checkpoint(latest), str(tmp_path), "job") is None


def test_the_spec_sizes_the_light_detection_heads():
    spec = parse_spec({
        "name": "heads", "task": "detection", "data": {"root": "/data/coco", "format": "coco"},
        "schedule": {"epochs": 1, "batch_size_per_worker": 2, "lr": 0.01, "lr_reference_batch": 2},
        "model": {"arch": "test_lesa_resnet", "img_size": 64, "lesa": {"sim_norm": "scaled"},
                  "detector": {"min_size": 64, "max_size": 64, "fpn_channels": 16, "light_heads": True,
                               "box_head_width": 48, "mask_head_channels": 24}},
    })
    model = build_model(spec, num_classes=4)
    assert model.roi_heads.box_head.fc7.out_features == 48
    assert {conv.out_channels for conv in model.roi_heads.mask_head.modules() if isinstance(conv, nn.Conv2d)} == {24}
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4


JOBS = Path(__file__).resolve().parents[3] / "jobs"


def test_the_spec_schedule_has_lesa_cores_one_set_of_optimizer_defaults():
    spec = parse_spec({
        "name": "defaults", "task": "classification", "data": {"root": "/data", "format": "imagenet"},
        "schedule": {"epochs": 3, "batch_size_per_worker": 2, "lr": 0.1, "lr_reference_batch": 256},
    })
    assert task_config(spec).optim == OptimConfig(epochs=3, lr=0.1, lr_reference_batch=256)


def test_one_worker_of_the_coco_quickstart_job_is_lesa_cores_quickstart_preset():
    spec = load_spec(JOBS / "quickstart_coco.yaml", ["resources.num_workers=1", "data.root=/data/qc"])
    config = task_config(spec)
    preset = PRESETS["quickstart_coco"]
    layer_defaults = {name: parameter.default for name, parameter in inspect.signature(LesaAttention).parameters.items()
                      if name in config.model.lesa}
    assert config.model.lesa == {**layer_defaults, **preset.model.lesa}
    assert replace(config, model=replace(config.model, lesa=preset.model.lesa)) == replace(
        preset, data=replace(preset.data, root="/data/qc"))
    assert QUICKSTART_DATA["quickstart_coco"] == spec.data.synthetic.model_dump()  # the same generated images
