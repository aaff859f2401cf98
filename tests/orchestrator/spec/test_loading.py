import json

import pytest
import yaml

from orchestrator.redaction import flatten_params
from orchestrator.spec import SpecError, apply_override, load_spec, parse_spec, spec_json_schema

MINIMAL = {
    "name": "quick",
    "task": "detection",
    "model": {"arch": "test_lesa_resnet", "lesa": {"sim_norm": "scaled"}},
    "data": {"root": "/data/coco", "format": "coco"},
    "schedule": {"epochs": 4, "batch_size_per_worker": 2, "lr": 0.01, "lr_reference_batch": 8,
                 "decay": "step", "milestones": [3]},
    "resources": {"num_workers": 2},
}


def _write(tmp_path, spec, name="job.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec) if not isinstance(spec, str) else spec)
    return path


def test_a_valid_spec_loads_with_defaults_and_derived_values(tmp_path):
    spec = load_spec(_write(tmp_path, MINIMAL))
    assert spec.model.lesa.sim_norm == "scaled" and spec.model.lesa.fusion == "gate"
    assert spec.primary_metric == "coco/bbox_mAP"
    assert spec.experiment_name == "lesa/coco/detection"
    assert spec.registered_model_name == "lesa-detection-test_lesa_resnet"


def test_overrides_set_nested_fields_with_yaml_values(tmp_path):
    spec = load_spec(_write(tmp_path, MINIMAL), ["schedule.epochs=6", "model.lesa.fusion=add",
                                                 "tracking.tags.owner=ana", "schedule.milestones=[4, 5]"])
    assert spec.schedule.epochs == 6 and spec.schedule.milestones == (4, 5)
    assert spec.model.lesa.fusion == "add"
    assert spec.tracking.tags == {"owner": "ana"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.epoch=3", r"no field 'epoch' in schedule; did you mean 'epochs'\?"),
        ("modle.arch=x", r"no field 'modle' in the job spec; did you mean 'model'\?"),
        ("schedule.epochs", r"expected KEY=VALUE"),
        ("schedule.epochs.x=1", r"schedule\.epochs is a value, not a section"),
    ],
)
def test_bad_override_paths_name_the_field(tmp_path, override, message):
    with pytest.raises(SpecError, match=message):
        load_spec(_write(tmp_path, MINIMAL), [override])


def test_env_interpolation_with_defaults(tmp_path, monkeypatch):
    spec = dict(MINIMAL, data={"root": "${LESA_TEST_ROOT}/coco", "format": "coco"},
                tracking={"experiment": "${LESA_TEST_EXP:-fallback}"})
    monkeypatch.setenv("LESA_TEST_ROOT", "/mnt/shared")
    loaded = load_spec(_write(tmp_path, spec))
    assert loaded.data.root == "/mnt/shared/coco" and loaded.tracking.experiment == "fallback"
    monkeypatch.delenv("LESA_TEST_ROOT")
    with pytest.raises(SpecError, match=r"job\.yaml: data\.root: environment variable LESA_TEST_ROOT is not set"):
        load_spec(_write(tmp_path, spec))


