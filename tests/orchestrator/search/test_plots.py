"""Study plots from a real in-memory Optuna study, and the Pareto front they mark."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from PIL import Image

from orchestrator.search import plots
from orchestrator.search.plots import pareto_front, write_study_plots
from orchestrator.search.summary import TrialRecord
from orchestrator.spec import load_spec

TUNE = Path(__file__).resolve().parents[3] / "jobs" / "quickstart_tune.yaml"
DISTRIBUTIONS = {
    "model.lesa.fusion": CategoricalDistribution(["gate", "add", "gate_both"]),
    "model.lesa.unary_kernel": CategoricalDistribution([1, 3, 5]),
    "model.lesa.fusion_shrink": CategoricalDistribution([1, 2, 4]),
    "schedule.lr": FloatDistribution(1e-4, 1e-2, log=True),
}
# (fusion, kernel, shrink, lr, val/acc1, images/s, outcome)
TRIALS = [
    ("gate", 3, 2, 2e-3, 0.42, 310.0, "completed"),
    ("add", 1, 1, 5e-4, 0.30, 420.0, "completed"),
    ("gate_both", 5, 4, 8e-3, 0.18, 250.0, "stopped_early"),
    ("gate", 5, 2, 1e-3, 0.47, 240.0, "completed"),
    ("add", 3, 4, 2e-4, 0.22, 330.0, "stopped_early"),
    ("gate_both", 1, 1, 4e-3, 0.35, 400.0, "completed"),
]
RED = (214, 39, 40)  # the Pareto front's and the best-so-far line's colour


@pytest.mark.parametrize(
    ("points", "mode", "front"),
    [
        ([(100.0, 0.5), (50.0, 0.6), (40.0, 0.4), (100.0, 0.5), (120.0, 0.3)], "max", [0, 1, 3, 4]),  # equal: both
        ([(100.0, 0.5), (100.0, 0.6)], "max", [1]),  # as fast and better beats it
        ([(100.0, 0.5), (50.0, 0.3), (40.0, 0.6), (100.0, 0.4)], "min", [1, 3]),  # a loss: lower is better
        ([(10.0, 1.0)], "max", [0]),
        ([], "max", []),
    ],
)
def test_pareto_front(points, mode, front):
    assert pareto_front(points, mode) == front


def _study_and_records(rows) -> tuple[optuna.Study, list[TrialRecord]]:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    records = []
    for number, (fusion, kernel, shrink, lr, acc, speed, outcome) in enumerate(rows):
        params = {"model.lesa.fusion": fusion, "model.lesa.unary_kernel": kernel, "model.lesa.fusion_shrink": shrink,
                  "schedule.lr": lr}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=DISTRIBUTIONS, value=acc))
        records.append(TrialRecord(trial_id=f"t{number}", params=params, outcome=outcome,
                                   epochs=4 if outcome == "completed" else 1, best={"val/acc1": acc},
                                   images_per_sec=speed, train_time_s=12.0, best_checkpoint=f"/ckpt/t{number}"))
    return study, records


def _colours(path: Path) -> set[tuple[int, int, int]]:
    with Image.open(path) as image:
        image.load()
        return {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 24)}


def test_write_study_plots_writes_every_plot_as_a_real_png(tmp_path):
    spec = load_spec(TUNE)
    study, records = _study_and_records(TRIALS)
    written = write_study_plots(spec, study, records, tmp_path)
    expected = {"optimization_history.png", "param_importances.png", "speed_vs_objective.png",
                "objective_vs_model_lesa_fusion.png", "objective_vs_model_lesa_unary_kernel.png",
                "objective_vs_model_lesa_fusion_shrink.png", "objective_vs_schedule_lr.png"}
    assert {path.name for path in written} == expected
    assert {path.name for path in tmp_path.iterdir()} == expected
    for path in written:
        assert len(_colours(path)) > 20, f"{path.name} is blank"
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 150
    assert RED in _colours(tmp_path / "speed_vs_objective.png")  # the front is drawn


def test_plots_with_too_little_data_are_skipped(tmp_path):
    spec = load_spec(TUNE)
    study, records = _study_and_records(TRIALS[:1])
    names = {path.name for path in write_study_plots(spec, study, records, tmp_path)}
    assert "param_importances.png" not in names  # fANOVA needs at least 2 finished trials
    assert {"optimization_history.png", "speed_vs_objective.png"} <= names
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_study_plots(spec, optuna.create_study(), [], empty) == []
    assert list(empty.iterdir()) == []


def test_failed_and_unfinished_trials_stay_off_the_plots(tmp_path):
    spec = load_spec(TUNE)
    study, records = _study_and_records(TRIALS[:2])
    study.add_trial(optuna.trial.create_trial(params=records[0].params, distributions=DISTRIBUTIONS,
                                              state=optuna.trial.TrialState.FAIL))
    records.append(TrialRecord("t2", records[0].params, "failed", 0, {}, float("nan"), 0.0, None))
    names = {path.name for path in write_study_plots(spec, study, records, tmp_path)}
    assert {"optimization_history.png", "speed_vs_objective.png", "param_importances.png"} <= names


def test_importances_rank_the_option_that_decides_the_objective():
    rows = [(fusion, kernel, 2, lr, 1.0 - abs(lr - 2e-3) * 100, 300.0, "completed")
            for fusion, kernel, lr in zip(["gate", "add", "gate_both"] * 4, [1, 3, 5, 3] * 3,
                                          [1e-4, 3e-4, 6e-4, 1e-3, 2e-3, 3e-3, 5e-3, 7e-3, 9e-3, 4e-4, 8e-4, 1.5e-3],
                                          strict=True)]
    study, _ = _study_and_records(rows)
    ax = plots._importances(study).axes[0]
    importances = {label.get_text(): bar.get_width() for label, bar in zip(ax.get_yticklabels(), ax.patches,
                                                                            strict=True)}
    assert max(importances, key=importances.get) == "schedule.lr", importances
