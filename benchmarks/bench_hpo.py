"""Orchestration overhead of a search on the embedded default: per trial, the seconds from Tune starting it to its
first training step; for the whole search, its wall time against the sum of its trials' training times.

Runs ``jobs/quickstart_tune.yaml`` through lesa-orch (local Ray head + MLflow, started if down) on a tiny generated
dataset, then reads what the search logged on its parent MLflow run (``hpo/trial_startup_s_mean``/``_max``,
``hpo/wall_time_s``, ``hpo/trial_time_sum_s``, ``trials.json``) and on each trial's child run (``trial/startup_s``).
Target: trial start-up <= 10 s on CPU.

    python benchmarks/bench_hpo.py --trials 6 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from report import RESULTS_DIR, write_report

from lesa_core.data.synthetic import write_imagenet_dataset
from orchestrator import service
from orchestrator.tracking import TRIAL_END_TAG, TRIAL_ID_TAG

JOB = Path(__file__).resolve().parents[1] / "jobs" / "quickstart_tune.yaml"
TARGET_STARTUP_S = 10.0
IMAGE_SIZE = 32


def _overrides(root: Path, trials: int, epochs: int, concurrency: int | None) -> list[str]:
    overrides = [f"data.root={root}", f"data.img_size={IMAGE_SIZE}", f"model.img_size={IMAGE_SIZE}",
                 "schedule.batch_size_per_worker=8", f"schedule.epochs={epochs}", "schedule.warmup_epochs=0",
                 f"hpo.num_samples={trials}", "hpo.scheduler.grace_period=1"]
    if concurrency is not None:
        overrides.append(f"hpo.max_concurrent_trials={concurrency}")
    return overrides


def _peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at once."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def run_search(ctx: service.Context, root: Path, args: argparse.Namespace) -> tuple[str, float]:
    """Submits the search and waits for it; returns its job id and the seconds from submit to its end."""
    start = time.perf_counter()
    record = service.submit(ctx, JOB, _overrides(root, args.trials, args.epochs, args.concurrency))
    record = service.wait(ctx, record.id)
    elapsed = time.perf_counter() - start
    if record.state != "SUCCEEDED":
        raise RuntimeError(f"{record.id} ended {record.state}: {record.error}")
    return record.id, elapsed


def search_metrics(ctx: service.Context, job_id: str, workdir: Path) -> dict:
    """What the search logged in MLflow: parent metrics, trials.json and each child run's start-up."""
    record = service.get_job(ctx, job_id)
    tracker = ctx.tracker()
    parent = tracker.client.get_run(record.mlflow_run_id)
    trials_file = tracker.client.download_artifacts(parent.info.run_id, "trials.json", str(workdir))
    train_time = {row["trial_id"]: row["train_time_s"] for row in json.loads(Path(trials_file).read_text())}
    children = tracker.trial_runs(parent.info.experiment_id, parent.info.run_id)
    trials = [{
        "trial_id": run.data.tags.get(TRIAL_ID_TAG, ""),
        "outcome": run.data.tags.get(TRIAL_END_TAG, ""),
        "epochs": int(run.data.metrics.get("epoch", -1)) + 1,
        "startup_s": run.data.metrics.get("trial/startup_s"),
        "train_time_s": train_time.get(run.data.tags.get(TRIAL_ID_TAG, "")),
        "run_s": ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000,
    } for run in children]
    overlap = _peak_overlap([(run.info.start_time, run.info.end_time or run.info.start_time) for run in children])
    logs = service.job_logs(ctx, job_id)
    configured = re.search(r"starting the search: \d+ trials, (\d+) at a time", logs)
    return {"parent": dict(parent.data.metrics), "trials": trials, "peak_overlap": overlap,
            "concurrency": int(configured.group(1)) if configured else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="hpo.max_concurrent_trials (default: what the cluster fits)")
    parser.add_argument("--train-per-class", type=int, default=8, help="generated images per class (10 classes)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_hpo_cpu.json")
    args = parser.parse_args()

    ctx = service.Context.open()
    service.services_up(ctx.settings)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imagenet"
        write_imagenet_dataset(root, train_per_class=args.train_per_class, val_per_class=2, image_size=IMAGE_SIZE,
                               seed=0)
        job_id, job_wall_s = run_search(ctx, root, args)
        measured = search_metrics(ctx, job_id, Path(tmp))
    parent, trials = measured["parent"], measured["trials"]
    startup = [t["startup_s"] for t in trials if t["startup_s"] is not None]
    if not startup:
        raise RuntimeError(f"{job_id}: no trial logged trial/startup_s")
    wall_s, trial_sum_s = parent["hpo/wall_time_s"], parent["hpo/trial_time_sum_s"]
    concurrency = measured["concurrency"]
    summary = {
        "job": job_id,
        "trial_startup_s": {
            "per_trial": startup, "mean": parent["hpo/trial_startup_s_mean"],
            "max": parent["hpo/trial_startup_s_max"], "median": statistics.median(startup),
            "target": TARGET_STARTUP_S, "target_met": max(startup) <= TARGET_STARTUP_S,
        },
        "search": {
            "wall_time_s": wall_s, "trial_time_sum_s": trial_sum_s, "wall_over_trial_sum": wall_s / trial_sum_s,
            # with c trials at a time and no overhead, the wall time would be 1/c of the sum
            "ideal_wall_over_trial_sum": 1 / concurrency if concurrency else None,
            "concurrency": concurrency, "peak_trials_open_at_once": measured["peak_overlap"],
            "submit_to_end_s": job_wall_s,
            "outcomes": {k.removeprefix("hpo/trials_"): int(v) for k, v in parent.items()
                         if k.startswith("hpo/trials_")},
        },
    }
    settings = {"job": JOB.name, "trials": args.trials, "epochs": args.epochs,
                "max_concurrent_trials": args.concurrency or "auto", "train_images": 10 * args.train_per_class,
                "val_images": 20, "image_size": IMAGE_SIZE, "batch_size_per_worker": 8, "workers_per_trial": 1}
    write_report("bench_hpo", "cpu", settings, trials, out=args.out, **summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
