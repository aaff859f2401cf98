"""Runs the saved MLflow comparison views of ``views.yaml`` and prints each as a table and a UI link.

    python dashboards/mlflow/show_views.py [--tracking-uri URI] [--view NAME]... [--max-results N]

Each view's filter and order go through ``orchestrator.tracking.Tracker.search_runs`` over the experiments that
``views.yaml`` names. MLflow keeps column and chart choices in the browser, so the links carry what a URL can: the
search filter, the sort and the table or chart mode; README.md lists the columns and charts to add by hand.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Run
from rich.console import Console
from rich.table import Table

from orchestrator.tracking import Tracker

VIEWS_FILE = Path(__file__).with_name("views.yaml")
_COLUMN_KINDS = ("params", "metrics", "tags")


def load_views(path: Path = VIEWS_FILE) -> dict[str, Any]:
    """The views file, checked: unique view names, a filter each, known column kinds, charts on known views."""
    config = yaml.safe_load(path.read_text())
    names = [view["name"] for view in config["views"]]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: view names repeat: {names}")
    for view in config["views"]:
        if not view.get("filter"):
            raise ValueError(f"{path}: view {view['name']} has no filter")
        unknown = set(view.get("columns", {})) - set(_COLUMN_KINDS)
        if unknown:
            raise ValueError(f"{path}: view {view['name']}: unknown column kinds {sorted(unknown)}")
    for chart in config.get("charts", []):
        if chart["view"] not in names:
            raise ValueError(f"{path}: chart {chart['title']!r} uses unknown view {chart['view']!r}")
    return config


def search(tracker: Tracker, view: dict[str, Any], experiments: Sequence[str], max_results: int = 100) -> list[Run]:
    """The runs of one view, in its order."""
    if not experiments:
        return []
    return tracker.search_runs(experiments, filter_string=view["filter"], order_by=view.get("order_by"),
                               max_results=max_results)


def column_names(view: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, key) of each column of a view."""
    columns = view.get("columns", {})
    return [(kind, key) for kind in _COLUMN_KINDS for key in columns.get(kind, [])]


def row(run: Run, columns: Sequence[tuple[str, str]]) -> list[str]:
    """A run's cells: its job id (or name), then each column's value ('' when the run lacks it)."""
    source = {"params": run.data.params, "metrics": run.data.metrics, "tags": run.data.tags}
    cells = [run.data.tags.get("lesa.job_id") or run.info.run_name or run.info.run_id]
    for kind, key in columns:
        value = source[kind].get(key, "")
        cells.append(f"{value:.4g}" if isinstance(value, float) else str(value))
    return cells


def ui_link(tracker: Tracker, experiment_id: str, view: dict[str, Any], mode: str = "TABLE") -> str:
    """The experiment page with the view's filter and first sort key applied; '' without an HTTP server."""
    query = {"searchFilter": view["filter"], "compareRunsMode": mode}
    if view.get("order_by"):
        key, _, direction = view["order_by"][0].rpartition(" ")
        query |= {"orderByKey": key, "orderByAsc": json.dumps(direction.upper() == "ASC")}
    return tracker.ui_url(experiment_id, query=query)


def main(argv: Sequence[str] | None = None) -> None:
    from orchestrator.settings import Settings

    parser = argparse.ArgumentParser(description="Print lesa-orch's saved MLflow comparison views.")
    parser.add_argument("--tracking-uri", default=Settings.from_env().mlflow_uri,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or the embedded server)")
    parser.add_argument("--view", action="append", help="only this view (repeatable); default all")
    parser.add_argument("--max-results", type=int, default=100)
    args = parser.parse_args(argv)

    config = load_views()
    tracker = Tracker(args.tracking_uri)
    experiments = tracker.experiment_ids(config["experiments"])
    console = Console()
    for view in config["views"]:
        if args.view and view["name"] not in args.view:
            continue
        columns = column_names(view)
        table = Table(title=f"{view['name']}: {view.get('title', '')}\n{view['filter']}")
        for header in ("run", *(key for _, key in columns)):
            table.add_column(header)
        runs = search(tracker, view, experiments, args.max_results)
        for run in runs:
            table.add_row(*row(run, columns))
        console.print(table)
        for experiment_id in sorted({run.info.experiment_id for run in runs}):
            link = ui_link(tracker, experiment_id, view)
            if link:
                console.print(link, soft_wrap=True, markup=False, highlight=False)


if __name__ == "__main__":
    main()
