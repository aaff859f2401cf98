"""MLflow for lesa-orch: one run per job in ``lesa/<dataset>/<task>``, params, metrics, the registry.

A job's run carries the tags ``lesa.job_id`` (found again on resume), ``lesa.git_commit``,
``lesa.versions`` and ``lesa.ray_submission_id``; its params are the spec flattened to dotted keys
(secrets redacted) and the resolved spec is the artifact ``spec.json``. The best checkpoint is logged as
a model, registered as ``lesa-<task>-<arch>`` and given the alias ``candidate``; ``promote`` moves
``champion``. Stages are deprecated in MLflow, so only aliases are used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from .redaction import flatten_params, redacted_spec
from .spec import JobSpec

JOB_ID_TAG = "lesa.job_id"
PARENT_RUN_TAG = "mlflow.parentRunId"
STUDY_TAG = "lesa.study_job_id"  # on a search's trial runs; the job id tag stays the parent's alone
TRIAL_ID_TAG = "lesa.trial_id"
TRIAL_END_TAG = "lesa.trial_end"  # completed | stopped_early | failed
SUBMISSION_TAG = "lesa.ray_submission_id"
ERROR_TAG = "lesa.error"  # one line: why a job's run or a trial's run failed
CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
_BATCH = 900  # MLflow accepts up to 1000 entries per log_batch
# what a registered model needs to load: this package and its torch stack; given explicitly, MLflow does not infer
# them in a subprocess that imports the model (10 s or more per registration on 2 CPU cores)
MODEL_REQUIREMENTS = ("lesa-orch", "torch", "torchvision", "timm", "cloudpickle")


class TrackingError(RuntimeError):
    """MLflow could not be reached or refused a request; the message names the server."""


def package_versions() -> str:
    """``name=version`` of the packages a run depends on, comma separated."""
    names = ("lesa-orch", "torch", "torchvision", "timm", "ray", "mlflow", "optuna")
    versions = []
    for name in names:
        try:
            versions.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ",".join(versions)


def model_requirements() -> list[str]:
    """``MODEL_REQUIREMENTS`` pinned to the versions installed here (those that trained the model)."""
    return [f"{name}=={metadata.version(name)}" for name in MODEL_REQUIREMENTS]


@dataclass(frozen=True)
class RunSummary:
    """One row of ``lesa-orch compare``."""

    run_id: str
    job_id: str
    name: str
    status: str
    metrics: dict[str, float]
    params: dict[str, str]


class Tracker:
    """MLflow client bound to one tracking server."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def _call(self, what: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except MlflowException as error:
            raise TrackingError(f"MLflow at {self.tracking_uri}: {what} failed: {error.message}") from None

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created if missing."""
        experiment = self._call("get experiment", self.client.get_experiment_by_name, name)
        if experiment is not None:
            return experiment.experiment_id
        return self._call("create experiment", self.client.create_experiment, name)

    def find_job_run(self, job_id: str, experiment_name: str) -> str | None:
        """The run of job ``job_id`` in ``experiment_name``, if one exists (newest first)."""
        experiment = self._call("get experiment", self.client.get_experiment_by_name, experiment_name)
        if experiment is None:
            return None
        runs = self._call(
            "search runs", self.client.search_runs, [experiment.experiment_id],
            filter_string=f"tags.`{JOB_ID_TAG}` = '{job_id}'", max_results=1, order_by=["attributes.start_time DESC"],
        )
        return runs[0].info.run_id if runs else None

    def start_job_run(self, spec: JobSpec, job_id: str, *, submission_id: str, git_commit: str = "") -> str:
        """Creates the job's run (or reopens it on resume) with tags, params and the spec artifact."""
        existing = self.find_job_run(job_id, spec.experiment_name)
        tags = {
            JOB_ID_TAG: job_id, SUBMISSION_TAG: submission_id, "lesa.git_commit": git_commit,
            "lesa.versions": package_versions(), "lesa.task": spec.task, "lesa.arch": spec.model.arch,
            "mlflow.runName": spec.name,
        }
        if existing is None:
            run = self._call("create run", self.client.create_run, self.experiment_id(spec.experiment_name),
                             tags=tags, run_name=spec.name)
            run_id = run.info.run_id
            params = [Param(key, value[:6000]) for key, value in flatten_params(spec).items()]
            for start in range(0, len(params), _BATCH):
                self._call("log params", self.client.log_batch, run_id, params=params[start:start + _BATCH])
            self._call("log spec", self.client.log_dict, run_id, redacted_spec(spec), "spec.json")
        else:
            run_id = existing
            self._call("reopen run", self.client.update_run, run_id, status="RUNNING")
            self._call("tag run", self.client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            if ERROR_TAG in self._call("read run", self.client.get_run, run_id).data.tags:  # the last attempt's
                self._call("untag run", self.client.delete_tag, run_id, ERROR_TAG)
        return run_id

    def start_trial_run(self, spec: JobSpec, job_id: str, parent_run_id: str, trial_id: str) -> str:
        """The child run of one search trial (reopened when a resumed search runs the trial on)."""
        experiment_id = self.experiment_id(spec.experiment_name)
        existing = self.trial_runs(experiment_id, parent_run_id, trial_id=trial_id)
        if existing:
            run_id = existing[0].info.run_id
            self._call("reopen run", self.client.update_run, run_id, status="RUNNING")
            return run_id
        tags = {PARENT_RUN_TAG: parent_run_id, STUDY_TAG: job_id, TRIAL_ID_TAG: trial_id, "lesa.task": spec.task,
                "lesa.arch": spec.model.arch, "mlflow.runName": f"{spec.name}/{trial_id}"}
        run = self._call("create run", self.client.create_run, experiment_id, tags=tags,
                         run_name=f"{spec.name}/{trial_id}")
        params = [Param(key, value[:6000]) for key, value in flatten_params(spec).items()]
        for start in range(0, len(params), _BATCH):
            self._call("log params", self.client.log_batch, run.info.run_id, params=params[start:start + _BATCH])
        return run.info.run_id

    def trial_runs(self, experiment_id: str, parent_run_id: str, *, trial_id: str | None = None) -> list[Any]:
        """The child runs of a search, oldest first (one trial's when ``trial_id`` is given)."""
        query = f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"
        if trial_id is not None:
            query += f" and tags.`{TRIAL_ID_TAG}` = '{trial_id}'"
        return self._call("search runs", self.client.search_runs, [experiment_id], filter_string=query,
                          order_by=["attributes.start_time ASC"], max_results=10_000)

    def end_trial_run(self, run_id: str, outcome: str, metrics: dict[str, float] | None = None) -> None:
        """Tags a trial's end (completed, stopped_early, failed) and closes its run."""
        self.set_tags(run_id, {TRIAL_END_TAG: outcome})
        if metrics:
            self.log_metrics(run_id, metrics, step=0)
        self.end_run(run_id, "FAILED" if outcome == "failed" else "FINISHED")

    def end_open_trial_runs(self, parent_run_id: str, status: str) -> None:
        """Closes the trial runs a search left RUNNING when its driver stopped or died."""
        run = self._call("get run", self.client.get_run, parent_run_id)
        for child in self.trial_runs(run.info.experiment_id, parent_run_id):
            if child.info.status == "RUNNING":
                self._call("end run", self.client.set_terminated, child.info.run_id, status=status)

    def log_artifacts(self, run_id: str, directory: str, artifact_path: str | None = None) -> None:
        self._call("log artifacts", self.client.log_artifacts, run_id, directory, artifact_path)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self._call("log metrics", self.client.log_batch, run_id, metrics=entries)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._call("tag run", self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end_run(self, run_id: str, status: str, *, unless_finished: bool = False) -> None:
        """Marks the run FINISHED, FAILED or KILLED if it is still running (or, with ``unless_finished``, if it
        did not finish: a user's cancel turns a run the dying driver marked FAILED into KILLED)."""
        run = self._call("get run", self.client.get_run, run_id)
        current = RunStatus.from_string(run.info.status)
        if RunStatus.is_terminated(current) and not (unless_finished and current != RunStatus.FINISHED):
            return
        self._call("end run", self.client.set_terminated, run_id, status=status)

    def register_model(self, run_id: str, model: Any, name: str) -> str:
        """Logs ``model`` (pickled: Mask R-CNN does not export) in the run, registers it and sets ``candidate``."""
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        try:
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                                registered_model_name=name, pip_requirements=model_requirements())
        except MlflowException as error:
            raise TrackingError(f"MLflow at {self.tracking_uri}: registering {name} failed: {error.message}") from None
        version = str(info.registered_model_version)
        self._call("set alias", self.client.set_registered_model_alias, name, CANDIDATE_ALIAS, version)
        return version

    def promote(self, name: str, version: str) -> None:
        """Points the ``champion`` alias of registered model ``name`` at ``version``."""
        self._call("get model version", self.client.get_model_version, name, version)
        self._call("set alias", self.client.set_registered_model_alias, name, CHAMPION_ALIAS, version)

    def run_summaries(self, experiment_name: str, *, metric: str | None = None) -> list[RunSummary]:
        """Runs of an experiment, best ``metric`` first when given, else newest first."""
        experiment = self._call("get experiment", self.client.get_experiment_by_name, experiment_name)
        if experiment is None:
            raise TrackingError(f"MLflow at {self.tracking_uri}: no experiment named {experiment_name!r}")
        order = [f"metrics.`{metric}` DESC"] if metric else ["attributes.start_time DESC"]
        runs = self._call("search runs", self.client.search_runs, [experiment.experiment_id], order_by=order)
        return [
            RunSummary(run.info.run_id, run.data.tags.get(JOB_ID_TAG, ""), run.info.run_name or "",
                       run.info.status, dict(run.data.metrics), dict(run.data.params))
            for run in runs
        ]
