"""The operations behind the CLI verbs. No CLI library in here: other front ends can call these.

Every verb takes a :class:`Context` (settings + job store) and returns plain data. Errors a user can fix
are :class:`OrchestratorError` subclasses (or :class:`~orchestrator.spec.SpecError`) with one-line
messages; a failed submission leaves no PENDING row behind.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .ray_backend import jobs as ray_jobs
from .ray_backend import local_services
from .ray_backend.cluster import check_fits, read_cluster_resources
from .reconcile import Reconciler
from .settings import Settings
from .spec import JobSpec, SpecError, load_spec, parse_spec
from .store import JobRecord, JobState, JobStore, make_engine, upgrade
from .tracking import TRIAL_END_TAG, TRIAL_ID_TAG, RunSummary, Tracker, TrackingError, run_summary

POLL_INTERVAL_S = 2.0


class OrchestratorError(RuntimeError):
    """A problem the user can act on; the message is one line."""


@dataclass
class Context:
    """Settings and the job store of one CLI invocation."""

    settings: Settings
    store: JobStore

    @classmethod
    def open(cls, settings: Settings | None = None) -> Context:
        settings = settings or Settings.from_env()
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.database_url)
        upgrade(engine)
        return cls(settings, JobStore(engine))

    def tracker(self) -> Tracker:
        return Tracker(self.settings.mlflow_uri)

    def reconciler(self) -> Reconciler:
        return Reconciler(self.store, lambda: ray_jobs.connect(self.settings), self.tracker)


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
    spec = load_spec(path, overrides)
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


def _ensure_reachable(settings: Settings) -> None:
    """The embedded services start on demand; a configured cluster or server must already answer."""
    if (settings.embedded_ray and not local_services.ray_is_up(settings)) or (
        settings.embedded_mlflow and not local_services.mlflow_is_up(settings)
    ):
        services_up(settings)
    if not local_services.ray_is_up(settings):
        raise OrchestratorError(f"Ray at {settings.ray_address} is unreachable (or refused the auth token)")
    if not local_services.mlflow_is_up(settings):
        raise OrchestratorError(f"MLflow at {settings.mlflow_uri} is unreachable")


# ------------------------------------------------------------------------------------------------- jobs


def new_job_id(name: str) -> str:
    return f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _git_commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _resolve_spec(spec: JobSpec, settings: Settings) -> JobSpec:
    """Fills what the spec leaves to the deployment (storage path) and makes local paths absolute."""
    raw = spec.model_dump(mode="json")
    raw["storage"]["path"] = raw["storage"]["path"] or settings.default_storage
    if not raw["storage"]["path"]:
        raise SpecError(f"storage.path: unset, and the cluster at {settings.ray_address} cannot write to this "
                        "machine; set storage.path (e.g. s3://lesa-checkpoints) or LESA_ORCH_STORAGE")
    for section, key in (("data", "root"), ("storage", "path"), ("model", "pretrained")):
        value = raw[section][key]
        if value and "://" not in value:
            raw[section][key] = str(Path(value).expanduser().resolve())
    return parse_spec(raw, source="resolved spec")


def driver_env(settings: Settings) -> dict[str, str]:
    """Environment of a job driver on the settings' cluster: MLflow and Optuna URLs, the commit, the Ray token."""
    env = {"MLFLOW_TRACKING_URI": settings.cluster_mlflow_uri, "LESA_ORCH_OPTUNA_URL": settings.optuna_url,
           "LESA_GIT_COMMIT": _git_commit(), "LESA_ORCH_HOME": str(settings.home)}
    if settings.embedded_ray:
        env.update(local_services.ray_auth_env(settings))
        # one local machine is never preempted; the watcher is one more actor to start with every run
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    return env


