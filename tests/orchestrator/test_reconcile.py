"""Reconciling job rows with Ray and MLflow: a fake Ray Jobs client, the real job store on a throwaway SQLite file
and a real MLflow backend store (SQLite) with a real registered model; MLflow "down" is a server URI nothing
listens on."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from orchestrator.ray_backend.jobs import RayJobInfo
from orchestrator.reconcile import Reconciler
from orchestrator.store import JobState, JobStore, make_engine, upgrade
from orchestrator.tracking import ERROR_TAG, JOB_ID_TAG, PARENT_RUN_TAG, Tracker
from tests.conftest import free_port

EXPERIMENT = "lesa/reconcile/classification"
MODEL = "lesa-classification-test_lesa_resnet"
RAY_FAILURE = ("Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
               "Traceback (most recent call last):\n  File \"entry.py\", line 1\n"
               "RuntimeError: worker ran out of disk\n")


@dataclass
class FakeRayJobs:
    """Ray's ``JobSubmissionClient`` as reconciling uses it: the status and message of each submission."""

    jobs: dict[str, tuple[str, str]] = field(default_factory=dict)
    reachable: bool = True
    calls: int = 0

    def set(self, submission_id: str, status: str, message: str = "") -> None:
        self.jobs[submission_id] = (status, message)

    def get_job_info(self, submission_id: str) -> SimpleNamespace:
        self.calls += 1
        if not self.reachable:
            raise ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:8265")
        status, message = self.jobs[submission_id]
        return SimpleNamespace(status=status, message=message)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")


@pytest.fixture
def store(tmp_path) -> JobStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    upgrade(engine)
    yield JobStore(engine)
    engine.dispose()


@pytest.fixture
def ray() -> FakeRayJobs:
    return FakeRayJobs()


@pytest.fixture
def reconciler(store, ray, tracker) -> Reconciler:
    return Reconciler(store, lambda: ray, lambda: tracker)


def _submitted(store: JobStore, ray: FakeRayJobs, job_id: str) -> None:
    store.create(job_id, name="reconcile", task="classification", spec={})
    store.transition(job_id, JobState.SUBMITTED, ray_submission_id=job_id, mlflow_experiment=EXPERIMENT)
    ray.set(job_id, "PENDING")


def _driver_run(tracker: Tracker, job_id: str) -> str:
    """The job's run as its driver opens it."""
    run = tracker.client.create_run(tracker.experiment_id(EXPERIMENT), tags={JOB_ID_TAG: job_id})
    return run.info.run_id


def test_a_job_goes_submitted_running_succeeded_with_its_run_and_registered_version(store, ray, reconciler, tracker):
    _submitted(store, ray, "job-ok")
    assert reconciler.refresh("job-ok").state == JobState.SUBMITTED
    run_id = _driver_run(tracker, "job-ok")
    ray.set("job-ok", "RUNNING")
    record = reconciler.refresh("job-ok")
    assert (record.state, record.mlflow_run_id) == (JobState.RUNNING, run_id)

    # the driver registers the best model, tags the run with it and closes the run
    version = tracker.register_model(run_id, torch.nn.Linear(2, 1), MODEL)
    tracker.set_tags(run_id, {"lesa.registered_model": MODEL, "lesa.registered_version": version})
    tracker.end_run(run_id, "FINISHED")
    ray.set("job-ok", "SUCCEEDED")
    record = reconciler.refresh("job-ok")

    assert record.state == JobState.SUCCEEDED and record.error is None and record.ended_at is not None
    assert (record.registered_model, record.registered_version) == (MODEL, version)
    assert str(tracker.client.get_model_version_by_alias(MODEL, "candidate").version) == version
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    assert [e.to_state for e in store.events("job-ok")] == ["PENDING", "SUBMITTED", "RUNNING", "SUCCEEDED"]


def test_a_failed_job_keeps_the_drivers_one_line_error_and_its_runs_are_closed(store, ray, reconciler, tracker):
    _submitted(store, ray, "job-failed")
    run_id = _driver_run(tracker, "job-failed")
    trial = tracker.client.create_run(tracker.experiment_id(EXPERIMENT), tags={PARENT_RUN_TAG: run_id})
    tracker.set_tags(run_id, {ERROR_TAG: "RuntimeError: 16 unreadable images in a row"})
    ray.set("job-failed", "FAILED", RAY_FAILURE)

    record = reconciler.refresh("job-failed")

    assert record.state == JobState.FAILED and record.error == "RuntimeError: 16 unreadable images in a row"
    assert [e.to_state for e in store.events("job-failed")][-2:] == ["RUNNING", "FAILED"]
    assert tracker.client.get_run(run_id).info.status == "FAILED"  # its driver died before closing it
    assert tracker.client.get_run(trial.info.run_id).info.status == "FAILED"


def test_a_driver_that_left_no_error_fails_with_rays_message_in_one_line(store, ray, reconciler):
    _submitted(store, ray, "job-crashed")
    ray.set("job-crashed", "FAILED", RAY_FAILURE)

    record = reconciler.refresh("job-crashed")

    assert record.state == JobState.FAILED
    assert record.error == ("Job entrypoint command failed with exit code 1; "
                            "last log line: RuntimeError: worker ran out of disk")


