"""Load on the embedded default: many ``lesa-orch submit --detach`` processes at once, with ``status``/``list``
readers alongside, on one SQLite job store, one MLflow server and one Ray head.

Passes when every submit made exactly one job row, one Ray job and one MLflow run, every job reached a terminal
state, and no output (CLI, driver logs, MLflow server log) says "database is locked". Reports wall times, each
command's latency and every error in ``results/bench_concurrent_submit_cpu.json``.

The deployment runs in a throwaway home on free ports, so a running ``lesa-orch up`` is not touched:

    python benchmarks/bench_concurrent_submit.py --jobs 20 --readers 100
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlflow import MlflowClient
from report import write_report

from lesa_core.data.synthetic import write_imagenet_dataset
from orchestrator.ray_backend import jobs as ray_jobs
from orchestrator.ray_backend.local_services import free_port
from orchestrator.settings import Settings
from orchestrator.store import JobStore, make_engine

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "lesa-orch")
JOB = REPO / "jobs" / "quickstart_imagenet.yaml"
LOCKED = re.compile(r"database is locked", re.IGNORECASE)
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def _cli(env: dict[str, str], *args: str, timeout: float = 600) -> dict:
    """Runs one CLI command; its exit status, seconds and output."""
    start = time.monotonic()
    done = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    return {"args": list(args), "rc": done.returncode, "seconds": round(time.monotonic() - start, 2),
            "stdout": done.stdout, "stderr": done.stderr}


def _summary(calls: list[dict]) -> dict:
    seconds = sorted(call["seconds"] for call in calls)
    return {"count": len(calls), "failed": sum(call["rc"] != 0 for call in calls),
            "median_s": round(statistics.median(seconds), 2) if seconds else None,
            "max_s": seconds[-1] if seconds else None}


def _errors(calls: list[dict]) -> list[str]:
    return [f"{' '.join(call['args'][:2])}: exit {call['rc']}: {(call['stderr'] or call['stdout']).strip()[-300:]}"
            for call in calls if call["rc"] != 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="concurrent detached submits")
    parser.add_argument("--readers", type=int, default=100, help="status/list calls made while they run")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the Ray head")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for every job to end")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lesa-load-"))
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(LESA_ORCH_HOME=str(home), LESA_ORCH_RAY_PORT=str(free_port()), LESA_ORCH_MLFLOW_PORT=str(free_port()),
               LESA_ORCH_RAY_GCS_PORT=str(free_port()))
    settings = Settings.from_env(env)
    root = home / "data" / "tiny_imagenet"
    write_imagenet_dataset(root, train_per_class=4, val_per_class=2, image_size=32, seed=0)
    overrides = [f"data.root={root}", "data.generate=false", "data.img_size=32", "model.img_size=32",
                 "schedule.epochs=1", "schedule.warmup_epochs=0", "schedule.batch_size_per_worker=8"]
    up = _cli(env, "up", "--num-cpus", str(args.num_cpus))
    if up["rc"] != 0:
        raise SystemExit(f"lesa-orch up failed: {up['stderr']}")
    try:
        submits: list[dict] = []
        reads: list[dict] = []
        start = threading.Barrier(args.jobs + 1)

        def submit(_: int) -> dict:
            start.wait()
            return _cli(env, "submit", str(JOB), "--detach", *[a for o in overrides for a in ("--set", o)])

        def read(index: int) -> dict:
            return _cli(env, *(("list", "--json") if index % 2 else ("list", "--state", "RUNNING")))

        began = time.monotonic()
        with ThreadPoolExecutor(args.jobs) as submitters, ThreadPoolExecutor(min(args.readers, 20)) as readers:
            pending = [submitters.submit(submit, i) for i in range(args.jobs)]
            start.wait()
            read_futures = [readers.submit(read, i) for i in range(args.readers)]
            submits = [future.result() for future in pending]
            submit_wall = time.monotonic() - began
            reads = [future.result() for future in read_futures]
        ids = [m.group(1) for call in submits if (m := re.search(r"submitted (\S+)", call["stdout"]))]

        deadline = time.monotonic() + args.timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            listing = _cli(env, "list", "--json")
            if listing["rc"] == 0:
                states = {row["id"]: row["state"] for row in json.loads(listing["stdout"])}
                if ids and all(states.get(i) in TERMINAL for i in ids):
                    break
            time.sleep(5)
        all_wall = time.monotonic() - began

        store = JobStore(make_engine(settings.database_url))
        rows = store.list()
        client = ray_jobs.connect(settings)
        ray_job_ids = [job.metadata.get("lesa.job_id") for job in client.list_jobs() if job.metadata]
        mlflow = MlflowClient(settings.mlflow_uri)
        experiment = mlflow.get_experiment_by_name("lesa/imagenet/classification")
        runs = mlflow.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
        run_jobs = [run.data.tags.get("lesa.job_id") for run in runs]
        logs = [_cli(env, "logs", job_id) for job_id in ids]
        server_log = (settings.logs_dir / "mlflow-server.log").read_text(errors="replace")
        texts = [call["stdout"] + call["stderr"] for call in [*submits, *reads, *logs]] + [server_log]
        locked = sum(bool(LOCKED.search(text)) for text in texts)
        checks = {
            "rows": len(rows), "distinct_rows": len({row.id for row in rows}),
            "ray_jobs": sum(job_id in ids for job_id in ray_job_ids),
            "mlflow_runs": sum(job_id in ids for job_id in run_jobs),
            "terminal": sum(states.get(job_id) in TERMINAL for job_id in ids),
            "succeeded": sum(states.get(job_id) == "SUCCEEDED" for job_id in ids),
            "outputs_saying_database_is_locked": locked,
        }
        passed = (len(ids) == args.jobs and checks["rows"] == checks["distinct_rows"] == args.jobs
                  and checks["ray_jobs"] == checks["mlflow_runs"] == checks["terminal"] == args.jobs
                  and locked == 0 and not _errors(submits) and not _errors(reads))
        results = [{"case": "submit --detach", **_summary(submits)}, {"case": "status/list readers", **_summary(reads)}]
        write_report("bench_concurrent_submit", "cpu", {"jobs": args.jobs, "readers": args.readers,
                                                         "ray_head_cpus": args.num_cpus, "job": JOB.name,
                                                         "overrides": overrides},
                     results, out=args.out, passed=passed, checks=checks,
                     wall_s={"all_submits_returned": round(submit_wall, 1), "all_jobs_terminal": round(all_wall, 1)},
                     errors=_errors(submits) + _errors(reads),
                     failed_jobs={i: s for i, s in states.items() if i in ids and s != "SUCCEEDED"})
        if not passed:
            raise SystemExit(1)
    finally:
        _cli(env, "down", timeout=120)


if __name__ == "__main__":
    main()