def submit(ctx: Context, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobRecord:
    """Validates, checks the cluster can run it, records the job (PENDING) and submits it (SUBMITTED)."""
    spec = _resolve_spec(validate(path, overrides), ctx.settings)
    _ensure_reachable(ctx.settings)
    try:
        check_fits(spec, read_cluster_resources(ctx.settings))
    except ValueError as error:
        raise OrchestratorError(f"{path}: {error}") from None
    job_id = new_job_id(spec.name)
    record = ctx.store.create(job_id, name=spec.name, task=spec.task, spec=spec.model_dump(mode="json"),
                              spec_path=str(Path(path).resolve()), ray_address=ctx.settings.ray_address)
    return _submit_attempt(ctx, record, spec, submission_id=job_id, on_failure="delete")


def _submit_attempt(
    ctx: Context, record: JobRecord, spec: JobSpec, *, submission_id: str, on_failure: str
) -> JobRecord:
    try:
        client = ray_jobs.connect(ctx.settings)
        ray_jobs.submit(client, ctx.settings, submission_id=submission_id, job_id=record.id,
                        spec=spec.model_dump(mode="json"), env=driver_env(ctx.settings))
    except Exception as error:  # nothing ran: leave no PENDING row (or fail the resumed one)
        message = f"submission to Ray at {ctx.settings.ray_address} failed: {error}".splitlines()[0]
        if on_failure == "delete":
            ctx.store.delete(record.id)
        else:
            ctx.store.transition(record.id, JobState.FAILED, error=message)
        raise OrchestratorError(message) from None
    return ctx.store.transition(record.id, JobState.SUBMITTED, ray_submission_id=submission_id,
                                mlflow_experiment=spec.experiment_name)


def get_job(ctx: Context, job_id: str) -> JobRecord:
    return ctx.reconciler().refresh(job_id)


def list_jobs(ctx: Context, state: str | None = None) -> list[JobRecord]:
    reconciler = ctx.reconciler()
    for record in ctx.store.list():
        if not JobState(record.state).is_terminal:
            reconciler.refresh(record.id)
    return ctx.store.list(state=state)


def wait(ctx: Context, job_id: str, on_update: Callable[[JobRecord], None] | None = None,
         timeout: float | None = None) -> JobRecord:
    """Polls until the job ends (or ``timeout`` seconds pass)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        record = ctx.reconciler().refresh(job_id)
        if on_update is not None:
            on_update(record)
        if JobState(record.state).is_terminal or (deadline is not None and time.monotonic() > deadline):
            return record
        time.sleep(POLL_INTERVAL_S)


def job_logs(ctx: Context, job_id: str) -> str:
    record = ctx.store.get(job_id)
    if not record.ray_submission_id:
        raise OrchestratorError(f"job '{job_id}' was never submitted to Ray")
    return ray_jobs.logs(ray_jobs.connect(ctx.settings), record.ray_submission_id)


def follow_job_logs(ctx: Context, job_id: str) -> Iterator[str]:
    record = ctx.store.get(job_id)
    if not record.ray_submission_id:
        raise OrchestratorError(f"job '{job_id}' was never submitted to Ray")
    yield from ray_jobs.follow_logs(ray_jobs.connect(ctx.settings), record.ray_submission_id)


def cancel(ctx: Context, job_id: str, timeout: float = 60.0) -> JobRecord:
    """Stops the Ray job; the row becomes CANCELLED and the MLflow run KILLED."""
    record = ctx.reconciler().refresh(job_id)
    if JobState(record.state).is_terminal:
        raise OrchestratorError(f"job '{job_id}' already ended ({record.state})")
    client = ray_jobs.connect(ctx.settings)
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
    record = ctx.reconciler().refresh(job_id)
    if record.state not in ("FAILED", "CANCELLED"):
        raise OrchestratorError(f"job '{job_id}' is {record.state}; only FAILED or CANCELLED jobs resume")
    spec = parse_spec(record.spec, source=f"job {job_id}")
    _ensure_reachable(ctx.settings)
    record = ctx.store.reopen_for_resume(job_id)
    submission_id = f"{job_id}-a{record.attempts}"  # Ray keeps submission ids unique; the run name stays
    return _submit_attempt(ctx, record, spec, submission_id=submission_id, on_failure="fail")


@dataclass(frozen=True)
class JobReport:
    """A job with what MLflow knows of it."""

    record: JobRecord
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_url: str = ""
    ray_url: str = ""


def report(ctx: Context, record: JobRecord) -> JobReport:
    metrics: dict[str, float] = {}
    url = ctx.settings.mlflow_uri
    if record.mlflow_run_id:
        try:
            run = ctx.tracker().client.get_run(record.mlflow_run_id)
            metrics = dict(run.data.metrics)
            url = ctx.tracker().ui_url(run.info.experiment_id, run.info.run_id) or url
        except Exception:  # MLflow may be down; the job row still reports
            pass
    return JobReport(record, metrics, url, f"{ctx.settings.ray_address}/#/jobs/{record.ray_submission_id or ''}")


@contextlib.contextmanager
def _tracking_errors() -> Iterator[None]:
    """MLflow's failures as this layer's one-line errors."""
    try:
        yield
    except TrackingError as error:
        raise OrchestratorError(str(error)) from None


def compare(ctx: Context, experiment: str, metric: str | None = None) -> list[RunSummary]:
    with _tracking_errors():
        return ctx.tracker().run_summaries(experiment, metric=metric)


@dataclass(frozen=True)
class TrialSummary(RunSummary):
    """One trial of a search as ``compare ID`` shows it: its run with the sampled values as params, how it ended."""

    trial_id: str
    outcome: str


def compare_trials(ctx: Context, job_id: str) -> tuple[list[str], list[TrialSummary]]:
    """The searched paths and the trials of search job ``job_id``, best first by its first objective."""
    reconciler = ctx.reconciler()
    record = reconciler.link_run(reconciler.refresh(job_id))
    spec = parse_spec(record.spec, source=f"job {job_id}")
    if spec.hpo is None:
        raise OrchestratorError(f"job '{job_id}' is not a search (its spec has no hpo block); "
                                f"use `compare --experiment {spec.experiment_name}`")
    if not record.mlflow_run_id:
        raise OrchestratorError(f"job '{job_id}' has no MLflow run yet")
    tracker = ctx.tracker()
    try:
        parent = tracker.client.get_run(record.mlflow_run_id)
        children = tracker.trial_runs(parent.info.experiment_id, record.mlflow_run_id)
    except Exception as error:
        raise OrchestratorError(f"MLflow at {ctx.settings.mlflow_uri}: {error}".splitlines()[0]) from None
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
    with _tracking_errors():
        ctx.tracker().promote(model, version)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _storage_check(storage: str | None) -> Check:
    """A local default storage folder must be writable; a remote one (s3://) is the cluster's to reach."""
    if storage is None:
        return Check("storage", False, "no default for jobs on this cluster: set LESA_ORCH_STORAGE or each job's "
                                       "storage.path (s3://...)")
    if "://" in storage:
        return Check("storage", True, f"{storage} (remote; checked by the cluster when a job writes)")
    try:
        folder = Path(storage)
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
        return Check("storage", True, storage)
    except OSError as error:
        return Check("storage", False, f"{storage}: {error.strerror}")


def doctor(ctx: Context) -> list[Check]:
    """Checks the store, Ray, MLflow, storage and GPUs and says what is wrong."""
    settings = ctx.settings
    checks = [Check("job store", True, settings.database_url)]
    ray_ok = local_services.ray_is_up(settings)
    hint = " (run `lesa-orch up`)" if settings.embedded_ray else ""
    checks.append(Check("ray", ray_ok, settings.ray_address if ray_ok else f"{settings.ray_address} unreachable{hint}"))
    if ray_ok:
        try:
            resources = read_cluster_resources(settings)
            detail = f"{resources.node_count} node(s), {resources.cpus:g} CPU, {resources.gpus:g} GPU"
            checks.append(Check("cluster resources", resources.cpus > 0, detail))
        except ConnectionError as error:
            checks.append(Check("cluster resources", False, str(error)))
    mlflow_ok = local_services.mlflow_is_up(settings)
    mlflow_detail = settings.mlflow_uri if mlflow_ok else f"{settings.mlflow_uri} unreachable"
    checks.append(Check("mlflow", mlflow_ok, mlflow_detail))
    checks.append(_storage_check(settings.default_storage))
    import torch  # see list_models

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    checks.append(Check("local GPUs", True, f"{gpus} visible" if gpus else "none (CPU training only)"))
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
    from mlflow.exceptions import MlflowException

    from . import reporting  # matplotlib and torch load only for this verb

    progress = on_progress or (lambda message: None)
    settings = ctx.settings
    if settings.mlflow_uri.startswith(("http://", "https://")) and not local_services.mlflow_is_up(settings):
        hint = " (run `lesa-orch up`)" if settings.embedded_mlflow else ""
        raise OrchestratorError(f"MLflow at {settings.mlflow_uri} is unreachable{hint}")
    tracker = ctx.tracker()
    try:
        experiment, job_id, run_id = _report_scope(ctx, tracker, target)
        data = reporting.collect(tracker, experiment, target=target, run_id=run_id, job_id=job_id, progress=progress)
        if not data.runs:
            raise OrchestratorError(f"MLflow experiment {target!r} has no runs")
        path = Path(out_path) if out_path else settings.home / "reports" / f"{reporting.slug(target)}.html"
        progress(f"writing {path}")
        artifact = reporting.publish(tracker, data, path)
    except MlflowException as error:
        raise OrchestratorError(f"MLflow at {settings.mlflow_uri}: {error.message}".splitlines()[0]) from None
    if artifact and on_logged is not None:
        on_logged(artifact)
    return path