def test_a_stopped_job_is_cancelled_and_its_run_killed(store, ray, reconciler, tracker):
    _submitted(store, ray, "job-stopped")
    run_id = _driver_run(tracker, "job-stopped")
    ray.set("job-stopped", "STOPPED", "Job was intentionally stopped.")

    record = reconciler.refresh("job-stopped")

    assert record.state == JobState.CANCELLED and record.error == "Job was intentionally stopped."
    assert [e.to_state for e in store.events("job-stopped")][-2:] == ["SUBMITTED", "CANCELLED"]  # never RUNNING
    assert tracker.client.get_run(run_id).info.status == "KILLED"


def test_while_ray_is_unreachable_the_row_stays_as_it_is(store, ray, reconciler):
    _submitted(store, ray, "job-offline")
    ray.set("job-offline", "RUNNING")
    assert reconciler.refresh("job-offline").state == JobState.RUNNING
    ray.set("job-offline", "SUCCEEDED")
    ray.reachable = False
    events = store.events("job-offline")

    assert reconciler.refresh("job-offline") == store.get("job-offline")
    assert store.get("job-offline").state == JobState.RUNNING and store.events("job-offline") == events

    ray.reachable = True
    assert reconciler.refresh("job-offline").state == JobState.SUCCEEDED  # caught up on the next call


def test_reconciling_twice_is_reconciling_once(store, ray, reconciler, tracker):
    _submitted(store, ray, "job-twice")
    run_id = _driver_run(tracker, "job-twice")
    ray.set("job-twice", "FAILED", RAY_FAILURE)
    first = reconciler.refresh("job-twice")
    events = store.events("job-twice")
    ended = tracker.client.get_run(run_id).info.end_time
    calls = ray.calls

    assert reconciler.refresh("job-twice") == first
    assert ray.calls == calls  # a final row does not ask Ray again
    info = RayJobInfo("job-twice", "FAILED", "a later, different message")
    assert reconciler.finalize(first, info) == first  # finalizing a final row changes nothing
    assert store.events("job-twice") == events
    assert tracker.client.get_run(run_id).info.end_time == ended


@dataclass
class Mlflow:
    """The tracker a reconciler gets: the real one, or (while ``down``) one whose server does not answer."""

    up: Tracker
    down: Tracker
    is_down: bool = False

    def __call__(self) -> Tracker:
        return self.down if self.is_down else self.up


@pytest.fixture
def mlflow_outage(store, ray, tracker, monkeypatch) -> tuple[Mlflow, Reconciler]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a dead server fails at once, not in minutes
    mlflow = Mlflow(tracker, Tracker(f"http://127.0.0.1:{free_port()}"))
    return mlflow, Reconciler(store, lambda: ray, mlflow)


def test_a_job_that_succeeded_while_mlflow_was_down_is_finalized_once_it_is_back(store, ray, tracker, mlflow_outage):
    mlflow, reconciler = mlflow_outage
    _submitted(store, ray, "job-late")
    run_id = _driver_run(tracker, "job-late")
    ray.set("job-late", "RUNNING")
    assert reconciler.refresh("job-late").mlflow_run_id == run_id
    # the driver registered its model and tagged the run; its last call, closing the run, never reached MLflow
    tracker.set_tags(run_id, {"lesa.registered_model": MODEL, "lesa.registered_version": "7"})
    mlflow.is_down = True
    ray.set("job-late", "SUCCEEDED")

    ended = reconciler.refresh("job-late")
    assert ended.state == JobState.SUCCEEDED and ended.ended_at is not None
    assert ended.finalized_at is None and ended.registered_version is None and not ended.is_settled
    calls = ray.calls
    assert reconciler.refresh("job-late") == ended  # still down: nothing changes, and Ray is not asked again
    assert ray.calls == calls and tracker.client.get_run(run_id).info.status == "RUNNING"

    mlflow.is_down = False
    finalized = reconciler.refresh("job-late")
    assert finalized.is_settled and (finalized.registered_model, finalized.registered_version) == (MODEL, "7")
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    assert reconciler.refresh("job-late") == finalized and ray.calls == calls
    assert [e.to_state for e in store.events("job-late")] == ["PENDING", "SUBMITTED", "RUNNING", "SUCCEEDED"]


def test_a_job_that_failed_while_mlflow_was_down_gets_its_run_its_error_and_closed_runs_later(
    store, ray, tracker, mlflow_outage
):
    mlflow, reconciler = mlflow_outage
    _submitted(store, ray, "job-dark")
    run_id = _driver_run(tracker, "job-dark")  # opened, but never linked: MLflow went down before the next poll
    trial = tracker.client.create_run(tracker.experiment_id(EXPERIMENT), tags={PARENT_RUN_TAG: run_id})
    tracker.set_tags(run_id, {ERROR_TAG: "RuntimeError: 16 unreadable images in a row"})
    mlflow.is_down = True
    ray.set("job-dark", "FAILED", RAY_FAILURE)

    failed = reconciler.refresh("job-dark")
    assert failed.state == JobState.FAILED and failed.finalized_at is None and failed.mlflow_run_id is None
    assert failed.error.startswith("Job entrypoint command failed with exit code 1")

    mlflow.is_down = False
    finalized = reconciler.refresh("job-dark")
    assert finalized.is_settled and finalized.mlflow_run_id == run_id
    assert finalized.error == "RuntimeError: 16 unreadable images in a row"
    assert tracker.client.get_run(run_id).info.status == "FAILED"
    assert tracker.client.get_run(trial.info.run_id).info.status == "FAILED"
