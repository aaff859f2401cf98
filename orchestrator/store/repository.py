"""``JobStore``: create, read and move jobs through their lifecycle; callers get frozen snapshots.

Whatever a caller hands in, the store keeps no plain secret: a spec's literal secrets become ``***`` (its ``${VAR}``
references stay, for a resume to expand again) and errors and event messages lose their URL passwords.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from ..redaction import redact_secrets, redact_url
from .models import ALLOWED_TRANSITIONS, TASKS, Job, JobEvent, JobState, utc_now

# Fields that `update` and `transition(**fields)` may set; state, attempts and error follow the lifecycle.
UPDATABLE_FIELDS = frozenset({
    "name", "spec", "spec_path", "ray_address", "ray_submission_id", "mlflow_experiment", "mlflow_run_id",
    "registered_model", "registered_version", "started_at", "ended_at",
})
_MAX_SUGGESTIONS = 3
# Job ids share a name-date-hash template, so the looser difflib default (0.6) suggests unrelated jobs.
_SUGGESTION_CUTOFF = 0.8
_SUGGESTION_POOL = 1000  # most recent ids compared for likeness; bounds the cost on a long history


class UnknownJobError(KeyError):
    """No job has this id; the message suggests ids that start with it or look like it."""

    def __init__(self, job_id: str, suggestions: tuple[str, ...] = ()) -> None:
        self.job_id = job_id
        self.suggestions = suggestions
        message = f"no job with id {job_id!r}"
        if suggestions:
            message += "; did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
        super().__init__(message)

    def __str__(self) -> str:
        # KeyError would repr() the message, quoting it a second time.
        return str(self.args[0])


class InvalidTransitionError(ValueError):
    """The job's lifecycle does not allow this state change."""

    def __init__(self, job_id: str, from_state: JobState, to_state: JobState, reason: str | None = None) -> None:
        self.job_id = job_id
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(
            f"job {job_id!r} is {from_state} and cannot become {to_state}; "
            + (reason or _lifecycle_rule(from_state, to_state))
        )


def _lifecycle_rule(from_state: JobState, to_state: JobState) -> str:
    """The rule that forbids ``from_state -> to_state``, in words."""
    if from_state.is_terminal and to_state is JobState.PENDING:
        return "a finished job goes back to PENDING only through resume"
    if from_state.is_terminal:
        return f"{from_state} is final (resume reopens a finished job)"
    allowed = [state.value for state in JobState if state in ALLOWED_TRANSITIONS[from_state]]
    return f"a {from_state} job can become {', '.join(allowed[:-1])} or {allowed[-1]}"


def _to_dict(record: JobRecord | JobEventRecord) -> dict[str, Any]:
    """Field values made JSON-friendly: datetimes as ISO 8601 strings, states as plain strings."""
    data = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, JobState):
            value = value.value
        data[field.name] = value
    return data


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """A snapshot of one job row, detached from any database session."""

    id: str
    name: str
    task: str
    state: JobState
    spec: dict[str, Any]
    spec_path: str | None
    ray_address: str | None
    ray_submission_id: str | None
    mlflow_experiment: str | None
    mlflow_run_id: str | None
    registered_model: str | None
    registered_version: str | None
    error: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    finalized_at: datetime | None

    @property
    def is_settled(self) -> bool:
        """In a final state that MLflow has learnt too: nothing is left to reconcile."""
        return self.state.is_terminal and self.finalized_at is not None

    @classmethod
    def from_row(cls, job: Job) -> JobRecord:
        values = {field.name: getattr(job, field.name) for field in dataclasses.fields(cls)}
        return cls(**values | {"state": JobState(job.state), "spec": copy.deepcopy(job.spec)})

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclasses.dataclass(frozen=True)
class JobEventRecord:
    """A snapshot of one state change; ``from_state`` is None for the creation event."""

    id: int
    job_id: str
    at: datetime
    from_state: JobState | None
    to_state: JobState
    message: str | None

    @classmethod
    def from_row(cls, event: JobEvent) -> JobEventRecord:
        from_state = None if event.from_state is None else JobState(event.from_state)
        return cls(event.id, event.job_id, event.at, from_state, JobState(event.to_state), event.message)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


