"""One search trial as a Tune function: the job's TorchTrainer with the trial's sampled values.

Tune starts every trial in a fresh actor that imports this module, so it stays light: no Optuna, no MLflow, no
training code. The trial's MLflow child run is created (or, for a resumed trial, reopened) by its rank-0 worker,
which imports MLflow anyway to log to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ray import tune

from ..spec import JobSpec, apply_override, parse_spec
from .compat import InlineTuneReportCallback
from .scoring import EPOCHS_KEY, checkpoint_score
from .trainer import build_trainer


def trial_spec(spec: JobSpec, params: dict[str, Any], study_dir: str) -> JobSpec:
    """The job spec with a trial's sampled values, as a plain job whose runs live in the study's folder."""
    raw = spec.model_dump(mode="json")
    raw.pop("hpo")
    for path, value in params.items():
        apply_override(raw, f"{path}={json.dumps(value)}", source="trial")
    raw["storage"]["path"] = study_dir
    raw["tracking"]["register_model"] = False  # the search registers its best trial once
    return parse_spec(raw, source="trial", checked=True)  # the search's checks probed every value a trial can get


@dataclass(frozen=True)
class StudyContext:
    """What every trial needs besides its config.

    ``ended_trials`` maps the trials whose MLflow run had already ended when the driver started (a restored search)
    to their last metrics: Tune may still list one as unfinished if the driver died before its next snapshot.
    """

    spec: dict[str, Any]
    job_id: str
    tracking_uri: str
    parent_run_id: str
    study_dir: str
    ended_trials: dict[str, dict[str, float]] = field(default_factory=dict)


def run_trial(config: dict[str, Any], context: StudyContext) -> None:
    """Tune function for one trial: fits the job's TorchTrainer with the trial's values, reporting to Tune; its
    checkpoints rank by the search's first objective, which picks the trial's best checkpoint."""
    trial_id = tune.get_context().get_trial_id()
    ended = context.ended_trials.get(trial_id)
    if ended is not None:  # it finished before the driver died, after Tune's last snapshot: report, no rerun
        tune.report({**ended, EPOCHS_KEY: int(ended.get("epoch", 0)) + 1})
        return
    search = parse_spec(context.spec, source=f"job {context.job_id}", checked=True)  # checked by the driver
    spec = trial_spec(search, config, context.study_dir)
    trainer = build_trainer(spec, context.job_id, tracking_uri=context.tracking_uri, run_id="",
                            parent_run_id=context.parent_run_id, run_name=f"trial-{trial_id}", trial_id=trial_id,
                            callbacks=[InlineTuneReportCallback()], inline_controller=True,
                            score=checkpoint_score(search))
    trainer.fit()
