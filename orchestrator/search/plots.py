"""The plots a search leaves on its parent MLflow run, as PNG files.

``optimization_history.png`` (each trial's objective and the best so far), ``param_importances.png`` (Optuna's
fANOVA importances), ``objective_vs_<option>.png`` (the objective against each searched option) and
``speed_vs_objective.png`` (images/s against the objective, the Pareto front marked). Built on matplotlib's Agg
canvas without pyplot; a plot with too little data to say anything is skipped, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from matplotlib.figure import Figure

from ..spec import JobSpec

_OUTCOME_COLOURS = {"completed": "#1f77b4", "stopped_early": "#ff7f0e", "failed": "#d62728"}


def write_study_plots(spec: JobSpec, study: optuna.Study, records: Sequence[Any], directory: str | Path) -> list[Path]:
    """Writes every plot the study has data for into ``directory``; returns their paths."""
    directory = Path(directory)
    objective = spec.objectives[0]
    written = []
    figures = [("optimization_history.png", _history(study, objective.metric, objective.mode)),
               ("param_importances.png", _importances(study)),
               ("speed_vs_objective.png", _speed_vs_objective(records, objective.metric, objective.mode))]
    figures += [(f"objective_vs_{path.replace('.', '_')}.png", _objective_vs_option(records, path, objective.metric))
                for path in spec.hpo.space]
    for name, figure in figures:
        if figure is not None:
            figure.savefig(directory / name, dpi=100, bbox_inches="tight")
            written.append(directory / name)
    return written


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


def _history(study: optuna.Study, metric: str, mode: str) -> Figure | None:
    trials = [t for t in _finished(study) if t.values]
    if not trials:
        return None
    numbers = [t.number for t in trials]
    values = [t.values[0] for t in trials]
    best, running = [], -math.inf if mode == "max" else math.inf
    for value in values:
        running = max(running, value) if mode == "max" else min(running, value)
        best.append(running)
    figure = Figure(figsize=(6, 3.5))
    ax = figure.subplots()
    ax.scatter(numbers, values, label="trial", color="#1f77b4")
    ax.step(numbers, best, where="post", label="best so far", color="#d62728")
    ax.set(xlabel="trial number", ylabel=metric, title="Optimization history")
    ax.legend(loc="best")
    return figure


def _importances(study: optuna.Study) -> Figure | None:
    if len(_finished(study)) < 2:
        return None
    try:
        # fANOVA explicitly: Optuna 5 defaults to PED-ANOVA, which ranks what reaches *low* values
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=lambda t: t.values[0])
    except (RuntimeError, ValueError):  # every trial with the same values, or a single distinct point
        return None
    if not importances:
        return None
    names = list(importances)[::-1]
    figure = Figure(figsize=(6, 0.5 + 0.45 * len(names)))
    ax = figure.subplots()
    ax.barh(names, [importances[n] for n in names], color="#2ca02c")
    ax.set(xlabel="importance (fANOVA)", title="Parameter importances")
    return figure


def _objective_vs_option(records: Sequence[Any], path: str, metric: str) -> Figure | None:
    points = [(r.params.get(path), r.best[metric], r.outcome) for r in records if metric in r.best]
    if not points:
        return None
    figure = Figure(figsize=(5, 3.5))
    ax = figure.subplots()
    numeric = all(isinstance(value, int | float) and not isinstance(value, bool) for value, _, _ in points)
    if numeric:
        xs = [float(value) for value, _, _ in points]
    else:
        labels = sorted({str(value) for value, _, _ in points})
        xs = [labels.index(str(value)) for value, _, _ in points]
        ax.set_xticks(range(len(labels)), labels)
    for outcome, colour in _OUTCOME_COLOURS.items():
        chosen = [(x, y) for x, (_, y, o) in zip(xs, points, strict=True) if o == outcome]
        if chosen:
            ax.scatter(*zip(*chosen, strict=True), color=colour, label=outcome.replace("_", " "))
    if numeric and path.endswith(("lr", "weight_decay")):
        ax.set_xscale("log")
    ax.set(xlabel=path, ylabel=f"best {metric}", title=f"{metric} against {path}")
    ax.legend(loc="best", fontsize="small")
    return figure


def pareto_front(points: Sequence[tuple[float, float]], mode: str) -> list[int]:
    """Indices of the points no other point beats on both speed (higher) and objective (``mode``)."""
    sign = 1.0 if mode == "max" else -1.0
    front = []
    for i, (speed, value) in enumerate(points):
        dominated = any(
            other_speed >= speed and sign * other_value >= sign * value
            and (other_speed > speed or sign * other_value > sign * value)
            for j, (other_speed, other_value) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _speed_vs_objective(records: Sequence[Any], metric: str, mode: str) -> Figure | None:
    chosen = [r for r in records if metric in r.best and math.isfinite(r.images_per_sec)]
    if not chosen:
        return None
    points = [(r.images_per_sec, r.best[metric]) for r in chosen]
    front = sorted(pareto_front(points, mode), key=lambda i: points[i][0])
    figure = Figure(figsize=(5.5, 3.8))
    ax = figure.subplots()
    ax.scatter(*zip(*points, strict=True), color="#7f7f7f", label="trial")
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "o-", color="#d62728",
            label="Pareto front")
    ax.set(xlabel="train images/s", ylabel=f"best {metric}", title="Speed against accuracy")
    ax.legend(loc="best")
    return figure
