"""A real embedded lesa-orch deployment for end-to-end tests: a local Ray head (2 CPUs, token auth on), an
MLflow server on SQLite and the SQLite job store, all under a throwaway home on free ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from orchestrator.ray_backend.local_services import RAY_WORKER_PORTS
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "lesa-orch")


@dataclass
class Deployment:
    home: Path
    env: dict[str, str]
    mlflow_uri: str

    def cli(self, *args: str, check: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
        done = subprocess.run([CLI, *args], capture_output=True, text=True, env=self.env, cwd=REPO, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"lesa-orch {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def job(self, job_id: str) -> dict:
        done = self.cli("status", job_id, "--json", check=True)
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError as error:
            message = f"status --json is not JSON: {done.stdout[:500]!r} (stderr {done.stderr[-500:]!r})"
            raise AssertionError(message) from error

    def wait_for(self, job_id: str, predicate, timeout: float = 300, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if predicate(job):
                return job
            time.sleep(2)
        raise AssertionError(f"{job_id}: {what} not reached in {timeout}s; last: {job}")

    def mlflow(self) -> MlflowClient:
        return MlflowClient(self.mlflow_uri, registry_uri=self.mlflow_uri)

    def registered_checkpoints(self, job_id: str) -> int:
        """Checkpoints Ray Train's controller has registered (it polls workers, so this lags their reports)."""
        snapshot = self.home / "ray_results" / job_id / "checkpoint_manager_snapshot.json"
        try:
            return len(json.loads(snapshot.read_text())["checkpoint_results"])
        except (OSError, ValueError, KeyError):
            return 0

    def epochs_logged(self, run_id: str) -> list[int]:
        return sorted(int(m.step) for m in self.mlflow().get_metric_history(run_id, "epoch"))


@pytest.fixture(scope="session")
def deployment(tmp_path_factory) -> Deployment:
    home = tmp_path_factory.mktemp("lesa-orch-home")
    # the dashboard inside Ray's default worker-port range: `up` must move the worker ports out of its way
    ray_port, mlflow_port, gcs_port = free_port(within=RAY_WORKER_PORTS), free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(LESA_ORCH_HOME=str(home), LESA_ORCH_RAY_PORT=str(ray_port), LESA_ORCH_MLFLOW_PORT=str(mlflow_port),
               LESA_ORCH_RAY_GCS_PORT=str(gcs_port), PYTHONUNBUFFERED="1")
    deployment = Deployment(home, env, f"http://127.0.0.1:{mlflow_port}")
    mlflow.set_tracking_uri(deployment.mlflow_uri)  # models:/ URIs in the tests resolve against this server
    mlflow.set_registry_uri(deployment.mlflow_uri)
    deployment.cli("up", "--num-cpus", "2", check=True, timeout=300)
    yield deployment
    deployment.cli("down", timeout=120)


def find_process(marker: str, env_marker: str | None = None) -> int:
    """Pid of a process whose command line contains ``marker`` (and whose environment contains ``env_marker``).

    Ray Jobs starts an entrypoint through ``/bin/sh -c``, so the shell also matches; it is skipped: killing it
    would fail the job while its driver lived on.
    """
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            command = b" ".join(argv).decode(errors="replace")
            if marker not in command or Path(argv[0].decode(errors="replace")).name in ("sh", "bash", "dash"):
                continue
            if env_marker and env_marker.encode() not in (proc / "environ").read_bytes():
                continue
        except OSError:
            continue
        return int(proc.name)
    raise AssertionError(f"no process running {marker!r}")


def set_args(overrides: list[str]) -> list[str]:
    """``--set`` options for the CLI, one per override."""
    return [arg for item in overrides for arg in ("--set", item)]


def unreadable_imagenet(root: Path) -> Path:
    """An ImageNet-layout folder whose files are not images: a job reading it fails in its first step."""
    for split in ("train", "val"):
        for label in ("n01", "n02"):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for index in range(4):
                (root / split / label / f"{index}.JPEG").write_bytes(b"not a jpeg")
    return root


UNREADABLE = r"RuntimeError: \d+ unreadable images in a row up to \S+\.JPEG: check the dataset"
