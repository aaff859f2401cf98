"""Job rows brought in line with Ray (the job's state) and MLflow (its run, its registered version).

A row follows its Ray job: SUBMITTED -> RUNNING -> SUCCEEDED, FAILED or CANCELLED. On the way the row learns its
MLflow run id; at the end it takes the registered model and version the driver tagged on the run, or the one-line
error the driver tagged (else Ray's message), and a run that a dead or stopped driver left open is closed, with the
search's trial runs. Reconciling is idempotent: a row in a final state is left as it is, so reconciling twice is
reconciling once, and what Ray or MLflow could not answer is tried again on the next call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .ray_backend import jobs as ray_jobs
from .store import InvalidTransitionError, JobRecord, JobState, JobStore
from .tracking import ERROR_TAG, Tracker, TrackingError


class RayJobsClient(Protocol):
    """What reconciling asks of Ray's ``JobSubmissionClient``."""

    def get_job_info(self, submission_id: str) -> Any: ...


@dataclass(frozen=True)
class Reconciler:
    """Reconciles rows of ``store``; ``connect_ray`` and ``tracker`` are called only when a row needs them."""

    store: JobStore
    connect_ray: Callable[[], RayJobsClient]
    tracker: Callable[[], Tracker]

    def refresh(self, job_id: str) -> JobRecord:
        """The job's row after reconciling it with Ray and MLflow; unchanged while Ray is unreachable."""
        record = self.store.get(job_id)
        if JobState(record.state).is_terminal or not record.ray_submission_id:
            return record
        try:
            info = ray_jobs.info(self.connect_ray(), record.ray_submission_id)
        except Exception:  # Ray unreachable: report what we know
            return record
        record = self.link_run(record)
        if info.state == record.state:
            return record
        if JobState(info.state).is_terminal:
            return self.finalize(record, info)
        if info.state == "RUNNING" and record.state == "SUBMITTED":
            return self.store.transition(job_id, JobState.RUNNING)
        return record

    def link_run(self, record: JobRecord) -> JobRecord:
        """The row with its MLflow run id, once the driver has opened the run."""
        if record.mlflow_run_id or not record.mlflow_experiment:
            return record
        try:
            run_id = self.tracker().find_job_run(record.id, record.mlflow_experiment)
        except TrackingError:
            return record
        return self.store.update(record.id, mlflow_run_id=run_id) if run_id else record

    def finalize(self, record: JobRecord, info: ray_jobs.RayJobInfo) -> JobRecord:
        """Moves a job Ray has ended to its final state; a row already final is returned as it is.

        A failed job's error is the driver's one-line cause (the run's ``lesa.error`` tag) when it wrote one, else
        Ray's message. Tracking is best effort here: the row reaches its final state either way.
        """
        current = self.store.get(record.id)
        if JobState(current.state).is_terminal:
            return current
        if current.state == "SUBMITTED" and info.state != "CANCELLED":
            current = self.store.transition(current.id, JobState.RUNNING)
        fields: dict[str, str] = {}
        error = None if info.state == "SUCCEEDED" else (info.message or f"Ray job {info.state.lower()}")
        if current.mlflow_run_id:
            try:
                tracker = self.tracker()
                tags = tracker.client.get_run(current.mlflow_run_id).data.tags
                if info.state == "SUCCEEDED":
                    if "lesa.registered_version" in tags:
                        fields = {"registered_model": tags["lesa.registered_model"],
                                  "registered_version": tags["lesa.registered_version"]}
                else:  # a driver that died cannot close its own run, nor a search's trial runs
                    error = tags.get(ERROR_TAG, error)
                    status = "KILLED" if info.state == "CANCELLED" else "FAILED"
                    tracker.end_open_trial_runs(current.mlflow_run_id, status)
                    tracker.end_run(current.mlflow_run_id, status)
            except Exception:  # tracking is best effort while reconciling
                pass
        try:
            return self.store.transition(current.id, JobState(info.state), error=error, **fields)
        except InvalidTransitionError:  # another reconciler finalized it in the meantime
            return self.store.get(current.id)
