"""Bad input to the CLI: one clear line on stderr, exit status 1, and nothing left in the job store."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.settings import Settings
from orchestrator.store import JobStore, make_engine, upgrade

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "lesa-orch")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # released on close: nothing listens there


@pytest.fixture
def env(tmp_path, monkeypatch):
    port = _closed_port()
    values = {"LESA_ORCH_HOME": str(tmp_path / "home"), "RAY_ADDRESS": f"http://127.0.0.1:{port}",
              "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "PATH": "/usr/bin:/bin"}
    return values


def _run(env, *args):
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def _assert_one_line_error(done, *fragments):
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _no_jobs(env) -> bool:
    settings = Settings.from_env(env)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return JobStore(engine).list() == []


QUICKSTART = (REPO / "jobs" / "quickstart_imagenet.yaml").read_text()


@pytest.mark.parametrize(
    ("text", "args", "fragments"),
    [
        ("name: x\ntask: [classification\n", (), ("invalid YAML at line",)),
        (QUICKSTART.replace("schedule:\n  epochs: 8", "schedule:\n  epoch: 8"), (),
         ("schedule.epoch: unknown key; did you mean 'epochs'?",)),
        (QUICKSTART.replace("epochs: 8", "epochs: eight"), (), ("schedule.epochs: Input should be a valid integer",)),
        (QUICKSTART, ("--set", "schedule.epoch=3"), ("no field 'epoch' in schedule; did you mean 'epochs'?",)),
        (QUICKSTART.replace("generate: true ", "generate: false"), ("--set", "data.root=/nonexistent/imagenet"),
         ("data.root: /nonexistent/imagenet does not exist",)),
    ],
)
def test_bad_specs_fail_before_anything_is_recorded(tmp_path, env, text, args, fragments):
    done = _run(env, "submit", str(_write(tmp_path, text)), *args)
    _assert_one_line_error(done, "job.yaml", *fragments)
    assert _no_jobs(env)


def test_unreachable_ray_or_mlflow_is_one_line_and_leaves_no_job(tmp_path, env):
    done = _run(env, "submit", "jobs/quickstart_imagenet.yaml", "--set", f"storage.path={tmp_path}/ray_results")
    _assert_one_line_error(done, "unreachable", "127.0.0.1")
    assert _no_jobs(env)


def test_a_cluster_job_without_storage_is_refused_before_anything_is_recorded(env):
    done = _run(env, "submit", "jobs/quickstart_imagenet.yaml")
    _assert_one_line_error(done, "storage.path: unset", "LESA_ORCH_STORAGE")
    assert _no_jobs(env)


def test_unknown_job_id(env):
    done = _run(env, "status", "no-such-job")
    _assert_one_line_error(done, "no job with id 'no-such-job'")


def test_validate_accepts_every_quickstart(env):
    for job in ("jobs/quickstart_coco.yaml", "jobs/quickstart_imagenet.yaml", "jobs/quickstart_tune.yaml"):
        done = _run(env, "validate", job)
        assert done.returncode == 0, done.stderr
        assert "ok" in done.stdout


def test_schema_is_json_with_the_sections(env):
    import json

    schema = json.loads(_run(env, "schema").stdout)
    assert {"model", "data", "schedule", "resources", "storage", "tracking"} <= set(schema["properties"])


def test_doctor_names_what_is_down(env):
    done = _run(env, "doctor")
    assert done.returncode == 1
    assert "FAIL ray:" in done.stdout and "unreachable" in done.stdout and "ok   job store" in done.stdout
