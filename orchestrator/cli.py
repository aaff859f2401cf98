"""`lesa-orch`: each verb parses its flags, makes one service call and renders the answer.

Every failure is one red line on stderr (``--debug`` or ``LESA_ORCH_DEBUG=1`` shows its traceback instead) and
one of these exit statuses:

- 0: done;
- 1: a user error (a bad job spec, an unknown job id or model) or the job failed;
- 2: a usage error (an unknown flag, a bad ``--state``), as click reports it;
- 3: a service did not answer or refused us: Ray, MLflow, the job database or storage. ``status`` of an unfinished
  job exits 3 too when Ray cannot be asked, after printing the last known state.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from . import service
from .settings import Settings
from .spec import SpecError, spec_json_schema
from .store import InvalidTransitionError, JobRecord, JobState, UnknownJobError

T = TypeVar("T")
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_STATUS_HELP = ("Exit status: 0 done; 1 a user error (bad spec, unknown job or model) or the job failed; "
                    "2 a usage error; 3 Ray, MLflow, the job database or storage unreachable. "
                    "--debug (or LESA_ORCH_DEBUG=1) shows a failure's traceback.")
app = typer.Typer(
    help="Train, tune and track Locally Enhanced Self-Attention (LESA) models on Ray with MLflow.",
    epilog=EXIT_STATUS_HELP,
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ADDRESS_HELP = "Ray dashboard / Jobs API URL (default: RAY_ADDRESS, else the embedded local cluster)."
AddressFlag = Annotated[str | None, typer.Option("--address", help=ADDRESS_HELP)]
SetFlag = Annotated[list[str] | None, typer.Option("--set", help="Override a spec field: --set schedule.epochs=3.")]
JobArg = Annotated[str, typer.Argument(help="Job id (as `lesa-orch list` shows it).")]
USER_ERRORS = (SpecError, service.OrchestratorError, UnknownJobError, InvalidTransitionError)
UNREACHABLE_ERRORS = (service.ServiceUnreachableError, ConnectionError)
DEBUG_ENV = "LESA_ORCH_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def _exit_for(error: Exception) -> tuple[int, str]:
    """The exit status and the one line for a failure."""
    if isinstance(error, UNREACHABLE_ERRORS):
        return EXIT_UNREACHABLE, str(error)
    if isinstance(error, USER_ERRORS):
        return EXIT_ERROR, error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return EXIT_ERROR, f"{type(error).__name__}: {error} (rerun with --debug for the traceback)"


@contextmanager
def _errors() -> Iterator[None]:
    """Turns any failure into one red line and its exit status (with ``--debug``, into its traceback)."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except Exception as error:
        if _debug():
            raise
        status, message = _exit_for(error)
        line = (message.strip().splitlines() or [type(error).__name__])[0]
        errors.print(f"error: {line}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(status) from None


def _warn(warnings: Sequence[str]) -> None:
    for warning in warnings:
        errors.print(f"warning: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)


def _context(address: str | None = None) -> service.Context:
    return service.Context.open(Settings.from_env(ray_address=address))


def _print_json(payload: object) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


STATE_STYLES = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow", "RUNNING": "cyan"}


def _job_table(records: list[JobRecord], stale: frozenset[str] = frozenset()) -> Table:
    """The jobs as a table; a ``stale`` job's state is the last known, marked with a ``?``."""
    table = Table(title="lesa-orch jobs")
    for column in ("id", "task", "state", "attempts", "created", "registered"):
        table.add_column(column, no_wrap=column in ("id", "state"))  # an id is what the next command needs, whole
    for record in records:
        registered = f"{record.registered_model} v{record.registered_version}" if record.registered_version else ""
        mark = "?" if record.id in stale else ""
        table.add_row(record.id, record.task, f"[{STATE_STYLES.get(record.state, 'white')}]{record.state}{mark}[/]",
                      str(record.attempts), f"{record.created_at:%Y-%m-%d %H:%M:%S}", registered)
    return table


def _render_report(job: service.JobReport, *, verbose: bool = True) -> None:
    record = job.record
    style = STATE_STYLES.get(record.state, "white")
    known = " (last known)" if job.stale else ""
    console.print(f"job [bold]{record.id}[/]  [{style}]{record.state}[/]{known}  ({record.task}, attempt "
                  f"{record.attempts})", soft_wrap=True)
    if record.error:
        console.print(f"error: {record.error}", style="red", markup=False)
    interesting = {k: v for k, v in sorted(job.metrics.items()) if k.startswith(("coco/", "val/"))}
    if verbose and interesting:
        table = Table(title="final metrics")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in interesting.items():
            table.add_row(key, f"{value:.4f}")
        console.print(table)
    if record.registered_version:
        console.print(f"registered model: {record.registered_model} version {record.registered_version} "
                      f"(alias candidate; load with models:/{record.registered_model}@candidate)", soft_wrap=True)
    console.print(f"MLflow: {job.mlflow_url}", soft_wrap=True)  # URLs stay whole so terminals can open them
    console.print(f"Ray dashboard: {job.ray_url}", soft_wrap=True)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help=f"Show a failure's traceback instead of its one line "
                                                         f"(also {DEBUG_ENV}=1).")] = False,
) -> None:
    """Train, tune and track Locally Enhanced Self-Attention (LESA) models on Ray with MLflow."""
    if debug:  # the verb's error handler reads it (the processes a verb starts may too)
        os.environ[DEBUG_ENV] = "1"


