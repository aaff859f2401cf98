"""The COCO quickstart two ways, side by side: ``lesa-orch submit`` with one worker, and ``python -m lesa_core.train
detection --quickstart`` (no Ray, no MLflow), same values and seed, one CPU thread each.

Starts a throwaway embedded deployment (its own home and ports, a 1-CPU Ray head), runs both at once, and writes
``results/parity_quickstart_cpu.json``: each side's final COCO metrics and wall time, and the largest AP difference
(the target: within 0.01).

    python benchmarks/parity_quickstart.py [--epochs 38]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from report import RESULTS_DIR, write_report

from lesa_core.metrics import names

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "lesa-orch")
TARGET_AP_DIFFERENCE = 0.01


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=38, help="the quickstart's 38, or fewer for a quick check")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "parity_quickstart_cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        mlflow_port = _free_port()
        env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        env |= {"LESA_ORCH_HOME": str(home), "LESA_ORCH_RAY_PORT": str(_free_port()),
                "LESA_ORCH_MLFLOW_PORT": str(mlflow_port), "LESA_ORCH_RAY_GCS_PORT": str(_free_port()),
                "PYTHONUNBUFFERED": "1"}
        subprocess.run([CLI, "up", "--num-cpus", "1"], env=env, check=True, cwd=REPO)
        try:
            overrides = [f"data.root={home}/data/orchestrated", "resources.num_workers=1",
                         f"schedule.epochs={args.epochs}"]
            start = time.perf_counter()
            job = subprocess.Popen([CLI, "submit", "jobs/quickstart_coco.yaml",
                                    *[arg for item in overrides for arg in ("--set", item)]],
                                   env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
            standalone_out = home / "standalone"
            standalone = subprocess.run(
                [sys.executable, "-m", "lesa_core.train", "detection", "--quickstart", "--data",
                 str(home / "data" / "standalone"), "--epochs", str(args.epochs), "--output", str(standalone_out),
                 "--device", "cpu"],
                env={**env, "OMP_NUM_THREADS": "1"}, cwd=REPO, capture_output=True, text=True, check=True,
            )
            standalone_s = time.perf_counter() - start
            job_stdout, _ = job.communicate()
            orchestrated_s = time.perf_counter() - start
            job_id = re.search(r"submitted (\S+)", job_stdout).group(1)
            record = json.loads(subprocess.run([CLI, "status", job_id, "--json"], env=env, cwd=REPO,
                                               capture_output=True, text=True, check=True).stdout)
            uri = f"http://127.0.0.1:{mlflow_port}"
            run = MlflowClient(uri, registry_uri=uri).get_run(record["mlflow_run_id"])
            orchestrated = {metric: run.data.metrics[metric] for metric in names.COCO_EVAL}
        finally:
            subprocess.run([CLI, "down"], env=env, cwd=REPO)
        last = json.loads((standalone_out / "metrics.jsonl").read_text().splitlines()[-1])
        alone = {metric: last[metric] for metric in names.COCO_EVAL}
        print(standalone.stdout.splitlines()[-1])
    difference = max(abs(alone[metric] - orchestrated[metric]) for metric in names.COCO_EVAL)
    results = [
        {"case": "lesa-orch submit, 1 worker", "job": job_id, "state": record["state"], "wall_s": orchestrated_s,
         **orchestrated},
        {"case": "python -m lesa_core.train detection --quickstart", "wall_s": standalone_s, **alone},
    ]
    settings = {"job": "jobs/quickstart_coco.yaml", "overrides": ["resources.num_workers=1"], "epochs": args.epochs,
                "threads_per_side": 1}
    write_report("parity_quickstart", "cpu", settings, results, out=args.out,
                 max_ap_difference=difference, target=TARGET_AP_DIFFERENCE,
                 target_met=difference <= TARGET_AP_DIFFERENCE)


if __name__ == "__main__":
    main()
