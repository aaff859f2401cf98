"""JobStore on a real SQLite file: lifecycle, history, errors, snapshots and sharing between instances."""

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from orchestrator.store import (
    InvalidTransitionError,
    JobRecord,
    JobState,
    JobStore,
    UnknownJobError,
    make_engine,
    upgrade,
)
from orchestrator.store.models import JobEvent

SPEC = {"name": "det", "task": "detection", "model": {"arch": "lesa_resnet50"}, "schedule": {"epochs": 2}}


def _create(store: JobStore, job_id: str = "job-1", **kwargs: object) -> JobRecord:
    return store.create(job_id, name="det", task="detection", spec=SPEC, **kwargs)


def _assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.utcoffset() == timedelta(0)


def test_create_then_get_returns_a_pending_snapshot(store: JobStore) -> None:
    created = _create(store, spec_path="jobs/det.yaml", ray_address="http://127.0.0.1:8265")
    job = store.get("job-1")
    assert job == created
    assert job.state is JobState.PENDING
    assert (job.name, job.task, job.spec, job.attempts) == ("det", "detection", SPEC, 1)
    assert (job.spec_path, job.ray_address) == ("jobs/det.yaml", "http://127.0.0.1:8265")
    assert job.started_at is job.ended_at is job.error is None
    _assert_utc(job.created_at)
    assert job.updated_at == job.created_at
    assert abs(datetime.now(UTC) - job.created_at) < timedelta(minutes=1)


def test_create_refuses_a_taken_id_and_an_unknown_task(store: JobStore) -> None:
    _create(store)
    with pytest.raises(ValueError, match="already exists"):
        _create(store)
    with pytest.raises(ValueError, match="task must be one of classification, detection"):
        store.create("job-2", name="x", task="segmentation", spec={})


def test_list_is_newest_first_and_filters_by_state_and_limit(store: JobStore) -> None:
    for job_id in ("a", "b", "c"):
        _create(store, job_id)
    store.transition("b", JobState.SUBMITTED)
    assert [job.id for job in store.list()] == ["c", "b", "a"]
    assert [job.id for job in store.list(limit=2)] == ["c", "b"]
    assert [job.id for job in store.list(state="PENDING")] == ["c", "a"]
    assert [job.id for job in store.list(state=JobState.SUBMITTED)] == ["b"]
    assert store.list(state=JobState.FAILED) == []


def test_successful_lifecycle_sets_times_fields_and_history(store: JobStore) -> None:
    _create(store)
    submitted = store.transition("job-1", "SUBMITTED", ray_submission_id="job-1", message="submitted to Ray")
    assert submitted.ray_submission_id == "job-1"
    assert submitted.started_at is None
    running = store.transition("job-1", JobState.RUNNING)
    _assert_utc(running.started_at)
    done = store.transition("job-1", JobState.SUCCEEDED, registered_model="lesa-detection-lesa_resnet50")
    assert done.state is JobState.SUCCEEDED
    assert done.started_at == running.started_at
    _assert_utc(done.ended_at)
    assert done.ended_at >= done.started_at
    assert done.registered_model == "lesa-detection-lesa_resnet50"
    assert store.get("job-1") == done

    events = store.events("job-1")
    assert [(e.from_state, e.to_state) for e in events] == [
        (None, JobState.PENDING),
        (JobState.PENDING, JobState.SUBMITTED),
        (JobState.SUBMITTED, JobState.RUNNING),
        (JobState.RUNNING, JobState.SUCCEEDED),
    ]
    assert [e.message for e in events[:2]] == ["created", "submitted to Ray"]
    assert events[-1].at == done.ended_at
    for event in events:
        _assert_utc(event.at)


def test_failure_keeps_its_error_text_and_records_it_in_history(store: JobStore) -> None:
    _create(store)
    store.transition("job-1", JobState.SUBMITTED)
    failed = store.transition("job-1", JobState.FAILED, error="CUDA out of memory")
    assert failed.state is JobState.FAILED
    assert store.get("job-1").error == "CUDA out of memory"
    assert store.events("job-1")[-1].message == "CUDA out of memory"


