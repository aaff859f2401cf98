"""End to end on the embedded default: CLI -> job store -> Ray Jobs -> Ray Train (DDP) -> MLflow + registry."""

from __future__ import annotations

import json
import os
import re
import signal
from importlib import metadata
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pytest
import ray
import torch
from torchvision.io import read_image

from tests.e2e.conftest import UNREADABLE, find_process, set_args, unreadable_imagenet

pytestmark = pytest.mark.slow

KILL_EPOCHS = 14  # a job killed after its second checkpoint still has most of its epochs ahead


def tiny_coco(deployment) -> list[str]:
    return [f"data.root={deployment.home}/data/coco_tiny", "data.synthetic.num_train=24", "data.synthetic.num_val=6",
            "data.synthetic.image_size=96", "model.detector.min_size=96", "model.detector.max_size=96",
            "schedule.epochs=2", "eval.every_epochs=1"]


def tiny_imagenet(deployment, epochs: int = 2, per_class: int = 8) -> list[str]:
    return [f"data.root={deployment.home}/data/imagenet_tiny_{per_class}", f"data.synthetic.num_train={per_class * 10}",
            "data.synthetic.num_val=20", "data.synthetic.image_size=32", "data.img_size=32", "model.img_size=32",
            "schedule.batch_size_per_worker=8", f"schedule.epochs={epochs}", "schedule.warmup_epochs=0"]


def _submitted_id(output: str) -> str:
    match = re.search(r"submitted (\S+)", output)
    assert match, output
    return match.group(1)


