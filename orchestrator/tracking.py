"""MLflow for lesa-orch: one run per job in ``lesa/<dataset>/<task>``, params, metrics, the registry.

A job's run carries the tags ``lesa.job_id`` (found again on resume), ``lesa.git_commit``,
``lesa.versions`` and ``lesa.ray_submission_id``; its params are the spec flattened to dotted keys
(secrets redacted) and the resolved spec is the artifact ``spec.json``. The best checkpoint is logged as
a model, registered as ``lesa-<task>-<arch>`` and given the alias ``candidate``; ``promote`` moves
``champion``. Stages are deprecated in MLflow, so only aliases are used.

This is the one module that talks to MLflow: :class:`Tracker` holds its server's URI (nothing process-wide is
set) and also reads runs, histories, artifacts and logged models for the report and the saved views, and builds
the UI links.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from . import versions
from .redaction import flatten_params, redacted_spec
from .spec import JobSpec

if TYPE_CHECKING:  # mlflow costs a second to import: the CLI verbs that never reach it do not load it
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, Run

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
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
# what a registered model needs to load: this package and its torch stack; given explicitly, MLflow does not infer
# them in a subprocess that imports the model (10 s or more per registration on 2 CPU cores)
MODEL_REQUIREMENTS = ("lesa-orch", "torch", "torchvision", "timm", "cloudpickle")


# what a CLI read waits for a server that answers slowly or with errors: one retry, 4 s per request (MLflow's
# defaults, 7 retries with exponential backoff, wait minutes)
READ_RETRIES = 1
READ_TIMEOUT_S = 4
_REQUEST_LIMITS = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT")


class TrackingError(RuntimeError):
    """MLflow could not be reached or refused a request; the message names the server."""


def package_versions() -> str:
    """``name=version`` of the packages a run depends on, comma separated."""
    return ",".join(f"{name}={version}" for name, version in versions.package_versions().items() if version)


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


def run_summary(run: Any) -> RunSummary:
    """An MLflow run as a row of ``compare``."""
    return RunSummary(run.info.run_id, run.data.tags.get(JOB_ID_TAG, ""), run.info.run_name or "", run.info.status,
                      dict(run.data.metrics), dict(run.data.params))


@contextlib.contextmanager
def _restored_environ(*names: str) -> Iterator[None]:
    """Puts the environment variables ``names`` back as they were when the block ends."""
    previous = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def bounded_requests(retries: int = READ_RETRIES, timeout_s: int = READ_TIMEOUT_S) -> Iterator[None]:
    """MLflow's HTTP requests in the block give up after ``retries`` retries of ``timeout_s`` seconds each.

    MLflow reads these limits from the environment at each request; they are put back when the block ends, so
    nothing started later (a Ray head, a job's driver) inherits them.
    """
    with _restored_environ(*_REQUEST_LIMITS):
        os.environ.update(zip(_REQUEST_LIMITS, (str(retries), "1", str(timeout_s)), strict=True))
        yield


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """MLflow draws tqdm bars on downloads, which would tear through the CLI's spinner."""
    with _restored_environ(_PROGRESS_BAR):
        os.environ[_PROGRESS_BAR] = "false"
        yield


@contextlib.contextmanager
def _fluent_uris(uri: str) -> Iterator[None]:
    """Points MLflow's process-wide tracking and registry URIs at ``uri`` for one fluent call (``log_model`` has
    no client form), then puts back the previous ones and the variables ``set_tracking_uri`` exports."""
    import mlflow

    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    with _restored_environ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            mlflow.set_registry_uri(None)
            mlflow.set_tracking_uri(previous)


class Tracker:
    """MLflow client bound to one tracking server.

    A job's writes raise :class:`TrackingError` naming the server; the reads (and the report's artifacts) return
    MLflow's entities and raise its ``MlflowException``, which their callers word.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    @functools.cached_property
    def client(self) -> MlflowClient:
        """The MLflow client, made on first use (a SQLite store is created and migrated when opened)."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _call(self, what: str, function, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        try:
            return function(*args, **kwargs)
        except MlflowException as error:
            raise TrackingError(f"MLflow at {self.tracking_uri}: {what} failed: {error.message}") from None

    def check_api(self) -> None:
        """One real API call (a search for at most one experiment); raises :class:`TrackingError` if it fails."""
        self._call("search experiments", self.client.search_experiments, max_results=1)

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

    def start_job_run(self, spec: JobSpec, job_id: str, *, submission_id: str, git_commit: str = "",
                      git_dirty: bool = False) -> str:
        """Creates the job's run (or reopens it on resume) with tags (``lesa.version.<package>`` among them), params
        and the spec artifact."""
        from mlflow.entities import RunTag

        existing = self.find_job_run(job_id, spec.experiment_name)
        tags = {
            JOB_ID_TAG: job_id, SUBMISSION_TAG: submission_id, "lesa.git_commit": git_commit,
            "lesa.versions": package_versions(), "lesa.task": spec.task, "lesa.arch": spec.model.arch,
            "mlflow.runName": spec.name, **versions.version_tags(git_commit, git_dirty),
        }
        if existing is None:
            run = self._call("create run", self.client.create_run, self.experiment_id(spec.experiment_name),
                             tags=tags, run_name=spec.name)
            run_id = run.info.run_id
            self._log_params(run_id, spec)
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
        self._log_params(run.info.run_id, spec)
        return run.info.run_id

    def _log_params(self, run_id: str, spec: JobSpec) -> None:
        """The spec flattened and redacted as params, in batches MLflow accepts."""
        from mlflow.entities import Param

        params = [Param(key, value[:6000]) for key, value in flatten_params(spec).items()]
        for start in range(0, len(params), _BATCH):
            self._call("log params", self.client.log_batch, run_id, params=params[start:start + _BATCH])

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
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self._call("log metrics", self.client.log_batch, run_id, metrics=entries)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call("tag run", self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end_run(self, run_id: str, status: str, *, unless_finished: bool = False) -> None:
        """Marks the run FINISHED, FAILED or KILLED if it is still running (or, with ``unless_finished``, if it
        did not finish: a user's cancel turns a run the dying driver marked FAILED into KILLED)."""
        from mlflow.entities import RunStatus

        run = self._call("get run", self.client.get_run, run_id)
        current = RunStatus.from_string(run.info.status)
        if RunStatus.is_terminated(current) and not (unless_finished and current != RunStatus.FINISHED):
            return
        self._call("end run", self.client.set_terminated, run_id, status=status)

    def register_model(self, run_id: str, model: Any, name: str) -> str:
        """Logs ``model`` (pickled: Mask R-CNN does not export) in the run, registers it and sets ``candidate``."""
        import mlflow.pytorch
        from mlflow.exceptions import MlflowException

        try:
            with _fluent_uris(self.tracking_uri), mlflow.start_run(run_id=run_id):
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
        return [run_summary(run) for run in runs]

    # ------------------------------------------------------------------------------------ reads and UI links

    def ui_url(self, experiment_id: str, run_id: str = "", *, query: Mapping[str, str] | None = None) -> str:
        """The MLflow UI page of an experiment or run, ``query`` its search state (filter, sort, mode); empty when
        the tracking URI is no HTTP server (sqlite, file)."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return ""
        url = f"{self.tracking_uri.rstrip('/')}/#/experiments/{experiment_id}"
        if run_id:
            url += f"/runs/{run_id}"
        return f"{url}?{urlencode(query)}" if query else url

    def experiment(self, name: str) -> Experiment | None:
        return self.client.get_experiment_by_name(name)

    def experiment_ids(self, filter_string: str) -> list[str]:
        """Ids of the experiments that match an MLflow experiment filter, e.g. ``name LIKE 'lesa/%'``."""
        return [experiment.experiment_id for experiment in self.client.search_experiments(filter_string=filter_string)]

    def get_run(self, run_id: str) -> Run:
        return self.client.get_run(run_id)

    def search_runs(self, experiment_ids: Sequence[str], *, filter_string: str = "",
                    order_by: Sequence[str] | None = None, max_results: int = 1000) -> list[Run]:
        return list(self.client.search_runs(list(experiment_ids), filter_string=filter_string,
                                            order_by=list(order_by) if order_by else None, max_results=max_results))

    def metric_history(self, run_id: str, metric: str) -> list[tuple[int, float]]:
        """(step, value) of every logged value of ``metric``."""
        return [(point.step, point.value) for point in self.client.get_metric_history(run_id, metric)]

    def download_artifact(self, run_id: str, path: str, dst_path: str) -> str:
        """The run's artifact ``path`` copied under ``dst_path``; returns the local path."""
        with _quiet_downloads():
            return self.client.download_artifacts(run_id, path, dst_path)

    def load_logged_model(self, run_id: str, experiment_id: str, dst_path: str, name: str = "model") -> Any | None:
        """The newest PyTorch model ``name`` the run logged (``runs:/<id>/<name>``) on the CPU; None if it logged none.

        The location is resolved here because MLflow 3 resolves ``runs:/`` model URIs against the process-wide
        tracking URI only.
        """
        import mlflow.artifacts
        import mlflow.pytorch

        models = self.client.search_logged_models(
            experiment_ids=[experiment_id], filter_string=f"name = '{name}' AND source_run_id = '{run_id}'",
            order_by=[{"field_name": "creation_time", "ascending": False}], max_results=1)
        if not models:
            return None
        with _quiet_downloads():
            local = mlflow.artifacts.download_artifacts(artifact_uri=models[0].artifact_location, dst_path=dst_path,
                                                        tracking_uri=self.tracking_uri)
        return mlflow.pytorch.load_model(local, map_location="cpu")

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str) -> str:
        """Logs one file under ``artifact_path``; returns its artifact URI."""
        self.client.log_artifact(run_id, local_path, artifact_path)
        root = self.client.get_run(run_id).info.artifact_uri
        return f"{root.rstrip('/')}/{artifact_path}/{os.path.basename(local_path)}"