def test_times_reported_by_ray_are_kept_and_stored_in_utc(store: JobStore) -> None:
    _create(store)
    store.transition("job-1", JobState.SUBMITTED)
    started = datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    done = store.transition("job-1", JobState.SUCCEEDED, started_at=started)
    assert done.started_at == started
    _assert_utc(done.started_at)
    _assert_utc(store.get("job-1").started_at)
    assert store.get("job-1").started_at == datetime(2025, 3, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("path", "refused", "expected"),
    [
        ([], JobState.RUNNING, "a PENDING job can become SUBMITTED, FAILED or CANCELLED"),
        ([JobState.SUBMITTED, JobState.RUNNING], JobState.PENDING,
         "a RUNNING job can become SUCCEEDED, FAILED or CANCELLED"),
        ([JobState.CANCELLED], JobState.RUNNING, "CANCELLED is final (resume reopens a finished job)"),
        ([JobState.FAILED], JobState.PENDING, "a finished job goes back to PENDING only through resume"),
    ],
)
def test_invalid_transitions_are_refused_with_the_rule_and_change_nothing(
    store: JobStore, path: list[JobState], refused: JobState, expected: str
) -> None:
    _create(store)
    for state in path:
        store.transition("job-1", state)
    before = store.get("job-1")
    with pytest.raises(InvalidTransitionError) as raised:
        store.transition("job-1", refused)
    assert str(raised.value) == f"job 'job-1' is {before.state} and cannot become {refused}; {expected}"
    assert (raised.value.from_state, raised.value.to_state) == (before.state, refused)
    assert store.get("job-1") == before
    assert len(store.events("job-1")) == len(path) + 1


def test_transition_and_update_reject_unknown_states_and_fields(store: JobStore) -> None:
    _create(store)
    with pytest.raises(ValueError, match="'DONE' is not a valid JobState"):
        store.transition("job-1", "DONE")
    with pytest.raises(TypeError, match="cannot set attempts, state; settable fields: "):
        store.update("job-1", state="RUNNING", attempts=5)
    with pytest.raises(TypeError, match="cannot set error"):
        store.update("job-1", error="x")
    with pytest.raises(TypeError, match="cannot set attempts"):
        store.transition("job-1", JobState.SUBMITTED, attempts=3)
    assert store.get("job-1").state is JobState.PENDING


def test_update_sets_tracking_fields_and_refuses_naive_datetimes(store: JobStore) -> None:
    created = _create(store)
    updated = store.update("job-1", mlflow_experiment="lesa/coco/detection", mlflow_run_id="abc123",
                           registered_model="lesa-detection-lesa_resnet50", registered_version="3")
    assert store.get("job-1") == updated
    assert (updated.mlflow_run_id, updated.registered_version) == ("abc123", "3")
    assert updated.updated_at > created.updated_at
    assert updated.state is JobState.PENDING
    with pytest.raises(ValueError, match="naive datetime"):
        store.update("job-1", started_at=datetime(2025, 1, 1))


def test_unknown_id_is_a_key_error_with_a_one_line_message_and_suggestions(store: JobStore) -> None:
    with pytest.raises(UnknownJobError) as raised:
        store.get("nope")
    assert str(raised.value) == "no job with id 'nope'"
    for job_id in ("det-20250301-a1", "det-20250301-b2", "cls-20250301-c3"):
        _create(store, job_id)
    with pytest.raises(KeyError) as by_prefix:
        store.get("det-2025")
    assert str(by_prefix.value) == "no job with id 'det-2025'; did you mean 'det-20250301-a1' or 'det-20250301-b2'?"
    with pytest.raises(LookupError) as by_likeness:
        store.get("cls-20250310-c3")
    assert str(by_likeness.value) == "no job with id 'cls-20250310-c3'; did you mean 'cls-20250301-c3'?"
    assert by_likeness.value.suggestions == ("cls-20250301-c3",)


@pytest.mark.parametrize("call", [
    lambda store: store.events("ghost"),
    lambda store: store.update("ghost", mlflow_run_id="x"),
    lambda store: store.transition("ghost", JobState.SUBMITTED),
    lambda store: store.reopen_for_resume("ghost"),
    lambda store: store.delete("ghost"),
])
def test_every_method_reports_an_unknown_id(store: JobStore, call: Callable[[JobStore], object]) -> None:
    with pytest.raises(UnknownJobError, match="no job with id 'ghost'"):
        call(store)


def test_resume_reopens_a_finished_job_for_another_attempt(store: JobStore) -> None:
    _create(store)
    store.transition("job-1", JobState.SUBMITTED)
    first_start = store.transition("job-1", JobState.RUNNING).started_at
    store.transition("job-1", JobState.FAILED, error="node died")
    reopened = store.reopen_for_resume("job-1")
    assert reopened.state is JobState.PENDING
    assert reopened.attempts == 2
    assert reopened.error is reopened.ended_at is None
    assert reopened.started_at == first_start
    last = store.events("job-1")[-1]
    assert (last.from_state, last.to_state, last.message) == (JobState.FAILED, JobState.PENDING,
                                                               "reopened for attempt 2")
    store.transition("job-1", JobState.SUBMITTED)
    store.transition("job-1", JobState.RUNNING)
    assert store.transition("job-1", JobState.SUCCEEDED).attempts == 2


def test_resume_refuses_a_job_that_has_not_finished(store: JobStore) -> None:
    _create(store)
    store.transition("job-1", JobState.SUBMITTED)
    with pytest.raises(InvalidTransitionError, match="is SUBMITTED and cannot become PENDING; only a finished job"):
        store.reopen_for_resume("job-1")
    assert store.get("job-1").attempts == 1