def test_coco_quickstart_with_two_ddp_workers_is_tracked_and_registered(deployment):
    overrides = set_args([*tiny_coco(deployment), "tracking.tags.api_token=hunter2"])
    done = deployment.cli("submit", "jobs/quickstart_coco.yaml", *overrides)
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = _submitted_id(done.stdout)
    assert "coco/bbox_mAP" in done.stdout and "coco/segm_mAP" in done.stdout
    assert "registered model: lesa-detection-test_lesa_resnet version" in done.stdout
    assert "MLflow: http://127.0.0.1" in done.stdout and "Ray dashboard: http://127.0.0.1" in done.stdout

    job = deployment.job(job_id)
    assert job["state"] == "SUCCEEDED" and job["registered_version"]
    client = deployment.mlflow()
    run = client.get_run(job["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["lesa.job_id"] == job_id and "torch=" in run.data.tags["lesa.versions"]
    assert "lesa.git_commit" in run.data.tags
    assert run.data.params["model.arch"] == "test_lesa_resnet" and run.data.params["resources.num_workers"] == "2"
    assert run.data.params["tracking.tags.api_token"] == "***"
    assert "hunter2" not in json.dumps(run.data.params)
    for metric in ("coco/bbox_mAP", "coco/segm_mAP", "coco/bbox_mAP_50", "train/loss"):
        assert [int(m.step) for m in client.get_metric_history(run.info.run_id, metric)] == [0, 1], metric
    assert "spec.json" in [a.path for a in client.list_artifacts(run.info.run_id)]

    model = mlflow.pytorch.load_model("models:/lesa-detection-test_lesa_resnet@candidate")
    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/lesa-detection-test_lesa_resnet@candidate"))
    pinned = requirements.read_text().split()
    assert f"torch=={metadata.version('torch')}" in pinned and any(line.startswith("lesa-orch==") for line in pinned)
    image_path = next((deployment.home / "data" / "coco_tiny" / "val2017").glob("*.jpg"))
    with torch.no_grad():
        prediction = model.eval()([read_image(str(image_path)).float() / 255])[0]
    assert {"boxes", "labels", "scores", "masks"} <= set(prediction)

    listed = json.loads(deployment.cli("list", "--json", check=True).stdout)
    assert job_id in [j["id"] for j in listed]
    logs = deployment.cli("logs", job_id, check=True).stdout
    assert "training on 2 worker(s)" in logs and "lesa-orch: epoch 1" in logs
    followed = deployment.cli("logs", job_id, "--follow", check=True, timeout=120).stdout
    assert "lesa-orch: epoch 1" in followed  # a finished job's stream ends by itself


def test_classification_quickstart_with_one_worker(deployment):
    overrides = set_args(tiny_imagenet(deployment))
    done = deployment.cli("submit", "jobs/quickstart_imagenet.yaml", *overrides)
    assert done.returncode == 0, done.stdout + done.stderr
    job = deployment.job(_submitted_id(done.stdout))
    assert job["state"] == "SUCCEEDED"
    assert {"val/acc1", "val/acc5", "val/loss"} <= set(job["metrics"])
    version = deployment.mlflow().get_model_version_by_alias("lesa-classification-test_lesa_resnet", "candidate")
    assert version.version == job["registered_version"]
    classifier = mlflow.pytorch.load_model("models:/lesa-classification-test_lesa_resnet@candidate")
    assert classifier.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10)

    runs = json.loads(deployment.cli("compare", "--experiment", "lesa/synthetic_imagenet/classification",
                                     "--metric", "val/acc1", "--json", check=True).stdout)
    assert job["id"] in [run["job_id"] for run in runs] and "val/acc1" in runs[0]["metrics"]
    deployment.cli("promote", "lesa-classification-test_lesa_resnet", job["registered_version"], check=True)
    champion = deployment.mlflow().get_model_version_by_alias("lesa-classification-test_lesa_resnet", "champion")
    assert champion.version == job["registered_version"]
    refused = deployment.cli("promote", "lesa-classification-test_lesa_resnet", "99")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    doctor = deployment.cli("doctor")
    assert doctor.returncode == 0, doctor.stdout
    assert "ok   ray" in doctor.stdout and "ok   mlflow" in doctor.stdout and "1 node(s), 2 CPU" in doctor.stdout


def _submit_detached(deployment, *overrides: str) -> str:
    args = set_args(overrides)
    done = deployment.cli("submit", "jobs/quickstart_imagenet.yaml", *args, "--detach", check=True)
    return _submitted_id(done.stdout)


def _wait_for_checkpoints(deployment, job_id: str, count: int) -> dict:
    return deployment.wait_for(job_id, lambda j: deployment.registered_checkpoints(job_id) >= count,
                               what=f"{count} checkpoints registered")


def _wait_for_epochs(deployment, job_id: str, count: int) -> dict:
    return deployment.wait_for(
        job_id, lambda j: j.get("mlflow_run_id") and len(deployment.epochs_logged(j["mlflow_run_id"])) >= count,
        what=f"{count} epochs logged",
    )


def test_cancel_stops_the_job_and_kills_the_run(deployment):
    job_id = _submit_detached(deployment, *tiny_imagenet(deployment, epochs=30))
    job = _wait_for_epochs(deployment, job_id, 1)
    done = deployment.cli("cancel", job_id)
    assert done.returncode == 0, done.stdout + done.stderr
    job = deployment.job(job_id)
    assert job["state"] == "CANCELLED"
    assert deployment.mlflow().get_run(job["mlflow_run_id"]).info.status == "KILLED"


def test_a_killed_worker_is_restarted_from_the_last_checkpoint(deployment):
    # long enough (14 short epochs) that the kill lands mid-training
    job_id = _submit_detached(deployment, *tiny_imagenet(deployment, epochs=KILL_EPOCHS, per_class=16),
                              "fault_tolerance.max_failures=2")
    job = _wait_for_checkpoints(deployment, job_id, 2)
    os.kill(find_process("RayTrainWorker", env_marker=job_id), signal.SIGKILL)  # this job's worker, not a lingering one
    job = deployment.wait_for(job_id, lambda j: j["state"] in ("SUCCEEDED", "FAILED"), what="the end")
    logs = deployment.cli("logs", job_id, check=True).stdout
    assert job["state"] == "SUCCEEDED", logs[-3000:]
    # MLflow sees an epoch's metrics before Ray Train has persisted its checkpoint, so the restart point is the
    # last persisted epoch (>= 1), never 0: that proves it restored rather than started over
    resumed = [int(epoch) for epoch in re.findall(r"resumed from checkpoint \S+ at epoch (\d+)", logs)]
    assert resumed and min(resumed) >= 1
    assert deployment.epochs_logged(job["mlflow_run_id"])[-1] == KILL_EPOCHS - 1


def test_resume_after_the_driver_died_continues_from_the_last_checkpoint(deployment):
    job_id = _submit_detached(deployment, *tiny_imagenet(deployment, epochs=KILL_EPOCHS, per_class=16))
    _wait_for_checkpoints(deployment, job_id, 2)
    os.kill(find_process("orchestrator.ray_backend.entry", env_marker=job_id), signal.SIGKILL)
    job = deployment.wait_for(job_id, lambda j: j["state"] == "FAILED", what="FAILED after the driver died")
    assert deployment.mlflow().get_run(job["mlflow_run_id"]).info.status == "FAILED"
    assert job["error"] and "\n" not in job["error"], job["error"]  # Ray's message, its log tail cut to a line
    done = deployment.cli("resume", job_id)
    assert done.returncode == 0, done.stdout + done.stderr
    job = deployment.job(job_id)
    assert job["state"] == "SUCCEEDED" and job["attempts"] == 2
    logs = deployment.cli("logs", job_id, check=True).stdout
    resumed = [int(epoch) for epoch in re.findall(r"resumed from checkpoint \S+ at epoch (\d+)", logs)]
    assert resumed and min(resumed) >= 1
    run = deployment.mlflow().get_run(job["mlflow_run_id"])
    assert run.info.status == "FINISHED" and deployment.epochs_logged(run.info.run_id)[-1] == KILL_EPOCHS - 1


def test_a_job_that_fails_in_training_says_why_in_one_line(deployment):
    root = unreadable_imagenet(deployment.home / "data" / "unreadable")
    overrides = [f"data.root={root}", "data.generate=false", "schedule.batch_size_per_worker=2",
                 "fault_tolerance.max_failures=0"]
    done = deployment.cli("submit", "jobs/quickstart_imagenet.yaml", *set_args(overrides))
    assert done.returncode == 1, done.stdout + done.stderr
    job = deployment.job(_submitted_id(done.stdout))
    assert job["state"] == "FAILED"
    assert re.fullmatch(UNREADABLE, job["error"]), job["error"]  # the worker's own error, not Ray's log tail
    assert f"error: {job['error']}" in " ".join(done.stdout.split())
    run = deployment.mlflow().get_run(job["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["lesa.error"] == job["error"]

    # the run records what it ran with; a resume on another Ray minor version is refused and changes nothing
    tags = run.data.tags
    assert tags["lesa.version.ray"] == ray.__version__ and tags["lesa.version.torch"]
    assert tags["lesa.version.lesa-orch.dirty"] in ("true", "false") and "lesa.version.lesa-orch.commit" in tags
    major, minor = ray.__version__.split(".")[:2]
    older = f"{major}.{int(minor) - 1}.0"
    deployment.mlflow().set_tag(run.info.run_id, "lesa.version.ray", older)
    resumed = deployment.cli("resume", job["id"], "--detach")
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    address = f"http://127.0.0.1:{deployment.env['LESA_ORCH_RAY_PORT']}"
    assert resumed.stderr.strip().splitlines() == [
        f"error: job '{job['id']}' ran on Ray {older}; the cluster at {address} runs Ray {ray.__version__}, whose "
        "checkpoints it may not restore: submit it anew"]
    after = deployment.job(job["id"])
    assert (after["state"], after["attempts"]) == ("FAILED", job["attempts"])


def test_a_job_the_cluster_cannot_fit_is_refused_without_a_trace(deployment):
    before = [j["id"] for j in json.loads(deployment.cli("list", "--json", check=True).stdout)]
    done = deployment.cli("submit", "jobs/quickstart_imagenet.yaml", "--set", "resources.num_workers=8", "--detach")
    assert done.returncode == 1
    assert "resources: 8 workers x 1 CPU need 8 CPU, the cluster has 2" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    after = [j["id"] for j in json.loads(deployment.cli("list", "--json", check=True).stdout)]
    assert after == before  # no row for the refused job, in any state

