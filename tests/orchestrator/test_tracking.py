"""The MLflow side of a job: runs reopened on resume, UI links, registration without process-wide state."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import mlflow
import pytest
import torch

from orchestrator.spec import load_spec
from orchestrator.tracking import (
    _REQUEST_LIMITS,
    CANDIDATE_ALIAS,
    ERROR_TAG,
    JOB_ID_TAG,
    Tracker,
    TrackingError,
    bounded_requests,
)

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def test_a_resumed_job_reopens_its_run_without_the_last_attempts_error(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    spec = load_spec(JOBS / "quickstart_imagenet.yaml", [f"data.root={tmp_path / 'data'}"])
    run_id = tracker.start_job_run(spec, "job-1", submission_id="job-1")
    tracker.set_tags(run_id, {ERROR_TAG: "RuntimeError: disk full"})
    tracker.end_run(run_id, "FAILED")

    assert tracker.start_job_run(spec, "job-1", submission_id="job-1-attempt-2") == run_id
    run = tracker.client.get_run(run_id)
    assert run.info.status == "RUNNING" and ERROR_TAG not in run.data.tags
    assert run.data.tags[JOB_ID_TAG] == "job-1" and run.data.params["model.arch"] == "test_lesa_resnet"


def test_ui_links_point_at_the_mlflow_ui_of_a_server_only():
    assert Tracker("http://mlflow:5000/").ui_url("3", "abc") == "http://mlflow:5000/#/experiments/3/runs/abc"
    assert Tracker("http://mlflow:5000").ui_url("3") == "http://mlflow:5000/#/experiments/3"
    query = Tracker("https://mlflow.internal").ui_url("3", query={"searchFilter": "tags.a = 'b'"})
    assert query == "https://mlflow.internal/#/experiments/3?searchFilter=tags.a+%3D+%27b%27"
    assert Tracker("sqlite:///tmp/mlflow.db").ui_url("3", "abc") == ""


def test_registering_a_model_leaves_mlflows_process_wide_uris_as_they_were(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(None)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not mlflow.is_tracking_uri_set()  # constructing a Tracker sets nothing process-wide
    spec = load_spec(JOBS / "quickstart_imagenet.yaml", [f"data.root={tmp_path / 'data'}"])
    run_id = tracker.start_job_run(spec, "job-1", submission_id="job-1")

    version = tracker.register_model(run_id, torch.nn.Linear(2, 1), "lesa-test")

    assert version == "1"
    assert str(tracker.client.get_model_version_by_alias("lesa-test", CANDIDATE_ALIAS).version) == "1"
    assert not mlflow.is_tracking_uri_set()
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    model = tracker.load_logged_model(run_id, tracker.get_run(run_id).info.experiment_id, str(tmp_path / "dl"))
    assert isinstance(model, torch.nn.Linear)
    assert tracker.load_logged_model(run_id, "0", str(tmp_path / "dl2"), name="other") is None


def test_bounded_requests_give_up_on_a_server_that_never_answers_and_leave_the_environment_as_it_was():
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        tracker = Tracker(f"http://127.0.0.1:{silent.getsockname()[1]}")
        before = {name: os.environ.get(name) for name in _REQUEST_LIMITS}
        start = time.monotonic()
        with pytest.raises(TrackingError, match=r"MLflow at http://127.0.0.1:\d+: search experiments failed"), \
                bounded_requests(retries=0, timeout_s=1):
            tracker.check_api()
        assert time.monotonic() - start < 5
    assert {name: os.environ.get(name) for name in _REQUEST_LIMITS} == before
