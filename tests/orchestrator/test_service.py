"""What the service layer does when a service is away: the job database, Ray and MLflow found unreachable at once,
the verbs that can carry on (reconciling, status) doing so and saying what they could not learn."""

from __future__ import annotations

import socket
import time

import pytest

from orchestrator import service
from orchestrator.service import (
    JOB_DATABASE,
    MLFLOW,
    RAY,
    Context,
    MlflowUnreachableError,
    OrchestratorError,
    ServiceUnreachableError,
    _with_connect_timeout,
    open_engine,
)
from orchestrator.settings import Settings
from orchestrator.store import JobState
from orchestrator.tracking import TrackingError


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once closed


def test_an_unreachable_job_database_is_one_error_naming_its_url_without_the_password():
    start = time.monotonic()
    with pytest.raises(ServiceUnreachableError) as caught:
        open_engine(f"postgresql://lesa:secret@127.0.0.1:{_closed_port()}/jobs")
    assert time.monotonic() - start < 5
    assert caught.value.service == JOB_DATABASE
    assert str(caught.value).startswith("job database at postgresql://lesa:***@127.0.0.1:")
    assert "secret" not in str(caught.value)


def test_postgresql_gives_up_connecting_after_a_few_seconds_unless_the_url_says_otherwise():
    assert _with_connect_timeout("postgresql://u:p@db/jobs") == "postgresql://u:p@db/jobs?connect_timeout=5"
    assert _with_connect_timeout("postgresql://u@db/jobs?connect_timeout=1") == "postgresql://u@db/jobs?connect_timeout=1"
    assert _with_connect_timeout("sqlite:////tmp/jobs.db") == "sqlite:////tmp/jobs.db"


def test_a_url_sqlalchemy_cannot_use_is_a_user_error():
    with pytest.raises(OrchestratorError, match=r"job database URL 'nosuchdb://x' is not usable") as caught:
        open_engine("nosuchdb://x")
    assert not isinstance(caught.value, ServiceUnreachableError)


def test_status_carries_on_without_ray_and_mlflow_and_says_what_it_could_not_learn(tmp_path):
    closed = f"http://127.0.0.1:{_closed_port()}"
    ctx = Context.open(Settings.from_env({"LESA_ORCH_HOME": str(tmp_path), "RAY_ADDRESS": closed,
                                          "MLFLOW_TRACKING_URI": closed}))
    ctx.store.create("job-1", name="job", task="classification", spec={})
    ctx.store.transition("job-1", JobState.SUBMITTED, ray_submission_id="job-1", mlflow_experiment="lesa/x/y")
    ctx.store.update("job-1", mlflow_run_id="0123")

    with pytest.raises(MlflowUnreachableError) as unreachable:
        ctx.tracker()
    assert isinstance(unreachable.value, TrackingError)  # so reconciling treats it as MLflow being away
    with pytest.raises(ServiceUnreachableError, match=rf"^Ray at {closed} is unreachable: Connection refused$"):
        ctx.ray_client()
    assert set(ctx.probes) == {RAY, MLFLOW}  # probed once for this poll

    job = service.report(ctx, service.get_job(ctx, "job-1"))
    assert job.record.state == "SUBMITTED" and job.stale
    causes = [warning.split(";")[0] for warning in job.warnings]
    assert causes == [f"{name} at {closed} is unreachable: Connection refused" for name in ("Ray", "MLflow")]
    listing = service.list_jobs(ctx, "submitted")
    assert [record.id for record in listing.records] == ["job-1"] and listing.stale == {"job-1"}
    with pytest.raises(OrchestratorError, match=r"'DONE' is no job state; choose one of PENDING, SUBMITTED"):
        service.list_jobs(ctx, "DONE")
