"""A search trial: its spec, and the light module Tune imports in every trial actor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.ray_backend.trial import trial_spec
from orchestrator.spec import SpecError, load_spec

TUNE = Path(__file__).resolve().parents[3] / "jobs" / "quickstart_tune.yaml"


def test_trial_spec_applies_values_as_a_plain_unregistered_job():
    spec = load_spec(TUNE)
    params = {"model.lesa.fusion": "add", "model.lesa.unary_kernel": 5, "model.lesa.fusion_shrink": 4,
              "schedule.lr": 0.004}
    trial = trial_spec(spec, params, "/srv/studies/job-1/runs")
    assert trial.hpo is None
    lesa = trial.model.lesa
    assert (lesa.fusion, lesa.unary_kernel, lesa.fusion_shrink, trial.schedule.lr) == ("add", 5, 4.0, 0.004)
    assert trial.storage.path == "/srv/studies/job-1/runs"
    assert trial.tracking.register_model is False
    assert (trial.name, trial.schedule.epochs, trial.data.root) == (spec.name, spec.schedule.epochs, spec.data.root)
    assert spec.model.lesa.fusion == "gate" and spec.hpo is not None  # the search's own spec is untouched
    with pytest.raises(SpecError, match=r"trial: model\.lesa: unary_kernel=4 must be odd"):
        trial_spec(spec, {"model.lesa.unary_kernel": 4}, "/srv/studies/job-1/runs")


def test_a_trial_actor_imports_neither_the_search_nor_tracking_nor_training_code():
    heavy = ["mlflow", "optuna", "timm", "lesa_core", "orchestrator.ray_backend.tuning", "orchestrator.search",
             "orchestrator.ray_backend.train_loop", "orchestrator.ray_backend.registration", "orchestrator.tracking"]
    probe = (f"import sys, orchestrator.ray_backend.trial; "
             f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""
