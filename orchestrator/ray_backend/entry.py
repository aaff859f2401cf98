"""The driver of a lesa-orch job: the Ray Jobs entrypoint, run on the cluster.

It reads the resolved spec from ``LESA_JOB_SPEC``, generates the quickstart dataset if asked, opens the
job's MLflow run (the same one again on resume), runs a ``TorchTrainer`` named after the job id (so a
resubmission restores its checkpoints), registers the best checkpoint's model with alias ``candidate``
and closes the run FINISHED, FAILED or KILLED. Its last line is ``LESA_RESULT {json}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from lesa_core.data.synthetic import write_coco_dataset, write_imagenet_dataset

from ..spec import JobSpec, parse_spec
from ..tracking import ERROR_TAG, Tracker
from .failures import one_line
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
                                   git_commit=os.environ.get("LESA_GIT_COMMIT", ""))
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
            tracker.set_tags(run_id, {ERROR_TAG: one_line(error)})
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


def main() -> None:
    stop = StopSignal()
    signal.signal(signal.SIGTERM, stop)
    job_id = os.environ["LESA_JOB_ID"]
    spec = parse_spec(json.loads(os.environ["LESA_JOB_SPEC"]), source=f"job {job_id}")
    tracker = Tracker(os.environ["MLFLOW_TRACKING_URI"])
    outcome = run_job(spec, job_id, os.environ.get("LESA_SUBMISSION_ID", job_id), tracker, stop)
    print(RESULT_PREFIX + json.dumps(outcome, default=str), flush=True)


if __name__ == "__main__":
    sys.exit(main())
