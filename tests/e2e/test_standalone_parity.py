"""The orchestrator adds Ray and MLflow, nothing else: one worker of a job spec trains what ``python -m
lesa_core.train`` trains from the same values (the COCO quickstart, shrunk), loss for loss."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from lesa_core.metrics import names
from tests.e2e.conftest import REPO, set_args

pytestmark = pytest.mark.slow

EPOCHS = 2


def test_one_worker_of_the_coco_quickstart_job_matches_the_standalone_quickstart(deployment, tmp_path):
    root = deployment.home / "data" / "coco_parity"
    overrides = [f"data.root={root}", "data.synthetic.num_train=16", "data.synthetic.num_val=6",
                 "resources.num_workers=1", f"schedule.epochs={EPOCHS}", "eval.every_epochs=1"]
    done = deployment.cli("submit", "jobs/quickstart_coco.yaml", *set_args(overrides))
    assert done.returncode == 0, done.stdout + done.stderr
    job = deployment.job(re.search(r"submitted (\S+)", done.stdout).group(1))
    client = deployment.mlflow()
    orchestrated = {metric: [m.value for m in sorted(client.get_metric_history(job["mlflow_run_id"], metric),
                                                     key=lambda m: m.step)]
                    for metric in (names.TRAIN_LOSS, *names.COCO_EVAL)}

    # the job's worker has one CPU (OMP_NUM_THREADS=1): the standalone run gets the same arithmetic
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    standalone = subprocess.run(
        [sys.executable, "-m", "lesa_core.train", "detection", "--quickstart", "--data", str(root), "--epochs",
         str(EPOCHS), "--eval-every", "1", "--output", str(tmp_path), "--device", "cpu"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )
    assert standalone.returncode == 0, standalone.stderr[-2000:]
    assert "COCO AP: bbox" in standalone.stdout
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == EPOCHS == len(orchestrated[names.TRAIN_LOSS])
    for epoch, metrics in enumerate(epochs):
        assert metrics[names.TRAIN_LOSS] == pytest.approx(orchestrated[names.TRAIN_LOSS][epoch], rel=1e-4)
        for metric in names.COCO_EVAL:
            assert abs(metrics[metric] - orchestrated[metric][epoch]) <= 0.01, (epoch, metric)