@app.command()
def models(
    name_filter: Annotated[str, typer.Argument(metavar="[FILTER]", help="Only models whose name contains this.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """List the LESA models registered with timm (use with timm.create_model after `import lesa_core`)."""
    with _errors():
        infos = service.list_models(name_filter)
    if as_json:
        _print_json([info.to_dict() for info in infos])
        return
    if not infos:
        console.print(f"no registered LESA model matches {name_filter!r}", style="yellow")
        raise typer.Exit(EXIT_ERROR)
    table = Table(title="LESA models (timm.create_model(NAME, **lesa_options))")
    table.add_column("name", style="bold")
    table.add_column("params", justify="right")
    table.add_column("input")
    table.add_column("description")
    for info in infos:
        size = "x".join(str(s) for s in info.input_size[1:])
        table.add_row(info.name, f"{info.params / 1e6:.2f}M", size, info.description)
    console.print(table)


@app.command()
def schema() -> None:
    """Print the JSON schema of job specs (for editors and CI checks)."""
    _print_json(spec_json_schema())


@app.command()
def validate(job: Annotated[Path, typer.Argument(help="Job spec YAML.")], set_: SetFlag = None) -> None:
    """Check a job spec without submitting it."""
    with _errors():
        spec = service.validate(job, set_ or ())
    console.print(f"[green]ok[/] {job}: {spec.task} job '{spec.name}', model {spec.model.arch}, "
                  f"{spec.resources.num_workers} worker(s), {spec.schedule.epochs} epochs, "
                  f"metric {spec.primary_metric}")


@app.command()
def up(num_cpus: Annotated[int | None, typer.Option(help="CPUs the local Ray head offers.")] = None) -> None:
    """Start the embedded local Ray head (token auth on) and MLflow server."""
    with _errors():
        settings = Settings.from_env()
        with console.status("starting the local Ray head and MLflow server"):
            status = service.services_up(settings, num_cpus=num_cpus)
    console.print(f"Ray dashboard: {status.ray_address} ({'up' if status.ray_up else 'down'})")
    console.print(f"MLflow: {status.mlflow_uri} ({'up' if status.mlflow_up else 'down'})")


@app.command()
def down() -> None:
    """Stop the embedded local Ray head and MLflow server."""
    with _errors():
        status = service.services_down(Settings.from_env())
    ray_state = "still up" if status.ray_up else "stopped"
    mlflow_state = "still up" if status.mlflow_up else "stopped"
    console.print(f"Ray: {ray_state}; MLflow: {mlflow_state}")


@app.command()
def submit(
    job: Annotated[Path, typer.Argument(help="Job spec YAML.")],
    set_: SetFlag = None,
    address: AddressFlag = None,
    detach: Annotated[bool, typer.Option("--detach", help="Return once submitted instead of following.")] = False,
) -> None:
    """Submit a job to Ray; without --detach, follow it to the end and print its results."""
    with _errors():
        ctx = _context(address)
        with console.status("submitting"):
            record = service.submit(ctx, job, set_ or ())
        console.print(f"submitted [bold]{record.id}[/]")
        if detach:
            return
        last: list[str] = []

        def show(update: JobRecord) -> None:
            if update.state != (last[-1] if last else None):
                last.append(update.state)
                status.update(f"{update.id}: {update.state}")

        with console.status(f"{record.id}: {record.state}") as status:
            record = service.wait(ctx, record.id, on_update=show)
        _render_report(service.report(ctx, record))
    if record.state != "SUCCEEDED":
        raise typer.Exit(EXIT_ERROR)


def _read_verb(render: Callable[[service.Context], None], address: str | None) -> None:
    with _errors():
        render(_context(address))


def _fetch(fetch: Callable[[service.Context], T], address: str | None) -> T:
    """Runs a read-only service call with anything libraries print sent to stderr, so stdout stays clean."""
    with _errors(), contextlib.redirect_stdout(sys.stderr):
        return fetch(_context(address))


@app.command()
def status(job_id: JobArg, as_json: JsonFlag = False, address: AddressFlag = None) -> None:
    """Show a job: state, error, metrics, registered model, links (exit 3 if Ray could not say its state)."""
    job = _fetch(lambda ctx: service.report(ctx, service.get_job(ctx, job_id)), address)
    _warn(job.warnings)
    if as_json:
        _print_json({**job.record.to_dict(), "metrics": job.metrics, "mlflow_url": job.mlflow_url,
                     "ray_url": job.ray_url, "stale": job.stale, "warnings": list(job.warnings)})
    else:
        _render_report(job)
    if job.stale:
        raise typer.Exit(EXIT_UNREACHABLE)


def _job_state(value: str | None) -> str | None:
    if value is None or value.upper() in JobState.__members__:
        return value and value.upper()
    raise typer.BadParameter(f"{value!r} is no job state; choose one of {', '.join(JobState)}")


@app.command(name="list")
def list_(
    state: Annotated[str | None, typer.Option(callback=_job_state, metavar="STATE",
                                              help=f"Only jobs in this state: {', '.join(JobState)}.")] = None,
    as_json: JsonFlag = False,
    address: AddressFlag = None,
) -> None:
    """List jobs, newest first; unfinished ones Ray could not be asked about are marked stale."""
    listing = _fetch(lambda ctx: service.list_jobs(ctx, state), address)
    _warn(listing.warnings)
    if as_json:
        _print_json([{**r.to_dict(), "stale": r.id in listing.stale} for r in listing.records])
    else:
        console.print(_job_table(listing.records, listing.stale))


@app.command()
def logs(
    job_id: JobArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends.")] = False,
    address: AddressFlag = None,
) -> None:
    """Print the driver and worker logs of a job."""
    def render(ctx: service.Context) -> None:
        if follow:
            for chunk in service.follow_job_logs(ctx, job_id):
                typer.echo(chunk, nl=False)
        else:
            typer.echo(service.job_logs(ctx, job_id), nl=False)
    _read_verb(render, address)


@app.command()
def cancel(job_id: JobArg, address: AddressFlag = None) -> None:
    """Stop a running job (CANCELLED here, KILLED in MLflow)."""
    def render(ctx: service.Context) -> None:
        with console.status(f"stopping {job_id}"):
            record = service.cancel(ctx, job_id)
        console.print(f"{record.id}: {record.state}")
    _read_verb(render, address)


@app.command()
def resume(
    job_id: JobArg,
    address: AddressFlag = None,
    detach: Annotated[bool, typer.Option("--detach", help="Return once resubmitted.")] = False,
) -> None:
    """Resubmit a FAILED or CANCELLED job; it continues from its last checkpoint."""
    def render(ctx: service.Context) -> None:
        record = service.resume(ctx, job_id)
        console.print(f"resumed {record.id} (attempt {record.attempts})")
        if not detach:
            with console.status(f"{record.id}: running"):
                record = service.wait(ctx, record.id)
            _render_report(service.report(ctx, record))
            if record.state != "SUCCEEDED":
                raise typer.Exit(EXIT_ERROR)
    _read_verb(render, address)


@app.command()
def compare(
    job_id: Annotated[str | None, typer.Argument(help="A search job: show its trials.", show_default=False)] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment, e.g. lesa/coco/detection.")] = None,
    metric: Annotated[str | None, typer.Option(help="Sort by this metric, best first.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare the runs of an MLflow experiment, or the trials of a search job, in a table."""
    if job_id is None and experiment is None:
        errors.print("error: give a search job id or --experiment NAME", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE)
    if job_id is not None:
        _compare_trials(job_id, as_json)
        return
    runs = _fetch(lambda ctx: service.compare(ctx, experiment, metric), None)
    if as_json:
        _print_json([run.__dict__ for run in runs])
        return
    reported = {key for run in runs for key in run.metrics if key.startswith(("coco/", "val/"))}
    columns = [metric] if metric else sorted(reported)[:6]
    table = Table(title=f"runs of {experiment}")
    for column in ("job", "status", "arch", "fusion", *columns):
        table.add_column(column, no_wrap=column == "job")
    for run in runs:
        values = [f"{run.metrics[c]:.4f}" if c in run.metrics else "" for c in columns]
        table.add_row(run.job_id or run.run_id, run.status, run.params.get("model.arch", ""),
                      run.params.get("model.lesa.fusion", ""), *values)
    console.print(table)


def _compare_trials(job_id: str, as_json: bool) -> None:
    paths, trials = _fetch(lambda ctx: service.compare_trials(ctx, job_id), None)
    if as_json:
        _print_json([trial.__dict__ for trial in trials])
        return
    reported = sorted({key for trial in trials for key in trial.metrics if key.startswith(("coco/", "val/"))})[:4]
    table = Table(title=f"trials of {job_id}")
    for column in ("trial", "end", *paths, *reported, "epochs"):
        table.add_column(column, no_wrap=column == "trial")
    for trial in trials:
        values = [f"{trial.metrics[c]:.4f}" if c in trial.metrics else "" for c in reported]
        epochs = f"{trial.metrics['epoch'] + 1:g}" if "epoch" in trial.metrics else ""
        table.add_row(trial.trial_id, trial.outcome, *(trial.params[p] for p in paths), *values, epochs)
    console.print(table)


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="Registered model, e.g. lesa-detection-lesa_resnet50.")],
    version: Annotated[str, typer.Argument(help="Model version to make champion.")],
) -> None:
    """Point the `champion` alias of a registered model at a version."""
    def render(ctx: service.Context) -> None:
        service.promote(ctx, model, version)
        console.print(f"{model}@champion -> version {version}")
    _read_verb(render, None)


