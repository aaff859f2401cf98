"""The operations behind the CLI verbs. No CLI library in here: other front ends can call these.

Every verb takes a :class:`Context` (settings + job store) and returns plain data. Errors a user can fix
are :class:`OrchestratorError` subclasses (or :class:`~orchestrator.spec.SpecError`) with one-line
messages; a failed submission leaves no PENDING row behind. A service that does not answer (Ray, MLflow, the
job database, storage) is a :class:`ServiceUnreachableError`, found within seconds: Ray and MLflow are probed
(2 s) before they are used, MLflow reads give up after one retry, a PostgreSQL job store after 5 s.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, func, make_url, select
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from . import versions
from .ray_backend import local_services
from .ray_backend.cluster import check_fits, read_cluster_resources, read_ray_version
from .redaction import redact_url
from .settings import Settings
from .spec import JobSpec, SpecError, load_spec, parse_spec
from .store import JobRecord, JobState, JobStore, make_engine, upgrade
from .tracking import (
    TRIAL_END_TAG,
    TRIAL_ID_TAG,
    RunSummary,
    Tracker,
    TrackingError,
    bounded_requests,
    package_versions,
    run_summary,
)

if TYPE_CHECKING:  # Ray's client and the reconciler (which imports it) load only for verbs that reach Ray
    from .reconcile import Reconciler

POLL_INTERVAL_S = 2.0
DB_CONNECT_TIMEOUT_S = 5
RAY, MLFLOW, JOB_DATABASE, STORAGE = "Ray", "MLflow", "job database", "storage"


class OrchestratorError(RuntimeError):
    """A problem the user can act on; the message is one line."""


class ServiceUnreachableError(OrchestratorError):
    """``service`` (Ray, MLflow, the job database or storage) did not answer or refused us; one-line message."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(message)
        self.service = service


class MlflowUnreachableError(ServiceUnreachableError, TrackingError):
    """MLflow did not answer; a :class:`TrackingError` too, so reconciling carries on without it."""


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _with_connect_timeout(url: str) -> str:
    """``url`` with a connect timeout for PostgreSQL (whose default is to wait for as long as TCP does)."""
    sa_url = make_url(url)
    if sa_url.get_backend_name() == "postgresql" and "connect_timeout" not in sa_url.query:
        sa_url = sa_url.update_query_dict({"connect_timeout": str(DB_CONNECT_TIMEOUT_S)})
    return sa_url.render_as_string(hide_password=False)


def open_engine(url: str) -> Engine:
    """The job store's engine, migrated to the newest schema; PostgreSQL gives up connecting after 5 s.

    Raises:
        ServiceUnreachableError: the database did not answer or refused the connection.
        OrchestratorError: ``url`` is no database URL SQLAlchemy can use.
    """
    try:
        engine = make_engine(_with_connect_timeout(url))
        upgrade(engine)
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise OrchestratorError(f"job database URL {redact_url(url)!r} is not usable: {_first_line(error)}") from None
    except OperationalError as error:
        raise ServiceUnreachableError(JOB_DATABASE, f"job database at {redact_url(url)} is unreachable: "
                                      f"{redact_url(_first_line(error.orig or error))}") from None
    return engine


