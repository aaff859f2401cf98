"""`lesa-orch`: each verb parses its flags, makes one service call and renders the answer."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from . import service

app = typer.Typer(
    help="Train, tune and track Locally Enhanced Self-Attention (LESA) models.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.callback()
def main() -> None:
    """Train, tune and track Locally Enhanced Self-Attention (LESA) models."""


@app.command()
def models(
    name_filter: str = typer.Argument("", metavar="[FILTER]", help="Only models whose name contains this."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the LESA models registered with timm (use with timm.create_model after `import lesa_core`)."""
    infos = service.list_models(name_filter)
    if as_json:
        typer.echo(json.dumps([info.to_dict() for info in infos], indent=2))
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
