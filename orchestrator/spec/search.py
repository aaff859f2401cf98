"""Search checks: every value a trial of ``hpo`` can get makes a valid job, before anything reaches the cluster."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from lesa_core.metrics import names

from .overrides import SpecError, set_override
from .schema import JobSpec, SearchDimension

# fields a search may not vary: they name the job or decide where and how it runs
UNSEARCHABLE = ("name", "task", "hpo", "eval", "storage", "tracking", "resources", "fault_tolerance", "data.root",
                "data.format", "data.generate")


def probe_values(dimension: SearchDimension) -> list[Any]:
    """Values that stand for all a trial can get: every choice; for a range both ends, the first step (catches
    odd/even rules) and a middle point; for a continuous one two inside points off any step (catch an int field)."""
    if dimension.type == "choice":
        return list(dimension.values or [])
    low, high, q = dimension.low, dimension.high, dimension.q
    if dimension.type == "int":
        points = dimension.grid_points() or []
        probes = [points[0], points[1], points[len(points) // 2], points[-1]]
    elif dimension.type == "quantized":
        steps = math.floor((high - low) / q + 1e-9)
        probes = [low + k * q for k in (0, 1, steps // 2, steps)]
    elif dimension.type == "loguniform":  # golden sections in log space
        probes = [low * (high / low) ** fraction for fraction in (0, 0.381966, 0.618034)] + [high]
    else:
        probes = [low + fraction * (high - low) for fraction in (0, 0.381966, 0.618034)] + [high]
    return list(dict.fromkeys(probes))


def _shown(value: Any) -> str:
    """A probed value as ``--set`` would write it."""
    return value if isinstance(value, str) else json.dumps(value)


def check_search(spec: JobSpec, check_trial: Callable[[JobSpec], None]) -> None:
    """Every searched path exists and may be searched, every value a trial can get makes a valid job, the objectives
    are reported and the scheduler fits the schedule (nothing to check without ``hpo``).

    Args:
        spec: the search.
        check_trial: the checks a plain job passes beyond its schema (the model builds, ...), run on each probed
            trial; raises ValueError.

    Raises:
        ValueError: the message starts with the ``hpo`` field at fault, ``hpo.space.<path>=<value>`` for a value.
    """
    hpo = spec.hpo
    if hpo is None:
        return
    objective_metrics = names.OBJECTIVE_METRICS[spec.task]
    for objective in hpo.objectives:
        if objective.metric not in objective_metrics:
            raise ValueError(f"hpo.objectives: {objective.metric!r} is never reported by a {spec.task} job; "
                             f"choose one of {', '.join(objective_metrics)}")
    if len({objective.metric for objective in hpo.objectives}) != len(hpo.objectives):
        raise ValueError("hpo.objectives: the two objectives are the same metric")
    if spec.eval.every_epochs != 1:
        raise ValueError(f"eval.every_epochs={spec.eval.every_epochs}: a search compares trials every epoch, so it "
                         "must be 1")
    max_epochs = hpo.scheduler.max_epochs or spec.schedule.epochs
    if max_epochs > spec.schedule.epochs:
        raise ValueError(f"hpo.scheduler.max_epochs={max_epochs} exceeds schedule.epochs={spec.schedule.epochs}")
    if hpo.scheduler.type == "asha" and hpo.scheduler.grace_period > max_epochs:
        raise ValueError(f"hpo.scheduler.grace_period={hpo.scheduler.grace_period} exceeds the {max_epochs} "
                         "epochs a trial runs, so nothing could be stopped early")
    if hpo.sampler.type == "grid" and hpo.num_samples > hpo.grid_size():
        raise ValueError(f"hpo.num_samples={hpo.num_samples} exceeds the {hpo.grid_size()} points of the grid")
    base = spec.model_dump(mode="json")
    base.pop("hpo")
    for path, dimension in hpo.space.items():
        where = f"hpo.space.{path}"
        blocked = next((p for p in UNSEARCHABLE if path == p or path.startswith(p + ".")), None)
        if blocked:
            raise ValueError(f"{where}: {blocked} cannot be searched (it decides where and how the job runs)")
        for value in probe_values(dimension):
            trial = copy.deepcopy(base)
            try:
                set_override(trial, f"{path}={json.dumps(value)}")
            except SpecError as error:
                raise ValueError(f"{where}: {str(error).split(': ', 1)[1]}") from None
            try:
                trial_spec = JobSpec.model_validate(trial)
            except ValidationError as error:
                problem = error.errors()[0]
                location = ".".join(str(part) for part in problem["loc"])
                raise ValueError(f"{where}={_shown(value)}: {location + ': ' if location else ''}"
                                 f"{problem['msg'].removeprefix('Value error, ')}") from None
            try:
                check_trial(trial_spec)
            except ValueError as error:
                raise ValueError(f"{where}={_shown(value)}: {error}") from None
