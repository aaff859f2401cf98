"""Ray Jobs API access: Ray's job messages as the one line a job's error holds; what a submission carries (on a
real local Ray head with token auth) and how the driver reads it back."""

from __future__ import annotations

import json

import pytest
import yaml

from orchestrator.ray_backend import jobs, local_services
from orchestrator.ray_backend.entry import read_job
from orchestrator.ray_backend.jobs import job_env, message_line
from orchestrator.settings import Settings
from orchestrator.spec import load_spec
from orchestrator.store import JobStore, make_engine, upgrade
from tests.conftest import free_port

SECRETS = ("tok-123", "hunter2", "ckpt-pw", "optuna-pw")
JOB = {
    "name": "secrets", "task": "classification",
    "model": {"arch": "test_lesa_resnet", "pretrained": "https://lesa:${CKPT_PASSWORD}@weights.internal/r50.pth"},
    "data": {"root": "/data/imagenet", "format": "imagenet"},
    "schedule": {"epochs": 1, "batch_size_per_worker": 2, "lr": 0.1, "lr_reference_batch": 256},
    "tracking": {"tags": {"api_token": "${MY_TOKEN}", "aws_secret_access_key": "hunter2", "owner": "ana"}},
}

FAILED_DRIVER = (
    "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
    "\x1b[36m(RayTrainWorker pid=16720)\x1b[0m   File \"dataloader.py\", line 785, in _next_data\n"
    "Traceback (most recent call last):\n"
    "ModuleNotFoundError: No module named 'lesa_core'\n\n"
)


def test_a_failed_drivers_log_tail_becomes_its_last_line():
    assert message_line(FAILED_DRIVER) == ("Job entrypoint command failed with exit code 1; "
                                       "last log line: ModuleNotFoundError: No module named 'lesa_core'")


def test_colour_codes_are_dropped_and_short_messages_kept():
    tail = "Job entrypoint command failed with exit code -9, last available logs (truncated to 20,000 chars):\n"
    assert message_line(tail + "\x1b[36m(run_trial pid=3)\x1b[0m epoch 2\n") == (
        "Job entrypoint command failed with exit code -9; last log line: (run_trial pid=3) epoch 2")
    assert message_line("Job was intentionally stopped.") == "Job was intentionally stopped."
    assert message_line("") == ""


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A local Ray head (1 CPU, token auth on) under a throwaway home, on free ports."""
    settings = Settings.from_env({"LESA_ORCH_HOME": str(tmp_path_factory.mktemp("home")),
                                  "LESA_ORCH_RAY_PORT": str(free_port())})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LESA_ORCH_RAY_GCS_PORT", str(free_port()))
        local_services.start_ray_head(settings, num_cpus=1)
        yield settings
        local_services.stop_ray_head(settings)


@pytest.mark.slow
def test_a_submission_carries_references_and_no_plain_secret_and_the_driver_expands_them(
    ray_head, tmp_path, monkeypatch
):
    monkeypatch.setenv("MY_TOKEN", "tok-123")  # set where the job is submitted: still not expanded there
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(JOB))
    spec = load_spec(path).model_dump(mode="json")
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    upgrade(engine)
    record = JobStore(engine).create("secrets-1", name="secrets", task="classification", spec=spec)
    env = {"LESA_ORCH_OPTUNA_URL": "postgresql://optuna:${OPTUNA_PASSWORD}@db.internal/optuna",
           **local_services.ray_auth_env(ray_head)}
    client = jobs.connect(ray_head)
    jobs.submit(client, ray_head, submission_id="secrets-1", job_id="secrets-1", spec=spec, env=env)
    shipped = client.get_job_info("secrets-1")  # what Ray holds and shows of the job
    client.stop_job("secrets-1")

    assert record.spec["tracking"]["tags"]["api_token"] == "${MY_TOKEN}"
    env_vars = shipped.runtime_env["env_vars"]
    assert env_vars["LESA_ORCH_OPTUNA_URL"] == env["LESA_ORCH_OPTUNA_URL"]
    assert env_vars["RAY_AUTH_TOKEN_PATH"] == env["RAY_AUTH_TOKEN_PATH"]  # the token's path, never the token
    assert "$" not in env_vars["LESA_JOB_SPEC"]  # Ray would expand ${MY_TOKEN} itself (an unset one to nothing)
    assert shipped.metadata == {"lesa.job_id": "secrets-1", "name": "secrets"}
    seen = json.dumps([record.to_dict(), JobStore(engine).get("secrets-1").to_dict(), shipped.runtime_env,
                       shipped.metadata, shipped.entrypoint])
    assert not [secret for secret in SECRETS if secret in seen]
    token = local_services.ensure_ray_token(ray_head)
    assert token not in seen
    engine.dispose()

    cluster = {**env_vars, "MY_TOKEN": "cluster-token", "CKPT_PASSWORD": "ckpt-pw", "OPTUNA_PASSWORD": "optuna-pw"}
    driver_spec = read_job(cluster)
    assert driver_spec.tracking.tags == {"api_token": "cluster-token", "aws_secret_access_key": "***", "owner": "ana"}
    assert driver_spec.model.pretrained == "https://lesa:ckpt-pw@weights.internal/r50.pth"
    assert cluster["LESA_ORCH_OPTUNA_URL"] == "postgresql://optuna:optuna-pw@db.internal/optuna"


@pytest.mark.parametrize(("spec", "env", "message"), [
    ({"name": "x", "hpo": {"storage": "postgresql://optuna:optuna-pw@db/optuna"}}, {},
     r"^hpo\.storage: the password in postgresql://optuna:\*\*\*@db/optuna would be shown with the Ray job; "
     r"write it as \$\{VAR\} and set VAR where the job runs$"),
    ({"name": "x"}, {"MLFLOW_TRACKING_URI": "http://lesa:optuna-pw@mlflow:5000"},
     r"^MLFLOW_TRACKING_URI=http://lesa:\*\*\*@mlflow:5000: the password would be shown with the Ray job"),
    ({"name": "x"}, {"AWS_SECRET_ACCESS_KEY": "optuna-pw"}, r"^AWS_SECRET_ACCESS_KEY looks like a secret"),
])
def test_a_literal_password_or_secret_is_refused_before_it_reaches_ray(spec, env, message):
    with pytest.raises(ValueError, match=message) as refused:
        job_env(spec, env, job_id="x", submission_id="x")
    assert "optuna-pw" not in str(refused.value)


def test_an_unset_variable_the_driver_needs_is_one_line_naming_it():
    env = job_env({"name": "x"}, {"LESA_ORCH_OPTUNA_URL": "postgresql://optuna:${OPTUNA_PASSWORD}@db/optuna"},
                  job_id="j1", submission_id="j1")
    with pytest.raises(ValueError, match=r"^job j1: LESA_ORCH_OPTUNA_URL: environment variable OPTUNA_PASSWORD is "
                                         "not set and has no default$"):
        read_job(env)
