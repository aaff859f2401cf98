"""The pieces a search is built from: Tune domains, Optuna samplers and searcher, ASHA, concurrency."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Quantized, Uniform

from orchestrator.ray_backend.trial import EPOCHS_KEY
from orchestrator.search.searcher import build_scheduler, build_searcher, max_concurrent_trials
from orchestrator.search.space import build_sampler, search_space
from orchestrator.spec import load_spec

TUNE = Path(__file__).resolve().parents[3] / "jobs" / "quickstart_tune.yaml"
EVERY_TYPE = ("hpo.space={model.lesa.fusion: {type: choice, values: [gate, add, none]}, "
              "model.lesa.qk_ratio: {type: uniform, low: 0.25, high: 1.0}, "
              "schedule.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}, "
              "model.lesa.unary_dilation: {type: int, low: 1, high: 3}, "
              "model.lesa.unary_kernel: {type: int, low: 1, high: 7, q: 2}, "
              "schedule.weight_decay: {type: quantized, low: 0.0, high: 0.1, q: 0.025}}")
CONTINUOUS = ("hpo.space={schedule.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}, "
              "schedule.weight_decay: {type: quantized, low: 0.0, high: 0.1, q: 0.025}, "
              "model.lesa.unary_dilation: {type: int, low: 1, high: 3}}")
SMALL_GRID = ["hpo.space={model.lesa.fusion: {type: choice, values: [gate, add]}, "
              "model.lesa.unary_kernel: {type: int, low: 1, high: 5, q: 2}}", "hpo.sampler.type=grid",
              "hpo.num_samples=6"]
TWO_OBJECTIVES = "hpo.objectives=[{metric: val/acc1, mode: max}, {metric: train/images_per_sec, mode: max}]"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _spec(*overrides: str):
    return load_spec(TUNE, list(overrides))


def test_search_space_gives_tune_domains_by_spec_path():
    space = search_space(_spec(EVERY_TYPE).hpo)
    assert isinstance(space["model.lesa.fusion"], Categorical)
    assert space["model.lesa.fusion"].categories == ["gate", "add", "none"]
    qk = space["model.lesa.qk_ratio"]
    assert isinstance(qk, Float) and isinstance(qk.get_sampler(), Uniform) and (qk.lower, qk.upper) == (0.25, 1.0)
    lr = space["schedule.lr"]
    assert isinstance(lr, Float) and isinstance(lr.get_sampler(), LogUniform) and (lr.lower, lr.upper) == (1e-4, 1e-2)
    dilation, kernel = space["model.lesa.unary_dilation"], space["model.lesa.unary_kernel"]
    assert isinstance(dilation, Integer) and (dilation.lower, dilation.upper, dilation.get_sampler().q) == (1, 3, 1)
    assert isinstance(kernel, Integer) and (kernel.lower, kernel.upper, kernel.get_sampler().q) == (1, 7, 2)
    decay = space["schedule.weight_decay"]
    assert isinstance(decay, Float) and isinstance(decay.get_sampler(), Quantized) and decay.get_sampler().q == 0.025


def test_optuna_sees_the_same_space():
    distributions = OptunaSearch.convert_search_space(search_space(_spec(EVERY_TYPE).hpo))
    assert distributions == {
        "model.lesa.fusion": CategoricalDistribution(["gate", "add", "none"]),
        "model.lesa.qk_ratio": FloatDistribution(0.25, 1.0),
        "schedule.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "model.lesa.unary_dilation": IntDistribution(1, 3),  # inclusive of high
        "model.lesa.unary_kernel": IntDistribution(1, 7, step=2),
        "schedule.weight_decay": FloatDistribution(0.0, 0.1, step=0.025),
    }


def _draws(spec, count: int = 5) -> list[dict]:
    """Params of ``count`` trials a fresh in-memory study asks its sampler for (objective: the lr's closeness to
    1e-3, so model-based samplers have something to follow)."""
    distributions = OptunaSearch.convert_search_space(search_space(spec.hpo))
    study = optuna.create_study(sampler=build_sampler(spec.hpo), direction="maximize")
    for _ in range(count):
        trial = study.ask(distributions)
        study.tell(trial, -abs(trial.params["schedule.lr"] - 1e-3))
    return [trial.params for trial in study.trials]


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
     ("cmaes", optuna.samplers.CmaEsSampler)],
)
def test_samplers_are_the_chosen_kind_and_seeded(sampler, cls):
    spec = _spec(CONTINUOUS, f"hpo.sampler.type={sampler}", "hpo.sampler.seed=7")
    assert isinstance(build_sampler(spec.hpo), cls)
    draws = _draws(spec)
    assert draws == _draws(spec)
    assert draws != _draws(_spec(CONTINUOUS, f"hpo.sampler.type={sampler}", "hpo.sampler.seed=8"))


def test_cmaes_samples_jointly_with_the_cmaes_package():
    spec = _spec(CONTINUOUS, "hpo.sampler.type=cmaes")
    distributions = OptunaSearch.convert_search_space(search_space(spec.hpo))
    study = optuna.create_study(sampler=build_sampler(spec.hpo), direction="maximize")
    for _ in range(4):
        trial = study.ask(distributions)
        study.tell(trial, -abs(trial.params["schedule.lr"] - 1e-3))
    # after its one start-up trial, CMA-ES proposes from its own distribution and records its generation
    assert any("cma:generation" in trial.system_attrs for trial in study.trials[1:])


def test_the_grid_searcher_enumerates_exactly_the_grid(tmp_path):
    spec = _spec(*SMALL_GRID)
    assert isinstance(build_sampler(spec.hpo), optuna.samplers.GridSampler)
    searcher = build_searcher(spec, "grid-study", f"sqlite:///{tmp_path / 'optuna.db'}")
    seen = []
    for number in range(spec.hpo.num_samples):
        config = searcher.suggest(f"trial-{number}")
        seen.append((config["model.lesa.fusion"], config["model.lesa.unary_kernel"]))
        searcher.on_trial_complete(f"trial-{number}", {"val/acc1": 0.1 * number, EPOCHS_KEY: 1})
    assert sorted(seen) == sorted(itertools.product(["gate", "add"], [1, 3, 5]))
    study = optuna.load_study(study_name="grid-study", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE] * 6


def test_two_objectives_make_a_multi_objective_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = _spec(TWO_OBJECTIVES, "hpo.sampler.type=random")
    searcher = build_searcher(spec, "pareto", storage)
    for number, (acc, speed) in enumerate([(0.5, 100.0), (0.6, 50.0), (0.4, 40.0)]):
        searcher.suggest(f"t{number}")
        searcher.on_trial_complete(f"t{number}", {"val/acc1": acc, "train/images_per_sec": speed})
    study = optuna.load_study(study_name="pareto", storage=storage)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    assert sorted(trial.values for trial in study.best_trials) == [[0.5, 100.0], [0.6, 50.0]]


@pytest.mark.parametrize(
    ("overrides", "cluster", "expected"),
    [
        ((), {"CPU": 2.0, "memory": 8e9}, 2),  # 1 CPU per trial
        ((), {"CPU": 64.0}, 8),  # never more than num_samples
        ((), {"CPU": 0.5}, 1),  # never 0
        ((), {}, 1),
        (("resources.use_gpu=true", "resources.num_workers=2", "resources.cpus_per_worker=4"),
         {"CPU": 64.0, "GPU": 4.0}, 2),  # GPU-limited
        (("resources.use_gpu=true", "resources.num_workers=2", "resources.cpus_per_worker=4"),
         {"CPU": 12.0, "GPU": 8.0}, 1),  # CPU-limited
        (("resources.use_gpu=true", "resources.gpus_per_worker=0.5"), {"CPU": 16.0, "GPU": 2.0}, 4),
        (("resources.use_gpu=true",), {"CPU": 16.0}, 1),  # no GPU at all: still 1, the cluster check refuses it
        (("hpo.max_concurrent_trials=3",), {"CPU": 64.0}, 3),  # explicit
        (("hpo.max_concurrent_trials=3",), {}, 3),
        (("hpo.max_concurrent_trials=20",), {"CPU": 64.0}, 8),
    ],
)
def test_max_concurrent_trials(overrides, cluster, expected):
    assert max_concurrent_trials(_spec(*overrides), cluster) == expected


def test_asha_counts_epochs_on_the_first_objective():
    scheduler = build_scheduler(_spec("schedule.epochs=9", "hpo.scheduler.grace_period=2",
                                             "hpo.scheduler.reduction_factor=3"))
    assert isinstance(scheduler, ASHAScheduler)
    assert (scheduler._time_attr, scheduler._metric, scheduler._mode) == (EPOCHS_KEY, "val/acc1", "max")
    assert (scheduler._max_t, scheduler._reduction_factor) == (9, 3.0)
    assert min(milestone for milestone, _ in scheduler._brackets[0]._rungs) == 2  # the grace period
    capped = build_scheduler(_spec("schedule.epochs=9", "hpo.scheduler.max_epochs=6",
                                          "hpo.objectives=[{metric: val/loss, mode: min}, {metric: val/acc1}]"))
    assert (capped._max_t, capped._metric, capped._mode) == (6, "val/loss", "min")


def test_fifo_runs_every_trial_to_the_end():
    scheduler = build_scheduler(_spec("hpo.scheduler.type=fifo"))
    assert isinstance(scheduler, FIFOScheduler) and not isinstance(scheduler, ASHAScheduler)


def test_the_imagenet_search_runs_as_many_4_gpu_trials_as_fit(monkeypatch):
    monkeypatch.setenv("IMAGENET_ROOT", "/data/imagenet")
    spec = load_spec(TUNE.parent / "tune_lesa_fusion.yaml")
    assert max_concurrent_trials(spec, {"CPU": 128.0, "GPU": 16.0}) == 4  # 4 x (4 GPUs, 32 CPUs)
    assert max_concurrent_trials(spec, {"CPU": 96.0, "GPU": 16.0}) == 3
    assert max_concurrent_trials(spec, {"CPU": 64.0, "GPU": 8.0}) == 2