class JobStore:
    """Jobs and their state history in a SQL database; every method runs in its own transaction."""

    def __init__(self, bind: Engine | sessionmaker[Session]) -> None:
        self._sessions = sessionmaker(bind) if isinstance(bind, Engine) else bind

    def create(
        self,
        job_id: str,
        *,
        name: str,
        task: str,
        spec: dict[str, Any],
        spec_path: str | None = None,
        ray_address: str | None = None,
    ) -> JobRecord:
        """Add a PENDING job; ``job_id`` must be new."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        now = utc_now()
        job = Job(
            id=job_id, name=name, task=task, state=JobState.PENDING.value, spec=redact_secrets(spec),
            spec_path=spec_path, ray_address=ray_address, attempts=1, created_at=now, updated_at=now,
        )
        with self._sessions.begin() as session:
            if session.get(Job, job_id) is not None:
                raise ValueError(f"a job with id {job_id!r} already exists")
            session.add(job)
            session.add(JobEvent(job_id=job_id, at=now, from_state=None, to_state=job.state, message="created"))
            return JobRecord.from_row(job)

    def get(self, job_id: str) -> JobRecord:
        """The job with this id; raises `UnknownJobError` (with suggestions) when there is none."""
        with self._sessions() as session:
            return JobRecord.from_row(self._load(session, job_id))

    def transition(
        self,
        job_id: str,
        new_state: JobState | str,
        *,
        error: str | None = None,
        message: str | None = None,
        tracking_pending: bool = False,
        **fields: Any,
    ) -> JobRecord:
        """Move a job to ``new_state`` and record the change; ``fields`` are set in the same transaction.

        Entering RUNNING sets ``started_at`` and entering a final state sets ``ended_at``, unless already set
        (by ``fields``, e.g. the times Ray reports), and ``finalized_at``, unless ``tracking_pending`` (MLflow has yet
        to learn of the end: see :meth:`mark_finalized`). ``error`` is kept on the row; the event message
        defaults to it.
        """
        new_state = JobState(new_state)
        _check_updatable(fields)
        error, message = _redacted(error), _redacted(message)
        with self._sessions.begin() as session:
            job = self._load(session, job_id, for_update=True)
            old_state = JobState(job.state)
            if new_state not in ALLOWED_TRANSITIONS[old_state]:
                raise InvalidTransitionError(job_id, old_state, new_state)
            now = utc_now()
            _set_fields(job, fields)
            if new_state is JobState.RUNNING and job.started_at is None:
                job.started_at = now
            if new_state.is_terminal and job.ended_at is None:
                job.ended_at = now
            if new_state.is_terminal and not tracking_pending:
                job.finalized_at = now
            if error is not None:
                job.error = error
            job.state = new_state.value
            job.updated_at = now
            session.add(JobEvent(job_id=job_id, at=now, from_state=old_state.value, to_state=new_state.value,
                                 message=message if message is not None else error))
            return JobRecord.from_row(job)

    def reopen_for_resume(self, job_id: str, *, message: str | None = None) -> JobRecord:
        """Send a finished job back to PENDING for another attempt: ``attempts`` + 1, error and end cleared."""
        with self._sessions.begin() as session:
            job = self._load(session, job_id, for_update=True)
            old_state = JobState(job.state)
            if not old_state.is_terminal:
                reason = "only a finished job (SUCCEEDED, FAILED, CANCELLED) can be resumed"
                raise InvalidTransitionError(job_id, old_state, JobState.PENDING, reason)
            now = utc_now()
            job.state = JobState.PENDING.value
            job.attempts += 1
            job.error = None
            job.ended_at = None
            job.finalized_at = None
            job.updated_at = now
            session.add(JobEvent(job_id=job_id, at=now, from_state=old_state.value, to_state=job.state,
                                 message=message if message is not None else f"reopened for attempt {job.attempts}"))
            return JobRecord.from_row(job)

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        """Set fields that are not part of the lifecycle (MLflow ids, registered model, ...)."""
        _check_updatable(fields)
        with self._sessions.begin() as session:
            job = self._load(session, job_id)
            _set_fields(job, fields)
            job.updated_at = utc_now()
            return JobRecord.from_row(job)

    def mark_finalized(self, job_id: str, *, error: str | None = None, **fields: Any) -> JobRecord:
        """Record that MLflow has learnt of a finished job's end (``finalized_at``), with what was read on the way:
        ``fields`` (run id, registered model and version) and the driver's ``error``, which replaces Ray's."""
        _check_updatable(fields)
        with self._sessions.begin() as session:
            job = self._load(session, job_id, for_update=True)
            if not JobState(job.state).is_terminal:
                raise InvalidTransitionError(job_id, JobState(job.state), JobState(job.state),
                                             "only a finished job is finalized")
            _set_fields(job, fields)
            if error is not None:
                job.error = _redacted(error)
            job.finalized_at = job.updated_at = utc_now()
            return JobRecord.from_row(job)

    def delete(self, job_id: str) -> None:
        """Remove a job and its history, e.g. a PENDING row whose submission failed before anything ran."""
        with self._sessions.begin() as session:
            job = self._load(session, job_id)
            # Explicit, so no history is left even on a connection without SQLite's foreign-key enforcement.
            session.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
            session.delete(job)

    def events(self, job_id: str) -> list[JobEventRecord]:
        """The job's state changes, oldest first."""
        with self._sessions() as session:
            self._load(session, job_id)
            rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
            return [JobEventRecord.from_row(event) for event in rows]

    # Defined last: below this point the name `list` in an annotation would mean this method.
    def list(self, state: JobState | str | None = None, limit: int | None = None) -> list[JobRecord]:
        """Jobs newest first, optionally only those in ``state`` and at most ``limit`` of them."""
        query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        if state is not None:
            query = query.where(Job.state == JobState(state).value)
        with self._sessions() as session:
            return [JobRecord.from_row(job) for job in session.scalars(query)]

    @staticmethod
    def _load(session: Session, job_id: str, *, for_update: bool = False) -> Job:
        job = session.get(Job, job_id, with_for_update=for_update)
        if job is None:
            raise UnknownJobError(job_id, _suggest_ids(session, job_id))
        return job