@dataclass
class Context:
    """Settings and the job store of one CLI invocation, and what this poll learnt of Ray's and MLflow's reach."""

    settings: Settings
    store: JobStore
    probes: dict[str, str | None] = field(default_factory=dict)  # service -> None (it answered) or why not
    _ray_client: Any = field(default=None, repr=False)

    @classmethod
    def open(cls, settings: Settings | None = None) -> Context:
        settings = settings or Settings.from_env()
        try:
            settings.home.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OrchestratorError(f"home folder {settings.home}: {error.strerror}") from None
        return cls(settings, JobStore(open_engine(settings.database_url)))

    def unreachable(self, service: str) -> str | None:
        """Why ``service`` (RAY or MLFLOW) did not answer, in one line; None when it did. Probed once per poll."""
        if service not in self.probes:
            settings = self.settings
            if service == RAY:
                problem = local_services.ray_problem(settings)
                where = f"Ray at {settings.ray_address}"
                embedded = settings.embedded_ray
            else:
                problem = local_services.mlflow_problem(settings)
                where = f"MLflow at {settings.mlflow_uri}"
                embedded = settings.embedded_mlflow
            hint = "; run `lesa-orch up`" if embedded and problem and "token" not in problem else ""
            self.probes[service] = f"{where} is unreachable: {problem}{hint}" if problem else None
        return self.probes[service]

    def tracker(self) -> Tracker:
        """The MLflow client; raises :class:`MlflowUnreachableError` at once when the server does not answer."""
        problem = self.unreachable(MLFLOW)
        if problem:
            raise MlflowUnreachableError(MLFLOW, problem)
        return Tracker(self.settings.mlflow_uri)

    def ray_client(self) -> Any:
        """The Ray Jobs client (one per context); raises :class:`ServiceUnreachableError` when Ray does not answer."""
        problem = self.unreachable(RAY)
        if problem:
            raise ServiceUnreachableError(RAY, problem)
        if self._ray_client is None:
            from .ray_backend import jobs as ray_jobs

            try:
                self._ray_client = ray_jobs.connect(self.settings)
            except ray_jobs.RayUnreachableError as error:
                raise ServiceUnreachableError(RAY, _first_line(error)) from None
        return self._ray_client

    def reconciler(self) -> Reconciler:
        from .reconcile import Reconciler

        return Reconciler(self.store, self.ray_client, self.tracker)


# ----------------------------------------------------------------------------------------- models, spec


@dataclass(frozen=True)
class ModelInfo:
    """One registered LESA model as the `models` verb reports it (default options)."""

    name: str
    params: int
    input_size: tuple[int, ...]
    crop_pct: float
    description: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def list_models(name_filter: str = "") -> list[ModelInfo]:
    """Registered LESA models whose name contains ``name_filter``; built on the meta device, so instant."""
    # torch and timm cost ~3 s to import: only the verbs that need them load them
    import timm
    import torch

    from lesa_core.models import LESA_MODEL_NAMES

    infos = []
    for name in LESA_MODEL_NAMES:
        if name_filter not in name:
            continue
        with torch.device("meta"):
            model = timm.create_model(name)
        entrypoint_doc = timm.models.model_entrypoint(name).__doc__ or ""
        infos.append(ModelInfo(
            name=name,
            params=sum(p.numel() for p in model.parameters()),
            input_size=tuple(model.pretrained_cfg["input_size"]),
            crop_pct=model.pretrained_cfg["crop_pct"],
            description=entrypoint_doc.strip().splitlines()[0] if entrypoint_doc.strip() else "",
        ))
    return infos


