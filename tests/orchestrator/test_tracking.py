"""The MLflow side of a job: a resumed job reopens its run without the last attempt's error."""

from __future__ import annotations

from pathlib import Path

from orchestrator.spec import load_spec
from orchestrator.tracking import ERROR_TAG, JOB_ID_TAG, Tracker

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