def _suggest_ids(session: Session, job_id: str) -> tuple[str, ...]:
    """Ids that start with ``job_id``, else the closest-looking recent ones."""
    prefixed = session.scalars(
        select(Job.id).where(Job.id.startswith(job_id, autoescape=True)).order_by(Job.id).limit(_MAX_SUGGESTIONS)
    ).all()
    if prefixed:
        return tuple(prefixed)
    recent = session.scalars(select(Job.id).order_by(Job.created_at.desc()).limit(_SUGGESTION_POOL)).all()
    return tuple(difflib.get_close_matches(job_id, recent, n=_MAX_SUGGESTIONS, cutoff=_SUGGESTION_CUTOFF))


def _set_fields(job: Job, fields: dict[str, Any]) -> None:
    for key, value in fields.items():
        setattr(job, key, redact_secrets(value) if key == "spec" else value)


def _redacted(text: str | None) -> str | None:
    """Ray's and MLflow's messages name servers, perhaps with a password in the URL."""
    return None if text is None else redact_url(text)


def _check_updatable(fields: dict[str, Any]) -> None:
    unknown = sorted(set(fields) - UPDATABLE_FIELDS)
    if unknown:
        raise TypeError(f"cannot set {', '.join(unknown)}; settable fields: {', '.join(sorted(UPDATABLE_FIELDS))}")
