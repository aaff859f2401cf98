"""The spec's ``hpo`` block: the quickstart search parses, and every bad search is one line naming its field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import service
from orchestrator.redaction import flatten_params, redacted_spec
from orchestrator.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[3]
TUNE = REPO / "jobs" / "quickstart_tune.yaml"
CLI = str(Path(sys.executable).parent / "lesa-orch")
TWO_OBJECTIVES = "hpo.objectives=[{metric: val/acc1, mode: max}, {metric: train/images_per_sec, mode: max}]"
SMALL_GRID = ["hpo.space={model.lesa.fusion: {type: choice, values: [gate, add]}, "
              "model.lesa.unary_kernel: {type: int, low: 1, high: 5, q: 2}}", "hpo.sampler.type=grid"]


def test_the_quickstart_search_parses():
    spec = load_spec(TUNE)
    hpo = spec.hpo
    assert set(hpo.space) == {"model.lesa.fusion", "model.lesa.unary_kernel", "model.lesa.fusion_shrink",
                              "schedule.lr"}
    assert hpo.space["schedule.lr"].type == "loguniform"
    assert (hpo.sampler.type, hpo.sampler.seed, hpo.scheduler.type, hpo.num_samples) == ("tpe", 0, "asha", 8)
    assert [(o.metric, o.mode) for o in spec.objectives] == [("val/acc1", "max")]


def test_two_objectives_and_every_dimension_type():
    spec = load_spec(TUNE, [
        TWO_OBJECTIVES,
        "hpo.space.model.lesa.num_heads={type: choice, values: [1, 2, 4]}",
        "hpo.space.model.lesa.qk_ratio={type: uniform, low: 0.25, high: 1.0}",
        "hpo.space.model.lesa.unary_dilation={type: int, low: 1, high: 3}",
        "hpo.space.schedule.weight_decay={type: quantized, low: 0.0, high: 0.1, q: 0.025}",
        "hpo.space.model.lesa.pos_embed={type: choice, values: [rel2d, flat1d]}",
        "hpo.space.model.lesa.sim_norm={type: choice, values: [bn, scaled]}",
        "hpo.space.schedule.warmup_epochs={type: uniform, low: 0, high: 1}",
    ])
    assert [o.metric for o in spec.objectives] == ["val/acc1", "train/images_per_sec"]
    assert len(spec.hpo.space) == 11


def test_a_grid_search_counts_its_points():
    spec = load_spec(TUNE, [*SMALL_GRID, "hpo.num_samples=6"])
    assert spec.hpo.grid_size() == 6
    assert spec.hpo.space["model.lesa.unary_kernel"].grid_points() == [1, 3, 5]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # empty or contradictory
        (["hpo.space={}"], r"hpo: space is empty"),
        (["hpo.sampler.type=grid"], r"hpo: sampler 'grid' needs choice or int dimensions; schedule\.lr are continuous"),
        ([*SMALL_GRID, "hpo.num_samples=7"], r"hpo\.num_samples=7 exceeds the 6 points of the grid"),
        (["hpo.sampler.type=cmaes", TWO_OBJECTIVES], r"hpo: sampler 'cmaes' optimises one objective"),
        (["hpo.scheduler.grace_period=5"], r"hpo\.scheduler\.grace_period=5 exceeds the 4 epochs"),
        (["hpo.scheduler.max_epochs=2", "hpo.scheduler.grace_period=3"], r"grace_period=3 exceeds the 2 epochs"),
        (["hpo.scheduler.max_epochs=9"], r"hpo\.scheduler\.max_epochs=9 exceeds schedule\.epochs=4"),
        (["eval.every_epochs=2"], r"eval\.every_epochs=2: a search compares trials every epoch"),
        (["hpo.space.model.lesa.fusion={type: choice, values: [gate, add, gate]}"],
         r"hpo\.space\.model\.lesa\.fusion: choice values \['gate', 'add', 'gate'\] repeat"),
        (["hpo.space.model.lesa.fusion={type: choice, values: []}"],
         r"hpo\.space\.model\.lesa\.fusion: a choice needs"),
        (["hpo.space.schedule.lr={type: uniform, low: 0.1, high: 0.2, q: 0.01}"], r"use type: quantized"),
        # paths that do not exist or may not be searched
        (["hpo.space.model.lesa.fusoin={type: choice, values: [gate, add]}"],
         r"hpo\.space\.model\.lesa\.fusoin: no field 'fusoin' in model\.lesa; did you mean 'fusion'\?"),
        (["hpo.space.schedul.lr={type: choice, values: [0.1, 0.2]}"],
         r"hpo\.space\.schedul\.lr: no field 'schedul' in the job spec; did you mean 'schedule'\?"),
        (["hpo.space.schedule.epochs.x={type: choice, values: [1, 2]}"], r"schedule\.epochs is a value, not a section"),
        (["hpo.space.name={type: choice, values: [a, b]}"], r"hpo\.space\.name: name cannot be searched"),
        (["hpo.space.storage.path={type: choice, values: [/a, /b]}"],
         r"hpo\.space\.storage\.path: storage cannot be searched"),
        (["hpo.space.resources.num_workers={type: int, low: 1, high: 2}"], r"resources cannot be searched"),
        (["hpo.space.data.root={type: choice, values: [/a, /b]}"], r"data\.root cannot be searched"),
        # values a trial could get that the spec rejects
        (["hpo.space.model.lesa.unary_kernel={type: choice, values: [1, 2, 3]}"],
         r"hpo\.space\.model\.lesa\.unary_kernel=2: model\.lesa: unary_kernel=2 must be odd"),
        (["hpo.space.model.lesa.unary_kernel={type: int, low: 1, high: 5}"], r"unary_kernel=2: .*must be odd"),
        (["hpo.space.model.lesa.unary_kernel={type: quantized, low: 1, high: 5, q: 1}"], r"must be odd"),
        (["hpo.space.model.lesa.num_heads={type: int, low: 0, high: 8}"],
         r"hpo\.space\.model\.lesa\.num_heads=0: model\.lesa\.num_heads: Input should be greater than or equal to 1"),
        (["hpo.space.model.lesa.num_heads={type: uniform, low: 1, high: 8}"],
         r"hpo\.space\.model\.lesa\.num_heads=3\.6\d*: model\.lesa\.num_heads: Input should be a valid integer"),
        (["hpo.space.model.lesa.fusion={type: choice, values: [gate, mean]}"],
         r"fusion=mean: model\.lesa\.fusion: Input should be"),
        (["hpo.space.schedule.warmup_epochs={type: uniform, low: 0, high: 6}"], r"warmup_epochs=6.0 exceeds epochs=4"),
        # ranges
        (["hpo.space.schedule.lr.high=0.00001"], r"hpo\.space\.schedule\.lr: low=0\.0001 must be below high=1e-05"),
        (["hpo.space.schedule.lr={type: uniform, low: 0.1, high: 0.1}"], r"low=0\.1 must be below high=0\.1"),
        (["hpo.space.schedule.lr={type: loguniform, low: 0, high: 0.1}"], r"loguniform range needs low > 0, got 0"),
        (["hpo.space.schedule.lr={type: loguniform, low: -1, high: 0.1}"], r"loguniform range needs low > 0"),
        (["hpo.space.schedule.lr={type: quantized, low: 0.1, high: 0.2}"], r"quantized range needs its step q"),
        (["hpo.space.schedule.lr={type: uniform, low: 0.1}"], r"a uniform range needs both low and high"),
        (["hpo.space.model.lesa.num_heads={type: int, low: 1, high: 8.5}"], r"int range needs whole numbers"),
        # trials and objectives
        (["hpo.num_samples=0"], r"hpo\.num_samples: Input should be greater than or equal to 1"),
        (["hpo.max_concurrent_trials=0"], r"hpo\.max_concurrent_trials: Input should be greater than or equal to 1"),
        (["hpo.objectives=[{metric: coco/bbox_mAP}]"],
         r"hpo\.objectives: 'coco/bbox_mAP' is never reported by a classification job; choose one of val/acc1"),
        (["hpo.objectives=[{metric: val/acc1}, {metric: val/acc1, mode: min}]"], r"the same metric"),
        (["hpo.objectives=[{metric: val/acc1}, {metric: val/acc5}, {metric: val/loss}]"],
         r"hpo\.objectives: List should have at most 2 items"),
        (["hpo.sampler.type=bayes"], r"hpo\.sampler\.type: Input should be 'tpe', 'cmaes', 'random' or 'grid'"),
        (["hpo.scheduler.reduction_factor=1"], r"hpo\.scheduler\.reduction_factor: Input should be greater than 1"),
    ],
)
def test_bad_searches_give_one_line_naming_the_field(overrides, message):
    with pytest.raises(SpecError, match=message) as error:
        load_spec(TUNE, overrides)
    assert str(error.value).startswith(f"{TUNE}: ")
    assert "\n" not in str(error.value)


def test_a_typo_inside_a_dimension_is_an_unknown_key(tmp_path):
    text = TUNE.read_text().replace("{type: loguniform, low: 1.0e-4", "{type: loguniform, lo: 1.0e-4")
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=r"job\.yaml: hpo\.space\.schedule\.lr\.lo: unknown key; did you mean 'low'"):
        load_spec(path)


def test_overrides_set_a_whole_dimension_or_one_field_of_it():
    spec = load_spec(TUNE, ["hpo.space.schedule.lr.high=0.1", "hpo.space.schedule.lr.low=1.0e-3",
                            "hpo.space.model.lesa.num_heads={type: choice, values: [2, 4]}",
                            "hpo.space.model.lesa.fusion.values=[gate, none]", "hpo.num_samples=3"])
    lr = spec.hpo.space["schedule.lr"]
    assert (lr.type, lr.low, lr.high) == ("loguniform", 1.0e-3, 0.1)
    assert spec.hpo.space["model.lesa.num_heads"].values == [2, 4]
    assert spec.hpo.space["model.lesa.fusion"].values == ["gate", "none"]
    assert spec.hpo.num_samples == 3 and len(spec.hpo.space) == 5


def test_study_storage_passwords_never_reach_params_or_the_logged_spec():
    spec = load_spec(TUNE, ["hpo.storage=postgresql://optuna:s3cr3t@db.internal:5432/optuna"])
    assert spec.hpo.storage.endswith(":s3cr3t@db.internal:5432/optuna")  # the driver still gets the real URL
    flat = flatten_params(spec)
    assert flat["hpo.storage"] == "postgresql://optuna:***@db.internal:5432/optuna"
    assert flat["hpo.space.schedule.lr.type"] == "loguniform"
    assert redacted_spec(spec)["hpo"]["storage"] == "postgresql://optuna:***@db.internal:5432/optuna"
    assert "s3cr3t" not in json.dumps(flat) + json.dumps(redacted_spec(spec))


def test_validate_on_a_bad_search_exits_with_one_line(tmp_path):
    env = {"LESA_ORCH_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([CLI, "validate", str(TUNE), "--set", "hpo.space.model.lesa.unary_kernel.values=[1, 2]"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "quickstart_tune.yaml: hpo.space.model.lesa.unary_kernel=2: model.lesa: unary_kernel=2 must be odd" in \
        lines[0]


def test_the_imagenet_search_validates(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path))  # validate checks that the data root exists, with its layout
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    monkeypatch.delenv("LESA_STORAGE", raising=False)
    spec = service.validate(REPO / "jobs" / "tune_lesa_fusion.yaml")
    assert (spec.model.arch, spec.data.root, spec.data.img_size, spec.model.img_size) == (
        "lesa_resnet50", str(tmp_path), 160, 160)
    assert (spec.resources.num_workers, spec.resources.use_gpu, spec.schedule.epochs) == (4, True, 30)
    assert spec.storage.path == "s3://lesa-checkpoints"
    hpo = spec.hpo
    assert set(hpo.space) == {f"model.lesa.{option}" for option in (
        "fusion", "fusion_shrink", "unary_kernel", "unary_dilation", "num_heads", "qk_ratio", "sim_norm")} | {
        "schedule.lr"}
    assert hpo.space["model.lesa.unary_kernel"].grid_points() == [1, 3, 5, 7]
    assert [(o.metric, o.mode) for o in spec.objectives] == [("val/acc1", "max"), ("train/images_per_sec", "max")]
    assert (hpo.sampler.type, hpo.sampler.seed) == ("tpe", 0)
    assert (hpo.scheduler.type, hpo.scheduler.grace_period, hpo.scheduler.reduction_factor) == ("asha", 5, 3.0)
    assert (hpo.num_samples, hpo.max_concurrent_trials, hpo.storage) == (32, None, None)
