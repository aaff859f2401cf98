"""Job rows brought in line with Ray (the job's state) and MLflow (its run, its registered version).

A row follows its Ray job: SUBMITTED -> RUNNING -> SUCCEEDED, FAILED or CANCELLED. On the way the row learns its
MLflow run id; at the end it takes the registered model and version the driver tagged on the run, or the one-line
error the driver tagged (else Ray's message), and a run that a dead or stopped driver left open is closed, with the
search's trial runs. The row reaches its final state when Ray says so; MLflow's side of the end is done then if
MLflow answers, else on a later refresh (``finalized_at`` stays null until it is), so a job that ended while MLflow was
down converges once MLflow is back. Reconciling is idempotent: ending an ended run changes nothing, a settled row is
left as it is, so reconciling twice is reconciling once.
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
        """The job's row after reconciling it with Ray and MLflow; unchanged while Ray is unreachable. A final row
        whose end MLflow has not learnt yet is finalized now if MLflow answers (Ray is not asked again)."""
        record = self.store.get(job_id)
        if JobState(record.state).is_terminal:
            return record if record.is_settled else self.finish_tracking(record)
        if not record.ray_submission_id:
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
        Ray's message. While MLflow does not answer the row still reaches its final state, not finalized.
        """
        current = self.store.get(record.id)
        if JobState(current.state).is_terminal:
            return current
        if current.state == "SUBMITTED" and info.state != "CANCELLED":
            current = self.store.transition(current.id, JobState.RUNNING)
        state = JobState(info.state)
        error = None if state is JobState.SUCCEEDED else (info.message or f"Ray job {info.state.lower()}")
        learnt = self._end_tracking(current, state)
        try:
            if learnt is None:
                return self.store.transition(current.id, state, error=error, tracking_pending=True)
            error = learnt.pop("error", error)
            return self.store.transition(current.id, state, error=error, **learnt)
        except InvalidTransitionError:  # another reconciler finalized it in the meantime
            return self.store.get(current.id)

    def finish_tracking(self, record: JobRecord) -> JobRecord:
        """A final row that MLflow had not answered for, finalized now if it answers (else returned as it is)."""
        learnt = self._end_tracking(record, JobState(record.state))
        return record if learnt is None else self.store.mark_finalized(record.id, **learnt)

    def _end_tracking(self, record: JobRecord, state: JobState) -> dict[str, str] | None:
        """Tells MLflow the job ended in ``state`` and reads what the row should keep of its run: its id, the
        registered model and version, the driver's error. Idempotent; None when MLflow did not answer."""
        try:
            tracker = self.tracker()
            run_id = record.mlflow_run_id
            if not run_id and record.mlflow_experiment:
                run_id = tracker.find_job_run(record.id, record.mlflow_experiment)
            if not run_id:  # the driver never opened a run: MLflow has nothing to learn
                return {}
            learnt = {"mlflow_run_id": run_id}
            tags = tracker.client.get_run(run_id).data.tags
            if state is JobState.SUCCEEDED:
                if "lesa.registered_version" in tags:
                    learnt.update(registered_model=tags["lesa.registered_model"],
                                  registered_version=tags["lesa.registered_version"])
                tracker.end_run(run_id, "FINISHED")
            else:  # a driver that died cannot close its own run, nor a search's trial runs
                if ERROR_TAG in tags:
                    learnt["error"] = tags[ERROR_TAG]
                status = "KILLED" if state is JobState.CANCELLED else "FAILED"
                tracker.end_open_trial_runs(run_id, status)
                tracker.end_run(run_id, status)
            return learnt
        except Exception:  # MLflow down or refusing (its client raises more than TrackingError): retried later
            return None