def test_delete_removes_the_job_and_its_history(store: JobStore, engine: Engine) -> None:
    _create(store)
    _create(store, "other")
    store.transition("job-1", JobState.FAILED, error="submission refused")
    store.delete("job-1")
    with pytest.raises(UnknownJobError):
        store.get("job-1")
    assert [job.id for job in store.list()] == ["other"]
    with engine.connect() as connection:
        remaining = connection.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.job_id == "job-1"))
    assert remaining == 0
    assert len(store.events("other")) == 1


def test_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    first_engine, second_engine = make_engine(url), make_engine(url)
    upgrade(first_engine)
    upgrade(second_engine)
    first, second = JobStore(first_engine), JobStore(second_engine)
    _create(first)
    second.transition("job-1", JobState.SUBMITTED)
    assert first.get("job-1").state is JobState.SUBMITTED
    first.update("job-1", mlflow_run_id="run-9")
    assert second.get("job-1").mlflow_run_id == "run-9"
    first_engine.dispose()
    second_engine.dispose()


def test_records_are_frozen_snapshots_with_a_json_friendly_dict(store: JobStore) -> None:
    _create(store)
    store.transition("job-1", JobState.CANCELLED, message="cancelled by user")
    job = store.get("job-1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.state = JobState.RUNNING  # type: ignore[misc]
    job.spec["schedule"]["epochs"] = 99
    assert store.get("job-1").spec == SPEC

    data = json.loads(json.dumps(job.to_dict()))
    assert data["state"] == "CANCELLED"
    assert datetime.fromisoformat(data["created_at"]) == job.created_at
    assert data["created_at"].endswith("+00:00")
    assert data["started_at"] is None
    event = json.loads(json.dumps(store.events("job-1")[-1].to_dict()))
    assert (event["from_state"], event["to_state"], event["message"]) == ("PENDING", "CANCELLED", "cancelled by user")


def test_entering_a_final_state_finalizes_unless_tracking_is_pending(store: JobStore) -> None:
    _create(store)
    assert store.get("job-1").finalized_at is None
    failed = store.transition("job-1", JobState.FAILED, error="submission refused")
    assert failed.finalized_at == failed.ended_at and failed.is_settled
    _create(store, "job-2")
    store.transition("job-2", JobState.SUBMITTED)
    pending = store.transition("job-2", JobState.SUCCEEDED, tracking_pending=True)
    assert pending.finalized_at is None and not pending.is_settled
    final = store.mark_finalized("job-2", error="RuntimeError: bad data", mlflow_run_id="run-1",
                                 registered_model="lesa-detection-x", registered_version="2")
    assert final.is_settled and final.finalized_at >= pending.ended_at
    assert (final.mlflow_run_id, final.registered_version, final.error) == ("run-1", "2", "RuntimeError: bad data")
    assert [e.to_state for e in store.events("job-2")][-1] == JobState.SUCCEEDED  # no state change recorded
    assert store.reopen_for_resume("job-2").finalized_at is None
    with pytest.raises(InvalidTransitionError, match="only a finished job is finalized"):
        store.mark_finalized("job-2")


def test_literal_secrets_and_url_passwords_never_reach_the_rows(store: JobStore, engine: Engine) -> None:
    spec = {**SPEC, "tracking": {"tags": {"api_token": "t0ken-1", "owner": "ana", "db_password": "${DB_PASSWORD}"}},
            "hpo": {"storage": "postgresql://optuna:hunter2@db:5432/optuna"},
            "data": {"root": "s3://key:${S3_SECRET}@bucket/coco"}}
    store.create("job-1", name="det", task="detection", spec=spec)
    store.transition("job-1", JobState.SUBMITTED)
    store.transition("job-1", JobState.FAILED, error="MLflow at http://lesa:pa55word@mlflow:5000: unreachable")
    store.update("job-1", spec={**spec, "note": {"access_key": "AKIA123"}})

    job = store.get("job-1")
    assert job.spec["tracking"]["tags"] == {"api_token": "***", "owner": "ana", "db_password": "${DB_PASSWORD}"}
    assert job.spec["hpo"]["storage"] == "postgresql://optuna:***@db:5432/optuna"
    assert job.spec["data"]["root"] == "s3://key:${S3_SECRET}@bucket/coco"  # a reference is kept for the cluster
    assert job.error == "MLflow at http://lesa:***@mlflow:5000: unreachable"
    with engine.connect() as connection:
        rows = [row for table in ("jobs", "job_events") for row in connection.exec_driver_sql(f"SELECT * FROM {table}")]
    stored = " ".join(str(value) for row in rows for value in row)
    dumped = json.dumps(job.to_dict())
    for secret in ("t0ken-1", "hunter2", "pa55word", "AKIA123"):
        assert secret not in stored and secret not in dumped
