"""Where lesa-orch keeps things on the embedded default and on a cluster."""

from __future__ import annotations

import socket

import pytest

from orchestrator.service import _resolve_spec, _storage_check
from orchestrator.settings import Settings
from orchestrator.spec import SpecError, load_spec


def test_embedded_default_keeps_everything_under_home(tmp_path):
    settings = Settings.from_env({"LESA_ORCH_HOME": str(tmp_path)})
    assert settings.embedded_ray and settings.embedded_mlflow
    assert settings.database_url == f"sqlite:///{tmp_path / 'jobs.db'}"
    assert settings.optuna_url == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert settings.default_storage == str(tmp_path / "ray_results")
    assert settings.cluster_mlflow_uri == settings.mlflow_uri == "http://127.0.0.1:5000"


def test_a_cluster_has_no_local_storage_default(tmp_path):
    env = {"LESA_ORCH_HOME": str(tmp_path), "RAY_ADDRESS": "http://head:8265", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
           "LESA_ORCH_CLUSTER_MLFLOW_URI": "http://mlflow:5000"}
    settings = Settings.from_env(env)
    assert settings.default_storage is None and not settings.embedded_ray
    assert settings.cluster_mlflow_uri == "http://mlflow:5000"
    spec = load_spec("jobs/quickstart_imagenet.yaml")
    with pytest.raises(SpecError, match=r"^job.yaml: storage.path: unset, and the cluster at http://head:8265"):
        _resolve_spec(spec, settings, "job.yaml")
    assert not _storage_check(settings.default_storage).ok

    shared = Settings.from_env({**env, "LESA_ORCH_STORAGE": "s3://lesa-checkpoints"})
    assert _resolve_spec(spec, shared, "job.yaml").storage.path == "s3://lesa-checkpoints"


def test_local_storage_must_be_writable(tmp_path):
    assert _storage_check(str(tmp_path / "ray_results")).ok
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    check = _storage_check(str(blocked / "ray_results"))
    assert not check.ok and str(blocked) in check.detail


def test_object_storage_is_probed_and_an_unknown_scheme_left_to_the_cluster(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    check = _storage_check("s3://lesa-checkpoints/jobs")
    assert not check.ok and check.service and "s3://lesa-checkpoints/jobs: unreachable" in check.detail
    elsewhere = _storage_check("gs://lesa-checkpoints")
    assert elsewhere.ok and "not checked from here" in elsewhere.detail