def test_references_to_secrets_stay_as_written_where_the_spec_is_loaded(tmp_path, monkeypatch):
    storage = "postgresql://${LESA_TEST_DB_USER}:${LESA_TEST_DB_PASSWORD}@db.internal/optuna"
    spec = dict(MINIMAL, model={"arch": "test_lesa_resnet", "pretrained": "${LESA_TEST_CKPT}"},
                tracking={"tags": {"api_token": "${LESA_TEST_TOKEN}", "owner": "${LESA_TEST_OWNER}"}},
                storage={"path": storage})
    monkeypatch.setenv("LESA_TEST_TOKEN", "tok-123")  # set here too: still not expanded here
    monkeypatch.setenv("LESA_TEST_OWNER", "ana")
    monkeypatch.setenv("LESA_TEST_CKPT", "/ckpt/r50.pth")
    loaded = load_spec(_write(tmp_path, spec), ["tracking.tags.db_password=${LESA_TEST_UNSET}"])
    assert loaded.tracking.tags == {"api_token": "${LESA_TEST_TOKEN}", "owner": "ana",
                                    "db_password": "${LESA_TEST_UNSET}"}  # unset here: the cluster's to set
    assert loaded.storage.path == storage  # a URL whose password is a reference is the cluster's to expand, whole
    assert loaded.model.pretrained == "/ckpt/r50.pth"

    cluster = {"LESA_TEST_TOKEN": "cluster-token", "LESA_TEST_UNSET": "pw1", "LESA_TEST_DB_USER": "optuna",
               "LESA_TEST_DB_PASSWORD": "pw2"}
    for name, value in cluster.items():
        monkeypatch.setenv(name, value)
    driver = parse_spec(loaded.model_dump(mode="json"), source="job j1", expand_secrets=True)
    assert driver.tracking.tags == {"api_token": "cluster-token", "owner": "ana", "db_password": "pw1"}
    assert driver.storage.path == "postgresql://optuna:pw2@db.internal/optuna"
    monkeypatch.delenv("LESA_TEST_TOKEN")
    with pytest.raises(SpecError, match=r"^job j1: tracking\.tags\.api_token: environment variable LESA_TEST_TOKEN "
                                        "is not set and has no default$"):
        parse_spec(loaded.model_dump(mode="json"), source="job j1", expand_secrets=True)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["schedule"].update(epoch=3), r"job\.yaml: schedule\.epoch: unknown key; did you mean 'epochs'\?"),
        (lambda s: s.update(trainer={}), r"job\.yaml: trainer: unknown key"),
        (lambda s: s["schedule"].update(epochs="many"), r"schedule\.epochs: Input should be a valid integer"),
        (lambda s: s["model"]["lesa"].update(fusion="mean"), r"model\.lesa\.fusion: Input should be 'gate'"),
        (lambda s: s["model"]["lesa"].update(unary_kernel=4), r"model\.lesa: unary_kernel=4 must be odd"),
        (lambda s: s["model"]["lesa"].update(pos_embed="flat1d"), r"pos_embed must be 'rel2d' for detection"),
        (lambda s: s["model"].update(detector={"mask_head_channels": 64}),
         r"model\.detector: mask_head_channels sizes the light heads; set light_heads: true"),
        (lambda s: s.update(eval={"metric": "val/acc1"}), r"eval\.metric='val/acc1' is never reported"),
        (lambda s: s["schedule"].update(milestones=[9]), r"milestones \[9\] are outside 1\.\.4"),
        (lambda s: s["data"].update(format="imagenet"), r"data\.format='imagenet' does not fit task='detection'"),
        (lambda s: s.pop("data"), r"job\.yaml: data: Field required"),
    ],
)
def test_invalid_specs_give_one_line_naming_file_and_field(tmp_path, mutate, message):
    spec = json.loads(json.dumps(MINIMAL))
    mutate(spec)
    with pytest.raises(SpecError, match=message) as error:
        load_spec(_write(tmp_path, spec))
    assert "\n" not in str(error.value)


def test_invalid_yaml_and_non_mappings_and_missing_files(tmp_path):
    with pytest.raises(SpecError, match=r"job\.yaml: invalid YAML at line 3"):
        load_spec(_write(tmp_path, "name: x\ntask: [detection\n"))
    with pytest.raises(SpecError, match="must be a mapping of sections, got list"):
        load_spec(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(SpecError, match="no such job file"):
        load_spec(tmp_path / "nope.yaml")


def test_flatten_params_uses_dotted_keys_and_redacts_secrets():
    spec = parse_spec(dict(MINIMAL, tracking={"tags": {"owner": "ana", "aws_secret_access_key": "hunter2",
                                                         "api_token": "t0k"}}))
    flat = flatten_params(spec)
    assert flat["model.lesa.fusion"] == "gate" and flat["schedule.epochs"] == "4"
    assert flat["tracking.tags.owner"] == "ana"
    assert flat["tracking.tags.aws_secret_access_key"] == "***" and flat["tracking.tags.api_token"] == "***"
    assert "hunter2" not in json.dumps(flat)


def test_apply_override_refuses_values_inside_plain_mappings():
    with pytest.raises(SpecError, match="holds plain values"):
        apply_override({}, "tracking.tags.a.b=1")


def test_json_schema_lists_the_sections():
    schema = spec_json_schema()
    assert {"name", "task", "model", "data", "schedule"} <= set(schema["properties"])
    assert set(schema["required"]) == {"name", "task", "data", "schedule"}
