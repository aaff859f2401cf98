"""The driver of a lesa-orch job: the Ray Jobs entrypoint, run on the cluster.

It reads the resolved spec from ``LESA_JOB_SPEC`` and expands its ``${VAR}`` references to secrets (and those in
``LESA_ENV_TEMPLATES``) with the cluster's environment, generates the quickstart dataset if asked, opens the
job's MLflow run (the same one again on resume), runs a ``TorchTrainer`` named after the job id (so a
resubmission restores its checkpoints), registers the best checkpoint's model with alias ``candidate``
and closes the run FINISHED, FAILED or KILLED. Its last line is ``LESA_RESULT {json}``; an error it dies of is
printed with URL passwords hidden.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from lesa_core.data.synthetic import write_coco_dataset, write_imagenet_dataset

from ..redaction import redact_url
from ..spec import JobSpec, parse_spec
from ..spec.loading import expand_references
from ..tracking import ERROR_TAG, Tracker
from .failures import one_line
from .jobs import ENV_TEMPLATES_VAR, SPEC_VAR
from .registration import best_job_checkpoint, register_checkpoint
from .trainer import build_trainer

RESULT_PREFIX = "LESA_RESULT "


def ensure_dataset(spec: JobSpec) -> None:
    """Writes the generated dataset at ``data.root`` when ``data.generate`` is set and it is missing."""
    root = Path(spec.data.root)
    if not spec.data.generate or root.exists():
        return
    synthetic = spec.data.synthetic
    print(f"generating the quickstart {spec.data.format} dataset at {root}", flush=True)
    if spec.data.format == "coco":
        write_coco_dataset(root, num_train=synthetic.num_train, num_val=synthetic.num_val,
                           image_size=synthetic.image_size, seed=synthetic.seed)
    else:
        write_imagenet_dataset(root, train_per_class=max(1, synthetic.num_train // 10),
                               val_per_class=max(1, synthetic.num_val // 10), image_size=synthetic.image_size,
                               seed=synthetic.seed)


class StopSignal:
    """SIGTERM handler: ``ray job stop`` asked the driver to end, so its run is KILLED rather than FAILED.

    Ray Train may wrap the interrupt in its own error, so the flag, not the exception type, decides.
    """

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.received = True
        raise KeyboardInterrupt(f"stopped by signal {signum}")


def run_job(
    spec: JobSpec, job_id: str, submission_id: str, tracker: Tracker, stop: StopSignal | None = None
) -> dict[str, Any]:
    ensure_dataset(spec)
    run_id = tracker.start_job_run(spec, job_id, submission_id=submission_id,
                                   git_commit=os.environ.get("LESA_GIT_COMMIT", ""),
                                   git_dirty=os.environ.get("LESA_GIT_DIRTY") == "true")
    print(f"MLflow run {run_id} in experiment {spec.experiment_name}", flush=True)
    try:
        if spec.hpo is not None:
            from .tuning import run_study  # Tune and Optuna load only for a search

            outcome = run_study(spec, job_id, tracker, run_id, stop)
        else:
            outcome = _train(spec, job_id, tracker, run_id)
        tracker.end_run(run_id, "FINISHED")
        return outcome
    except BaseException as error:
        stopped = isinstance(error, KeyboardInterrupt) or (stop is not None and stop.received)
        if not stopped:
            tracker.set_tags(run_id, {ERROR_TAG: redact_url(one_line(error))})
        status = "KILLED" if stopped else "FAILED"
        if spec.hpo is not None:
            tracker.end_open_trial_runs(run_id, status)
        tracker.end_run(run_id, status)
        raise


def _train(spec: JobSpec, job_id: str, tracker: Tracker, run_id: str) -> dict[str, Any]:
    result = build_trainer(spec, job_id, tracking_uri=tracker.tracking_uri, run_id=run_id).fit()
    checkpoint, best_metrics = best_job_checkpoint(spec, result)
    outcome: dict[str, Any] = {"job_id": job_id, "run_id": run_id, "final_metrics": dict(result.metrics or {}),
                               "best_metrics": best_metrics}
    if spec.tracking.register_model:
        outcome.update(register_checkpoint(tracker, run_id, spec, checkpoint, spec.registered_model_name))
    return outcome


def read_job(environ: MutableMapping[str, str]) -> JobSpec:
    """The job's spec with every reference expanded from ``environ``, where the job runs; the variables Ray was
    handed with references (``LESA_ENV_TEMPLATES``) are set in ``environ`` expanded the same way."""
    source = f"job {environ['LESA_JOB_ID']}"
    for name, template in json.loads(environ.get(ENV_TEMPLATES_VAR, "{}")).items():
        environ[name] = expand_references(template, f"{source}: {name}", environ)
    return parse_spec(json.loads(environ[SPEC_VAR]), source=source, expand_secrets=True, environ=environ)


def main() -> int:
    stop = StopSignal()
    signal.signal(signal.SIGTERM, stop)
    try:
        spec = read_job(os.environ)
        tracker = Tracker(os.environ["MLFLOW_TRACKING_URI"])
        job_id = os.environ["LESA_JOB_ID"]
        outcome = run_job(spec, job_id, os.environ.get("LESA_SUBMISSION_ID", job_id), tracker, stop)
    except Exception:  # the log (and so the job's error) must not show a password the driver expanded
        print(redact_url(traceback.format_exc()), file=sys.stderr, flush=True)
        return 1
    print(RESULT_PREFIX + json.dumps(outcome, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
