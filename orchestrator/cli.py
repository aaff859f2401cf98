"""`lesa-orch`: each verb parses its flags, makes one service call and renders the answer.

Errors a user can fix print one red line and exit 1 (2 for usage errors, as click does).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from . import service
from .settings import Settings
from .spec import SpecError, spec_json_schema
from .store import InvalidTransitionError, JobRecord, UnknownJobError

T = TypeVar("T")
app = typer.Typer(
    help="Train, tune and track Locally Enhanced Self-Attention (LESA) models on Ray with MLflow.",
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
USER_ERRORS = (SpecError, service.OrchestratorError, UnknownJobError, InvalidTransitionError, ConnectionError)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turns expected failures into one red line and exit status 1."""
    try:
        yield
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        errors.print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _context(address: str | None = None) -> service.Context:
    return service.Context.open(Settings.from_env(ray_address=address))


def _print_json(payload: object) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


STATE_STYLES = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow", "RUNNING": "cyan"}


def _job_table(records: list[JobRecord]) -> Table:
    table = Table(title="lesa-orch jobs")
    for column in ("id", "task", "state", "attempts", "created", "registered"):
        table.add_column(column, no_wrap=column in ("id", "state"))  # an id is what the next command needs, whole
    for record in records:
        registered = f"{record.registered_model} v{record.registered_version}" if record.registered_version else ""
        table.add_row(record.id, record.task, f"[{STATE_STYLES.get(record.state, 'white')}]{record.state}[/]",
                      str(record.attempts), f"{record.created_at:%Y-%m-%d %H:%M:%S}", registered)
    return table


def _render_report(job: service.JobReport, *, verbose: bool = True) -> None:
    record = job.record
    style = STATE_STYLES.get(record.state, "white")
    console.print(f"job [bold]{record.id}[/]  [{style}]{record.state}[/]  ({record.task}, attempt {record.attempts})",
                  soft_wrap=True)
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
def main() -> None:
    """Train, tune and track Locally Enhanced Self-Attention (LESA) models on Ray with MLflow."""


@app.command()
def models(
    name_filter: Annotated[str, typer.Argument(metavar="[FILTER]", help="Only models whose name contains this.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """List the LESA models registered with timm (use with timm.create_model after `import lesa_core`)."""
    infos = service.list_models(name_filter)
    if as_json:
        _print_json([info.to_dict() for info in infos])
        return
    if not infos:
        console.print(f"no registered LESA model matches {name_filter!r}", style="yellow")
        raise typer.Exit(1)
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
    with _user_errors():
        spec = service.validate(job, set_ or ())
    console.print(f"[green]ok[/] {job}: {spec.task} job '{spec.name}', model {spec.model.arch}, "
                  f"{spec.resources.num_workers} worker(s), {spec.schedule.epochs} epochs, "
                  f"metric {spec.primary_metric}")


@app.command()
def up(num_cpus: Annotated[int | None, typer.Option(help="CPUs the local Ray head offers.")] = None) -> None:
    """Start the embedded local Ray head (token auth on) and MLflow server."""
    settings = Settings.from_env()
    with _user_errors(), console.status("starting the local Ray head and MLflow server"):
        status = service.services_up(settings, num_cpus=num_cpus)
    console.print(f"Ray dashboard: {status.ray_address} ({'up' if status.ray_up else 'down'})")
    console.print(f"MLflow: {status.mlflow_uri} ({'up' if status.mlflow_up else 'down'})")


@app.command()
def down() -> None:
    """Stop the embedded local Ray head and MLflow server."""
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
    with _user_errors():
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
            raise typer.Exit(1)


def _read_verb(render: Callable[[service.Context], None], address: str | None) -> None:
    with _user_errors():
        render(_context(address))


def _fetch(fetch: Callable[[service.Context], T], address: str | None) -> T:
    """Runs a read-only service call with anything libraries print sent to stderr, so stdout stays clean."""
    with _user_errors(), contextlib.redirect_stdout(sys.stderr):
        return fetch(_context(address))


@app.command()
def status(job_id: JobArg, as_json: JsonFlag = False, address: AddressFlag = None) -> None:
    """Show a job: state, error, metrics, registered model, links."""
    job = _fetch(lambda ctx: service.report(ctx, service.get_job(ctx, job_id)), address)
    if as_json:
        _print_json({**job.record.to_dict(), "metrics": job.metrics, "mlflow_url": job.mlflow_url,
                     "ray_url": job.ray_url})
    else:
        _render_report(job)


@app.command(name="list")
def list_(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state (e.g. RUNNING).")] = None,
    as_json: JsonFlag = False,
    address: AddressFlag = None,
) -> None:
    """List jobs, newest first."""
    records = _fetch(lambda ctx: service.list_jobs(ctx, state.upper() if state else None), address)
    if as_json:
        _print_json([r.to_dict() for r in records])
    else:
        console.print(_job_table(records))


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
                raise typer.Exit(1)
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
        raise typer.Exit(2)
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
    """Check the job store, Ray, MLflow, storage and GPUs, and say what is wrong."""
    ctx = _context(address)
    checks = service.doctor(ctx)
    if as_json:
        _print_json([check.__dict__ for check in checks])
    else:
        for check in checks:
            mark = "[green]ok[/]  " if check.ok else "[red]FAIL[/]"
            console.print(f"{mark} {check.name}: {check.detail}")
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


@app.command()
def report(
    target: Annotated[str, typer.Argument(help="Job id, or MLflow experiment name (e.g. lesa/coco/detection).")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="HTML file to write (default: <LESA_ORCH_HOME>/reports/<target>.html).")] = None,
) -> None:
    """Write a self-contained HTML report of a job's run or an experiment's runs and log it to MLflow."""
    logged: list[str] = []
    with _user_errors():
        ctx = _context()
        with console.status(f"gathering {target}") as status:
            path = service.run_report(ctx, target, out, on_progress=status.update, on_logged=logged.append)
    console.print(f"report: {path}", soft_wrap=True, markup=False, highlight=False)
    for uri in logged:
        console.print(f"MLflow artifact: {uri}", soft_wrap=True, markup=False, highlight=False)
