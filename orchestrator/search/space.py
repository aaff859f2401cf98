"""The search space as Tune domains, and the Optuna sampler that draws from it."""

from __future__ import annotations

from typing import Any

import optuna
from ray import tune

from ..spec import HpoSection, SearchDimension


def search_space(hpo: HpoSection) -> dict[str, Any]:
    """Tune domains keyed by the dotted spec path."""
    return {path: _domain(dimension) for path, dimension in hpo.space.items()}


def _domain(dimension: SearchDimension) -> Any:
    low, high = dimension.low, dimension.high
    if dimension.type == "choice":
        return tune.choice(list(dimension.values or []))
    if dimension.type == "uniform":
        return tune.uniform(low, high)
    if dimension.type == "loguniform":
        return tune.loguniform(low, high)
    if dimension.type == "int":
        return tune.qrandint(int(low), int(high), int(dimension.q or 1))  # inclusive of high
    return tune.quniform(low, high, dimension.q)


def build_sampler(hpo: HpoSection) -> optuna.samplers.BaseSampler:
    """The ``hpo.sampler`` kind (TPE, random, CMA-ES or grid), seeded."""
    seed = hpo.sampler.seed
    if hpo.sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if hpo.sampler.type == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if hpo.sampler.type == "grid":
        return optuna.samplers.GridSampler({path: d.grid_points() for path, d in hpo.space.items()}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)
