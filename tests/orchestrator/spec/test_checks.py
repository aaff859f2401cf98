"""The checks that consult lesa_core: the arch is registered, the model builds on the meta device as the workers
build it, the data options fit, and every value a search probes passes the same checks; each failure is one line
naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.spec import SearchDimension, SpecError, load_spec
from orchestrator.spec.search import probe_values

JOBS = Path(__file__).resolve().parents[3] / "jobs"
IMAGENET = JOBS / "quickstart_imagenet.yaml"
TUNE = JOBS / "quickstart_tune.yaml"
COCO = JOBS / "quickstart_coco.yaml"
FLAT1D = "model.lesa.pos_embed=flat1d"


@pytest.mark.parametrize("job", sorted(JOBS.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_job_passes_the_checks(job, tmp_path, monkeypatch):
    for name in ("IMAGENET_ROOT", "COCO_ROOT", "LESA_IMAGENET_CHECKPOINT"):
        monkeypatch.setenv(name, str(tmp_path / "absent"))  # not on this machine: only the cluster reads it
    spec = load_spec(job)
    assert spec.eval.metric is not None


@pytest.mark.parametrize(
    ("job", "overrides", "message"),
    [
        # the arch
        (IMAGENET, ["model.arch=lesa_resnet5O"],
         r"model\.arch='lesa_resnet5O' is not a registered model; did you mean 'lesa_resnet50'\?"),
        (IMAGENET, ["model.arch=vit_base"], r"model\.arch='vit_base' is not a registered model; choose one of "),
        # what only building the model tells
        (IMAGENET, ["model.lesa.num_heads=3"], r"model: model\.lesa\.num_heads=3 does not build test_lesa_resnet: "
         r"LESA option num_heads=3 must divide the channels \(in 32, out 32\)"),
        (IMAGENET, ["model.lesa.fusion_shrink=100"],
         r"model: model\.lesa\.fusion_shrink=100\.0 does not build test_lesa_resnet: .*leaves no hidden channels"),
        (COCO, ["model.lesa.num_heads=5"], r"model: model\.lesa\.num_heads=5 does not build test_lesa_resnet"),
        (IMAGENET, [FLAT1D, "data.img_size=96"], r"model: test_lesa_resnet built for model\.img_size=64 does not run "
         r"on data\.img_size=96 crops: pos_embed='flat1d' was built for a 4x4 feature map and got 6x6"),
        # data and detector options
        (IMAGENET, ["data.crop_scale=[1.0, 0.2]"], r"data\.crop_scale: \[1, 0\.2\] must be ordered \[low, high\]"),
        (IMAGENET, ["data.crop_scale=[0, 1]"], r"data\.crop_scale: \[0, 1\]: both ends are fractions of the image"),
        (IMAGENET, ["data.crop_scale=[0.5, 2]"], r"data\.crop_scale: \[0\.5, 2\]: both ends are fractions"),
        (IMAGENET, ["data.img_size=0"], r"data\.img_size: Input should be greater than or equal to 16"),
        (IMAGENET, ["data.val_split=val"], r"data\.val_split names a COCO split; a classification job reads"),
        (COCO, ["model.detector.min_size=256"], r"model\.detector: min_size=256 exceeds max_size=128"),
        # every probed value of a search
        (TUNE, ["hpo.space.model.lesa.num_heads={type: choice, values: [3, 8]}"],
         r"hpo\.space\.model\.lesa\.num_heads=3: model: model\.lesa\.num_heads=3 does not build test_lesa_resnet"),
        (TUNE, ["hpo.space.model.lesa.num_heads={type: int, low: 1, high: 8}"],  # ends divide, the middle does not
         r"hpo\.space\.model\.lesa\.num_heads=5: model: model\.lesa\.num_heads=5 does not build"),
        (TUNE, ["hpo.space.model.arch={type: choice, values: [test_lesa_resnet, lesa_resnt50]}"],
         r"hpo\.space\.model\.arch=lesa_resnt50: model\.arch='lesa_resnt50' is not a registered model; did you mean "
         r"'lesa_resnet50'\?"),
        (TUNE, [FLAT1D, "hpo.space.data.img_size={type: choice, values: [64, 96]}"],
         r"hpo\.space\.data\.img_size=96: model: test_lesa_resnet built for model\.img_size=64 does not run on "
         r"data\.img_size=96 crops"),
        (TUNE, [FLAT1D, "hpo.space.model.img_size={type: int, low: 32, high: 64, q: 32}"],
         r"hpo\.space\.model\.img_size=32: model: .* built for model\.img_size=32 does not run on data\.img_size=64"),
        (TUNE, ["hpo.space.model.lesa.pos_embed={type: choice, values: [rel2d, flat1d]}", "data.img_size=96"],
         r"hpo\.space\.model\.lesa\.pos_embed=flat1d: model: .* does not run on data\.img_size=96 crops"),
    ],
)
def test_what_cannot_run_is_one_line_naming_the_field(job, overrides, message):
    with pytest.raises(SpecError, match=message) as error:
        load_spec(job, overrides)
    assert str(error.value).startswith(f"{job}: ")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("job", "folders", "missing"),
    [
        (IMAGENET, ["train/n01"], "val"),
        (COCO, ["annotations", "train2017", "val2017"], "annotations/instances_train2017.json"),
    ],
)
def test_a_local_data_root_needs_the_task_layout(tmp_path, job, folders, missing):
    for folder in folders:
        (tmp_path / folder).mkdir(parents=True)
    with pytest.raises(SpecError, match=rf"data\.root: {tmp_path} has no {missing}"):
        load_spec(job, [f"data.root={tmp_path}"])


def test_a_local_data_root_with_the_layout_passes(tmp_path):
    for folder in ("annotations", "train2017", "val2017"):
        (tmp_path / folder).mkdir()
    for split in ("train", "val"):
        (tmp_path / "annotations" / f"instances_{split}2017.json").write_text("{}")
    assert load_spec(COCO, [f"data.root={tmp_path}"]).data.root == str(tmp_path)


@pytest.mark.parametrize(
    ("dimension", "probes"),
    [
        ({"type": "int", "low": 1, "high": 7, "q": 2}, [1, 3, 5, 7]),
        ({"type": "int", "low": 1, "high": 8}, [1, 2, 5, 8]),
        ({"type": "quantized", "low": 0, "high": 1, "q": 0.25}, [0, 0.25, 0.5, 1]),
        ({"type": "uniform", "low": 0, "high": 1}, [0, 0.381966, 0.618034, 1]),
        ({"type": "loguniform", "low": 1e-4, "high": 1e-2}, [1e-4, 10 ** -3.236068, 10 ** -2.763932, 1e-2]),
    ],
)
def test_a_search_probes_every_choice_and_both_ends_and_inside_points_of_a_range(dimension, probes):
    assert probe_values(SearchDimension(**dimension)) == pytest.approx(probes)
    assert probe_values(SearchDimension(type="choice", values=["gate", "add", 4])) == ["gate", "add", 4]


def test_a_trial_re_reading_its_checked_spec_imports_no_lesa_core():
    probe = (f"import sys, yaml; from orchestrator.spec import parse_spec; "
             f"parse_spec(yaml.safe_load(open({str(TUNE)!r})), checked=True); "
             f"print(','.join(m for m in ('lesa_core', 'timm', 'torch') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""