@app.command()
def doctor(address: AddressFlag = None, as_json: JsonFlag = False) -> None:
    """Probe the job store, Ray (and its token auth), MLflow, storage and GPUs, and list package versions.

    Exits 3 when a service is unreachable, 1 when another check fails.
    """
    with _errors():
        checks = service.doctor(Settings.from_env(ray_address=address))
    if as_json:
        _print_json([check.__dict__ for check in checks])
    else:
        for check in checks:
            mark = "[green]ok[/]  " if check.ok else "[red]FAIL[/]"
            console.print(f"{mark} {check.name}: ", end="")
            console.print(check.detail, markup=False, highlight=False, soft_wrap=True)
    failed = [check for check in checks if not check.ok]
    if failed:
        raise typer.Exit(EXIT_UNREACHABLE if any(check.service for check in failed) else EXIT_ERROR)


@app.command()
def report(
    target: Annotated[str, typer.Argument(help="Job id, or MLflow experiment name (e.g. lesa/coco/detection).")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="HTML file to write (default: <LESA_ORCH_HOME>/reports/<target>.html).")] = None,
) -> None:
    """Write a self-contained HTML report of a job's run or an experiment's runs and log it to MLflow."""
    logged: list[str] = []
    with _errors():
        ctx = _context()
        with console.status(f"gathering {target}") as status:
            path = service.run_report(ctx, target, out, on_progress=status.update, on_logged=logged.append)
    console.print(f"report: {path}", soft_wrap=True, markup=False, highlight=False)
    for uri in logged:
        console.print(f"MLflow artifact: {uri}", soft_wrap=True, markup=False, highlight=False)
