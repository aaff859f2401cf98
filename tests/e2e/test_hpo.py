"""End to end: a search on the embedded default, its driver killed after two trials, then resumed.

One study covers both must-haves: 6 ASHA trials on the classification quickstart (at least one stopped early, a
parent and 6 child runs in MLflow, the best model registered) and a resume that continues the same Optuna study
(exactly ``num_samples`` trials, none run twice).
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest
import torch

from tests.e2e.conftest import UNREADABLE, find_process, set_args, unreadable_imagenet

pytestmark = pytest.mark.slow

TRIALS = 6


def tiny_search(deployment) -> list[str]:
    return [f"data.root={deployment.home}/data/imagenet_tiny_8", "data.synthetic.num_train=80",
            "data.synthetic.num_val=20", "data.synthetic.image_size=32", "data.img_size=32", "model.img_size=32",
            "schedule.batch_size_per_worker=8", "schedule.epochs=3", "schedule.warmup_epochs=0",
            f"hpo.num_samples={TRIALS}", "hpo.scheduler.grace_period=1", "hpo.scheduler.reduction_factor=2",
            # a wide lr range makes some trials clearly worse, so ASHA has something to stop
            "hpo.space.schedule.lr={type: loguniform, low: 1.0e-5, high: 1.0e-2}"]


def _trial_runs(deployment, parent_run_id: str) -> list:
    client = deployment.mlflow()
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def _ended_trials(deployment, job: dict) -> int:
    if not job.get("mlflow_run_id"):
        return 0
    return sum("lesa.trial_end" in run.data.tags for run in _trial_runs(deployment, job["mlflow_run_id"]))


def test_search_survives_its_driver_and_registers_the_best_trial(deployment):
    args = set_args(tiny_search(deployment))
    done = deployment.cli("submit", "jobs/quickstart_tune.yaml", *args, "--detach", check=True)
    job_id = re.search(r"submitted (\S+)", done.stdout).group(1)

    job = deployment.wait_for(job_id, lambda j: _ended_trials(deployment, j) >= 2, timeout=400,
                              what="two trials ended")
    ended_before = {run.data.tags["lesa.trial_id"]: sorted(int(m.step) for m in deployment.mlflow()
                                                           .get_metric_history(run.info.run_id, "epoch"))
                    for run in _trial_runs(deployment, job["mlflow_run_id"]) if "lesa.trial_end" in run.data.tags}
    os.kill(find_process("orchestrator.ray_backend.entry", env_marker=job_id), signal.SIGKILL)
    job = deployment.wait_for(job_id, lambda j: j["state"] == "FAILED", what="FAILED after the driver died")
    children = _trial_runs(deployment, job["mlflow_run_id"])
    assert all(run.info.status != "RUNNING" for run in children), "the dead driver's trial runs were left RUNNING"

    resumed = deployment.cli("resume", job_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    job = deployment.wait_for(job_id, lambda j: j["state"] in ("SUCCEEDED", "FAILED"), timeout=500, what="the end")
    logs = deployment.cli("logs", job_id, check=True).stdout
    assert job["state"] == "SUCCEEDED", logs[-3000:]
    assert "restoring the search" in logs

    # the same Optuna study holds exactly num_samples distinct trials, all told
    study = optuna.load_study(study_name=job_id, storage=f"sqlite:///{deployment.home / 'optuna.db'}")
    assert len(study.trials) == TRIALS
    assert len({trial.number for trial in study.trials}) == TRIALS
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials)

    # MLflow: the parent and one child per trial, each with how it ended; trials done before the kill not rerun
    client = deployment.mlflow()
    parent = client.get_run(job["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    children = _trial_runs(deployment, parent.info.run_id)
    trial_ids = [run.data.tags["lesa.trial_id"] for run in children]
    assert len(children) == TRIALS and len(set(trial_ids)) == TRIALS
    ends = Counter(run.data.tags.get("lesa.trial_end") for run in children)
    assert set(ends) <= {"completed", "stopped_early"} and ends["stopped_early"] >= 1, ends
    for run in children:
        assert run.info.status == "FINISHED"
        epochs = [int(m.step) for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert epochs, run.data.tags
        if run.data.tags["lesa.trial_id"] in ended_before:
            assert sorted(epochs) == ended_before[run.data.tags["lesa.trial_id"]], "a finished trial ran again"
    assert parent.data.metrics["hpo/trials_stopped_early"] == ends["stopped_early"]
    assert parent.data.metrics["hpo/trial_startup_s_mean"] > 0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/speed_vs_objective.png",
            "plots/objective_vs_model_lesa_fusion.png"} <= artifacts

    # the best trial's checkpoint is the registered candidate, and it predicts
    name = "lesa-classification-test_lesa_resnet"
    assert client.get_model_version_by_alias(name, "candidate").version == job["registered_version"]
    best_file = client.download_artifacts(parent.info.run_id, "best_trial.json", str(deployment.home))
    best = json.loads(Path(best_file).read_text())
    assert best["trial_id"] in trial_ids
    classifier = mlflow.pytorch.load_model(f"models:/{name}@candidate")
    assert classifier.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10)

    table = json.loads(deployment.cli("compare", job_id, "--json", check=True).stdout)
    assert sorted(row["trial_id"] for row in table) == sorted(trial_ids)
    assert {"model.lesa.fusion", "schedule.lr"} <= set(table[0]["params"])


def test_a_search_whose_trials_all_fail_says_why(deployment):
    root = unreadable_imagenet(deployment.home / "data" / "unreadable")
    overrides = [f"data.root={root}", "data.generate=false", "schedule.batch_size_per_worker=2",
                 "fault_tolerance.max_failures=0", "hpo.num_samples=2"]
    done = deployment.cli("submit", "jobs/quickstart_tune.yaml", *set_args(overrides))
    assert done.returncode == 1, done.stdout + done.stderr
    job = deployment.job(re.search(r"submitted (\S+)", done.stdout).group(1))
    assert job["state"] == "FAILED"
    assert re.fullmatch(rf"RuntimeError: 2 of 2 trials failed and none reported a checkpoint; trial \w+: {UNREADABLE}",
                        job["error"]), job["error"]
    children = _trial_runs(deployment, job["mlflow_run_id"])
    assert len(children) == 2
    for run in children:
        assert run.info.status == "FAILED" and run.data.tags["lesa.trial_end"] == "failed"
        assert re.fullmatch(UNREADABLE, run.data.tags["lesa.error"]), run.data.tags