def validate(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Loads and validates a job file, including that its data root exists (or will be generated)."""
    try:
        spec = load_spec(path, overrides)
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                        f"{error.start}); save the job file as UTF-8") from None
    except OSError as error:
        raise SpecError(f"{path}: cannot read the job file: {error.strerror or error}") from None
    check_data_root(spec, str(path))
    return spec


def check_data_root(spec: JobSpec, source: str) -> None:
    root = spec.data.root
    if "://" in root or spec.data.generate:
        return
    if not Path(root).expanduser().exists():
        raise SpecError(f"{source}: data.root: {root} does not exist (set data.generate: true for generated data)")


# ---------------------------------------------------------------------------------------------- services


def services_up(settings: Settings, *, num_cpus: int | None = None) -> local_services.ServicesStatus:
    try:
        return local_services.up(settings, num_cpus=num_cpus)
    except local_services.ServiceError as error:
        raise OrchestratorError(str(error)) from None


def services_down(settings: Settings) -> local_services.ServicesStatus:
    return local_services.down(settings)


def _ensure_reachable(ctx: Context) -> None:
    """The embedded services start on demand; a configured cluster or server must already answer."""
    settings = ctx.settings
    if (settings.embedded_ray and ctx.unreachable(RAY)) or (settings.embedded_mlflow and ctx.unreachable(MLFLOW)):
        services_up(settings)
        ctx.probes.clear()
    for service in (RAY, MLFLOW):
        problem = ctx.unreachable(service)
        if problem:
            raise ServiceUnreachableError(service, problem)


# ------------------------------------------------------------------------------------------------- jobs


def new_job_id(name: str) -> str:
    return f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _resolve_spec(spec: JobSpec, settings: Settings, source: str) -> JobSpec:
    """Fills what the spec leaves to the deployment (storage path) and makes local paths absolute."""
    raw = spec.model_dump(mode="json")
    raw["storage"]["path"] = raw["storage"]["path"] or settings.default_storage
    if not raw["storage"]["path"]:
        raise SpecError(f"{source}: storage.path: unset, and the cluster at {settings.ray_address} cannot write to "
                        "this machine; set storage.path (e.g. s3://lesa-checkpoints) or LESA_ORCH_STORAGE")
    for section, key in (("data", "root"), ("storage", "path"), ("model", "pretrained")):
        value = raw[section][key]
        if value and "://" not in value:
            raw[section][key] = str(Path(value).expanduser().resolve())
    return parse_spec(raw, source="resolved spec", checked=True)  # the checks ran on the spec as given


def driver_env(settings: Settings) -> dict[str, str]:
    """Environment of a job driver on the settings' cluster: MLflow and Optuna URLs, the lesa-orch commit (and
    whether its tree had uncommitted changes), the Ray token; MLflow's usage telemetry off."""
    commit, dirty = versions.source_state()
    env = {"MLFLOW_TRACKING_URI": settings.cluster_mlflow_uri, "LESA_ORCH_OPTUNA_URL": settings.optuna_url,
           "LESA_GIT_COMMIT": commit, "LESA_GIT_DIRTY": str(dirty).lower(), "LESA_ORCH_HOME": str(settings.home),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    if settings.embedded_ray:
        env.update(local_services.ray_auth_env(settings))
        # one local machine is never preempted; the watcher is one more actor to start with every run
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    return env


def submit(ctx: Context, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobRecord:
    """Validates, checks the cluster can run it, records the job (PENDING) and submits it (SUBMITTED)."""
    spec = _resolve_spec(validate(path, overrides), ctx.settings, str(path))
    _ensure_reachable(ctx)
    if ctx.settings.embedded_ray:  # a remote cluster's storage may be out of this machine's reach
        _require_storage(str(spec.storage.path))
    try:
        check_fits(spec, read_cluster_resources(ctx.settings))
    except ValueError as error:
        raise OrchestratorError(f"{path}: {error}") from None
    except ConnectionError as error:
        raise ServiceUnreachableError(RAY, _first_line(error)) from None
    job_id = new_job_id(spec.name)
    record = ctx.store.create(job_id, name=spec.name, task=spec.task, spec=spec.model_dump(mode="json"),
                              spec_path=str(Path(path).resolve()), ray_address=ctx.settings.ray_address)
    return _submit_attempt(ctx, record, spec, submission_id=job_id, on_failure="delete")


def _submit_attempt(
    ctx: Context, record: JobRecord, spec: JobSpec, *, submission_id: str, on_failure: str
) -> JobRecord:
    from .ray_backend import jobs as ray_jobs

    try:
        ray_jobs.submit(ctx.ray_client(), ctx.settings, submission_id=submission_id, job_id=record.id,
                        spec=spec.model_dump(mode="json"), env=driver_env(ctx.settings))
    except Exception as error:  # nothing ran: leave no PENDING row (or fail the resumed one)
        message = f"submission to Ray at {ctx.settings.ray_address} failed: {error}".splitlines()[0]
        if on_failure == "delete":
            ctx.store.delete(record.id)
        else:
            ctx.store.transition(record.id, JobState.FAILED, error=message)
        if isinstance(error, ServiceUnreachableError):
            raise ServiceUnreachableError(RAY, message) from None
        raise OrchestratorError(message) from None
    return ctx.store.transition(record.id, JobState.SUBMITTED, ray_submission_id=submission_id,
                                mlflow_experiment=spec.experiment_name)


def get_job(ctx: Context, job_id: str) -> JobRecord:
    """The job's row, reconciled with Ray and MLflow where they answer (see :func:`report` for what was stale)."""
    record = ctx.store.get(job_id)  # an unknown or ended job needs no Ray client (0.5 s to import)
    if JobState(record.state).is_terminal or not record.ray_submission_id:
        return record
    with bounded_requests():
        return ctx.reconciler().refresh(job_id)


def _state(state: str | None) -> JobState | None:
    if state is None:
        return None
    try:
        return JobState(state.upper())
    except ValueError:
        raise OrchestratorError(f"{state!r} is no job state; choose one of {', '.join(JobState)}") from None


@dataclass(frozen=True)
class JobListing:
    """Jobs, newest first; ``stale`` the ids shown as last known because Ray could not be asked."""

    records: list[JobRecord]
    stale: frozenset[str] = frozenset()
    warnings: tuple[str, ...] = ()


def list_jobs(ctx: Context, state: str | None = None) -> JobListing:
    """Jobs (in ``state``, if given), reconciled first: unfinished ones with Ray, ended ones MLflow has not yet
    learnt of with MLflow; says what it could not reach."""
    wanted = _state(state)
    current = ctx.store.list()
    unfinished = [record for record in current if not JobState(record.state).is_terminal]
    unfinalized = [record for record in current if JobState(record.state).is_terminal and not record.is_settled]
    ray_problem = ctx.unreachable(RAY) if any(record.ray_submission_id for record in unfinished) else None
    to_refresh = ([] if ray_problem else unfinished) + unfinalized
    if to_refresh:
        reconciler = ctx.reconciler()
        with bounded_requests():
            for record in to_refresh:
                reconciler.refresh(record.id)
    records = ctx.store.list(state=wanted)
    stale = frozenset(r.id for r in records if ray_problem and not JobState(r.state).is_terminal)
    warnings = [f"{ray_problem}; states of {len(stale)} unfinished job(s) may be stale"] if stale else []
    if ctx.probes.get(MLFLOW):
        warnings.append(f"{ctx.probes[MLFLOW]}; the MLflow runs of unfinished jobs are not linked yet")
    return JobListing(records, stale, tuple(warnings))


def wait(ctx: Context, job_id: str, on_update: Callable[[JobRecord], None] | None = None,
         timeout: float | None = None) -> JobRecord:
    """Polls until the job ends (or ``timeout`` seconds pass); a poll Ray does not answer changes nothing."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        ctx.probes.clear()  # every poll asks Ray and MLflow afresh
        record = ctx.reconciler().refresh(job_id)
        if on_update is not None:
            on_update(record)
        if JobState(record.state).is_terminal or (deadline is not None and time.monotonic() > deadline):
            return record
        time.sleep(POLL_INTERVAL_S)


def _submission_id(ctx: Context, job_id: str) -> str:
    record = ctx.store.get(job_id)
    if not record.ray_submission_id:
        raise OrchestratorError(f"job '{job_id}' was never submitted to Ray")
    return record.ray_submission_id


@contextlib.contextmanager
def _ray_errors(ctx: Context, what: str) -> Iterator[None]:
    """Ray's failures as one-line errors: a dropped connection is Ray unreachable, a refusal names ``what``."""
    try:
        yield
    except ServiceUnreachableError:
        raise
    except OSError as error:  # requests' ConnectionError among them
        raise ServiceUnreachableError(RAY, f"Ray at {ctx.settings.ray_address}: {what} failed: "
                                      f"{_first_line(error)}") from None
    except RuntimeError as error:  # the Jobs client's "Request failed with status code ..."
        raise OrchestratorError(f"Ray at {ctx.settings.ray_address}: {what} failed: {_first_line(error)}") from None


def job_logs(ctx: Context, job_id: str) -> str:
    submission_id = _submission_id(ctx, job_id)
    from .ray_backend import jobs as ray_jobs

    with _ray_errors(ctx, f"reading the logs of {job_id}"):
        return ray_jobs.logs(ctx.ray_client(), submission_id)


def follow_job_logs(ctx: Context, job_id: str) -> Iterator[str]:
    submission_id = _submission_id(ctx, job_id)
    from .ray_backend import jobs as ray_jobs

    with _ray_errors(ctx, f"following the logs of {job_id}"):
        yield from ray_jobs.follow_logs(ctx.ray_client(), submission_id)


def cancel(ctx: Context, job_id: str, timeout: float = 60.0) -> JobRecord:
    """Stops the Ray job; the row becomes CANCELLED and the MLflow run KILLED."""
    record = get_job(ctx, job_id)
    if JobState(record.state).is_terminal:
        raise OrchestratorError(f"job '{job_id}' already ended ({record.state})")
    from .ray_backend import jobs as ray_jobs

    with _ray_errors(ctx, f"stopping {job_id}"):
        client = ctx.ray_client()
        if record.ray_submission_id:
            ray_jobs.stop(client, record.ray_submission_id)
    record = wait(ctx, job_id, timeout=timeout)
    if not JobState(record.state).is_terminal:
        raise OrchestratorError(f"job '{job_id}' did not stop within {timeout:.0f}s")
    record = ctx.reconciler().link_run(record)
    if record.state == "CANCELLED" and record.mlflow_run_id:
        with contextlib.suppress(TrackingError):  # the job is cancelled either way
            ctx.tracker().end_run(record.mlflow_run_id, "KILLED", unless_finished=True)
    return record


def resume(ctx: Context, job_id: str) -> JobRecord:
    """Resubmits an ended job under the same id: Ray Train restores its last checkpoint."""
    record = get_job(ctx, job_id)
    if record.state not in ("FAILED", "CANCELLED"):
        raise OrchestratorError(f"job '{job_id}' is {record.state}; only FAILED or CANCELLED jobs resume")
    spec = parse_spec(record.spec, source=f"job {job_id}")
    _ensure_reachable(ctx)
    _check_same_ray(ctx, record)
    record = ctx.store.reopen_for_resume(job_id)
    submission_id = f"{job_id}-a{record.attempts}"  # Ray keeps submission ids unique; the run name stays
    return _submit_attempt(ctx, record, spec, submission_id=submission_id, on_failure="fail")


def _check_same_ray(ctx: Context, record: JobRecord) -> None:
    """Refuses to resume a job on a cluster whose Ray minor version differs from the one its run recorded."""
    if not record.mlflow_run_id:
        return
    with _mlflow(ctx) as tracker:
        recorded = tracker.client.get_run(record.mlflow_run_id).data.tags.get(f"{versions.TAG_PREFIX}ray", "")
    try:
        current = read_ray_version(ctx.settings)
    except ConnectionError as error:
        raise ServiceUnreachableError(RAY, str(error)) from None
    if recorded and not versions.same_minor(recorded, current):
        raise OrchestratorError(f"job '{record.id}' ran on Ray {recorded}; the cluster at {ctx.settings.ray_address} "
                                f"runs Ray {current}, whose checkpoints it may not restore: submit it anew")


@dataclass(frozen=True)
class JobReport:
    """A job with what MLflow knows of it; ``stale``: its state is the last known (Ray did not answer)."""

    record: JobRecord
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_url: str = ""
    ray_url: str = ""
    stale: bool = False
    warnings: tuple[str, ...] = ()  # each service this call could not reach, and what of the job it may miss


def report(ctx: Context, record: JobRecord) -> JobReport:
    """The job with its run's metrics and links; what Ray or MLflow could not say is in ``warnings``."""
    warnings = []
    stale = False
    if record.ray_submission_id and not JobState(record.state).is_terminal and ctx.unreachable(RAY):
        stale = True
        warnings.append(f"{ctx.unreachable(RAY)}; state {record.state} is the last known and may be stale")
    metrics: dict[str, float] = {}
    url = ctx.settings.mlflow_uri
    if record.mlflow_run_id:
        try:
            with bounded_requests():
                tracker = ctx.tracker()
                run = tracker.client.get_run(record.mlflow_run_id)
            metrics = dict(run.data.metrics)
            url = tracker.ui_url(run.info.experiment_id, run.info.run_id) or url
        except Exception as error:  # MLflow down or refusing: the job row still reports
            warnings.append(f"{_first_line(error)}; metrics not shown")
    return JobReport(record, metrics, url, f"{ctx.settings.ray_address}/#/jobs/{record.ray_submission_id or ''}",
                     stale, tuple(warnings))


@contextlib.contextmanager
def _mlflow(ctx: Context) -> Iterator[Tracker]:
    """The tracker for a verb that needs MLflow: unreachable at once if it does not answer, its requests bounded,
    its refusals (the tracker's and the MLflow client's own) one-line errors."""
    from mlflow.exceptions import MlflowException

    with bounded_requests():
        tracker = ctx.tracker()
        try:
            yield tracker
        except ServiceUnreachableError:
            raise
        except TrackingError as error:
            raise OrchestratorError(str(error)) from None
        except MlflowException as error:
            raise OrchestratorError(f"MLflow at {ctx.settings.mlflow_uri}: {error.message}".splitlines()[0]) from None


def compare(ctx: Context, experiment: str, metric: str | None = None) -> list[RunSummary]:
    with _mlflow(ctx) as tracker:
        return tracker.run_summaries(experiment, metric=metric)


@dataclass(frozen=True)
class TrialSummary(RunSummary):
    """One trial of a search as ``compare ID`` shows it: its run with the sampled values as params, how it ended."""

    trial_id: str
    outcome: str


def compare_trials(ctx: Context, job_id: str) -> tuple[list[str], list[TrialSummary]]:
    """The searched paths and the trials of search job ``job_id``, best first by its first objective."""
    record = ctx.store.get(job_id)
    spec = parse_spec(record.spec, source=f"job {job_id}", checked=True)
    if spec.hpo is None:
        raise OrchestratorError(f"job '{job_id}' is not a search (its spec has no hpo block); "
                                f"use `compare --experiment {spec.experiment_name}`")
    with _mlflow(ctx) as tracker:
        reconciler = ctx.reconciler()
        record = reconciler.link_run(reconciler.refresh(job_id))
        if not record.mlflow_run_id:
            raise OrchestratorError(f"job '{job_id}' has no MLflow run yet")
        parent = tracker.client.get_run(record.mlflow_run_id)
        children = tracker.trial_runs(parent.info.experiment_id, record.mlflow_run_id)
    paths = list(spec.hpo.space)
    trials = [
        TrialSummary(**{**vars(run_summary(run)), "params": {path: run.data.params.get(path, "") for path in paths}},
                     trial_id=run.data.tags.get(TRIAL_ID_TAG, ""),
                     outcome=run.data.tags.get(TRIAL_END_TAG, "running" if run.info.status == "RUNNING" else ""))
        for run in children
    ]
    objective = spec.objectives[0]
    sign = -1.0 if objective.mode == "max" else 1.0
    trials.sort(key=lambda t: (objective.metric not in t.metrics, sign * t.metrics.get(objective.metric, 0.0)))
    return paths, trials


def promote(ctx: Context, model: str, version: str) -> None:
    with _mlflow(ctx) as tracker:
        tracker.promote(model, version)


@dataclass(frozen=True)
class Check:
    """One line of ``doctor``; ``service``: it probes an outside service (a failure there is exit status 3)."""

    name: str
    ok: bool
    detail: str
    service: bool = False


S3_CONNECT_TIMEOUT_S, S3_REQUEST_TIMEOUT_S = 2.0, 3.0


def _probe_storage(path: str) -> tuple[bool | None, str]:
    """(whether job storage ``path`` works, why): a local folder must be writable, an s3:// bucket must answer
    (through pyarrow, as Ray Train reaches it); None: a scheme this machine does not check."""
    scheme, _, location = path.rpartition("://")
    if not scheme:
        try:
            folder = Path(path)
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            return False, f"not writable ({error.strerror or error})"
        return True, "writable"
    if scheme != "s3":
        return None, f"{scheme}:// is not checked from here (the cluster reaches it when a job writes)"
    from pyarrow import fs

    bucket = location.split("/", 1)[0]
    anonymous = "AWS_ACCESS_KEY_ID" not in os.environ
    try:
        s3 = fs.S3FileSystem(
            endpoint_override=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
            anonymous=anonymous, connect_timeout=S3_CONNECT_TIMEOUT_S, request_timeout=S3_REQUEST_TIMEOUT_S,
            retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=1))
        found = s3.get_file_info(bucket).type != fs.FileType.NotFound
    except OSError as error:
        return False, f"unreachable ({_first_line(error)})"
    if not found:
        return False, f"bucket {bucket!r} does not exist"
    return True, "bucket answers" + (" (asked anonymously: AWS_ACCESS_KEY_ID is unset)" if anonymous else "")


def _require_storage(path: str) -> None:
    """Refuses a job whose storage this machine finds unwritable or unreachable."""
    ok, why = _probe_storage(path)
    if ok is False:
        raise ServiceUnreachableError(STORAGE, f"storage.path {path}: {why}")


def _storage_check(storage: str | None) -> Check:
    if storage is None:
        return Check("storage", False, "no default for jobs on this cluster: set LESA_ORCH_STORAGE or each job's "
                                       "storage.path (s3://...)")
    ok, why = _probe_storage(storage)
    return Check("storage", ok is not False, f"{storage}: {why}", service=True)


def _store_check(settings: Settings) -> Check:
    """Connects and queries the job store without migrating it; its schema must be one this code knows."""
    from alembic.script import ScriptDirectory

    from .store.database import alembic_config, current_revisions
    from .store.models import Job

    where = redact_url(settings.database_url)
    try:
        engine = make_engine(_with_connect_timeout(settings.database_url))
        with engine.connect() as connection:
            revisions = set(current_revisions(connection))
            jobs = connection.execute(select(func.count()).select_from(Job)).scalar_one() if revisions else 0
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        return Check("job store", False, f"{where}: not a usable database URL ({_first_line(error)})")
    except OperationalError as error:
        return Check("job store", False, f"{where} unreachable: {redact_url(_first_line(error.orig or error))}",
                     service=True)
    script = ScriptDirectory.from_config(alembic_config())
    if not revisions:
        return Check("job store", True, f"{where}: empty (its tables are made on first use)", service=True)
    known = {revision.revision for revision in script.walk_revisions()}
    if not revisions <= known:
        return Check("job store", False, f"{where}: schema at {', '.join(sorted(revisions))}, unknown to this "
                                         "lesa-orch (a newer one migrated it)", service=True)
    state = "newest" if revisions == set(script.get_heads()) else "older; the next verb migrates it"
    return Check("job store", True, f"{where}: {jobs} job(s), schema at {', '.join(sorted(revisions))} ({state})",
                 service=True)


def _ray_checks(settings: Settings) -> list[Check]:
    problem = local_services.ray_problem(settings)
    if problem:
        hint = "; run `lesa-orch up`" if settings.embedded_ray and "token" not in problem else ""
        return [Check("ray", False, f"{settings.ray_address} unreachable: {problem}{hint}", service=True)]
    auth = local_services.ray_token_auth_on(settings)
    auth_text = "token auth on" if auth else "token auth OFF: whoever reaches the dashboard can run code on it"
    checks = [Check("ray", True, f"{settings.ray_address}, {auth_text}", service=True)]
    try:
        resources = read_cluster_resources(settings, wait_s=5)
        detail = f"{resources.node_count} node(s), {resources.cpus:g} CPU, {resources.gpus:g} GPU"
        checks.append(Check("cluster resources", resources.cpus > 0, detail))
    except ConnectionError as error:
        checks.append(Check("cluster resources", False, _first_line(error), service=True))
    return checks


def _mlflow_check(settings: Settings) -> Check:
    problem = local_services.mlflow_problem(settings)
    if problem:
        hint = "; run `lesa-orch up`" if settings.embedded_mlflow else ""
        return Check("mlflow", False, f"{settings.mlflow_uri} unreachable: {problem}{hint}", service=True)
    try:
        with bounded_requests():
            Tracker(settings.mlflow_uri).check_api()
    except TrackingError as error:
        return Check("mlflow", False, str(error), service=True)
    return Check("mlflow", True, f"{settings.mlflow_uri} (its API answers)", service=True)


def doctor(settings: Settings) -> list[Check]:
    """Probes the job store, Ray (and whether it wants a token), MLflow's API, storage and the local GPUs, and
    lists the versions of the packages jobs run with. Needs none of them up: each one's failure is its line."""
    checks = [_store_check(settings), *_ray_checks(settings), _mlflow_check(settings),
              _storage_check(settings.default_storage)]
    import torch  # see list_models

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    checks.append(Check("local GPUs", True, f"{gpus} visible" if gpus else "none (CPU training only)"))
    checks.append(Check("packages", True, package_versions().replace(",", " ")))
    return checks


# ----------------------------------------------------------------------------------------------- report


def _report_scope(ctx: Context, tracker: Tracker, target: str) -> tuple[str, str, str]:
    """(experiment name, job id, run id) of a report target: a job id, else an MLflow experiment name."""
    from .store import UnknownJobError

    try:
        record = ctx.reconciler().link_run(ctx.store.get(target))
    except UnknownJobError as unknown:
        if tracker.client.get_experiment_by_name(target) is None:
            hint = " or ".join(repr(s) for s in unknown.suggestions)
            hint = f"; did you mean job {hint}?" if hint else ""
            raise OrchestratorError(f"{target!r} is neither a job id nor an MLflow experiment{hint}") from None
        return target, "", ""
    if not record.mlflow_run_id:
        raise OrchestratorError(f"job '{target}' has no MLflow run yet ({record.state})")
    run = tracker.client.get_run(record.mlflow_run_id)
    return tracker.client.get_experiment(run.info.experiment_id).name, record.id, record.mlflow_run_id


def run_report(
    ctx: Context,
    target: str,
    out_path: str | Path | None = None,
    *,
    on_progress: Callable[[str], None] | None = None,
    on_logged: Callable[[str], None] | None = None,
) -> Path:
    """Writes the HTML report of job ``target`` (its run) or MLflow experiment ``target`` (all its runs).

    The file goes to ``out_path`` (default ``<home>/reports/<target slug>.html``) and is logged to MLflow:
    to the job's run, or to the experiment's best run, under ``reports/``; ``on_logged`` gets its artifact URI.
    """
    progress = on_progress or (lambda message: None)
    settings = ctx.settings
    with _mlflow(ctx) as tracker:
        experiment, job_id, run_id = _report_scope(ctx, tracker, target)
        from . import reporting  # matplotlib and torch load only for this verb, once it has something to report

        data = reporting.collect(tracker, experiment, target=target, run_id=run_id, job_id=job_id, progress=progress)
        if not data.runs:
            raise OrchestratorError(f"MLflow experiment {target!r} has no runs")
        path = Path(out_path) if out_path else settings.home / "reports" / f"{reporting.slug(target)}.html"
        progress(f"writing {path}")
        artifact = reporting.publish(tracker, data, path)
    if artifact and on_logged is not None:
        on_logged(artifact)
    return path
