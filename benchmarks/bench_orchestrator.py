"""Orchestration overhead on the embedded default: detached submit latency, and the per-epoch cost of
Ray Train + MLflow tracking + checkpointing against the bare lesa_core engine loop on the same job.

Needs the local services (``lesa-orch up`` runs them; this script starts them if they are down).
Targets: submit <= 5 s to a running cluster; per-epoch overhead <= 5 %.

    python benchmarks/bench_orchestrator.py --epochs 4 --submits 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from lesa_core.data.imagenet import build_imagenet_loaders, resolve_imagenet_data_config
from lesa_core.data.synthetic import write_imagenet_dataset
from lesa_core.engine import classification
from lesa_core.engine.schedule import build_lr_scheduler
from orchestrator import service
from orchestrator.ray_backend.train_loop import build_model
from orchestrator.spec import load_spec

JOB = Path(__file__).resolve().parents[1] / "jobs" / "quickstart_imagenet.yaml"


def _overrides(root: Path, epochs: int) -> list[str]:
    return [f"data.root={root}", f"schedule.epochs={epochs}", "schedule.warmup_epochs=0", "eval.every_epochs=1"]


def bare_epoch_seconds(root: Path, epochs: int) -> list[float]:
    """The engine loop alone, in this process, on the job's data, model and schedule (1 thread like a worker)."""
    spec = load_spec(JOB, _overrides(root, epochs))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    probe = build_model(spec, 10)
    train_loader, val_loader = build_imagenet_loaders(
        root, data_config=resolve_imagenet_data_config(probe, spec.data.img_size),
        batch_size=spec.schedule.batch_size_per_worker, num_workers=0, crop_scale=spec.data.crop_scale,
    )
    model = build_model(spec, len(train_loader.dataset.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.scaled_lr, weight_decay=spec.schedule.weight_decay)
    scheduler = build_lr_scheduler(optimizer, epochs=epochs, steps_per_epoch=len(train_loader))
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        classification.train_one_epoch(model, train_loader, optimizer, scheduler, device="cpu", amp=False,
                                       criterion=nn.CrossEntropyLoss(), epoch=epoch)
        classification.evaluate(model, val_loader, device="cpu", amp=False)
        seconds.append(time.perf_counter() - start)
    return seconds


def ray_epoch_seconds(ctx: service.Context, root: Path, epochs: int) -> tuple[list[float], str]:
    """The same job through lesa-orch: seconds between the epoch metrics MLflow received."""
    record = service.submit(ctx, JOB, _overrides(root, epochs))
    record = service.wait(ctx, record.id)
    if record.state != "SUCCEEDED":
        raise RuntimeError(f"{record.id} ended {record.state}: {record.error}")
    history = ctx.tracker().client.get_metric_history(record.mlflow_run_id, "epoch")
    stamps = sorted(m.timestamp for m in history)
    return [(b - a) / 1000 for a, b in itertools.pairwise(stamps)], record.id


def submit_latencies(ctx: service.Context, root: Path, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        record = service.submit(ctx, JOB, _overrides(root, 50))
        latencies.append(time.perf_counter() - start)
        service.cancel(ctx, record.id)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--submits", type=int, default=3)
    parser.add_argument("--train-per-class", type=int, default=300,
                        help="generated images per class (10 classes); sets the epoch length")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_orchestrator_cpu.json")
    args = parser.parse_args()

    ctx = service.Context.open()
    service.services_up(ctx.settings)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imagenet"
        write_imagenet_dataset(root, train_per_class=args.train_per_class, val_per_class=20, image_size=64, seed=0)
        latencies = submit_latencies(ctx, root, args.submits)
        ray_seconds, job_id = ray_epoch_seconds(ctx, root, args.epochs)
        bare_seconds = bare_epoch_seconds(root, args.epochs)
    # the first epoch carries start-up in both; compare the steady ones
    ray_epoch, bare_epoch = statistics.median(ray_seconds), statistics.median(bare_seconds[1:])
    report = {
        "benchmark": "bench_orchestrator",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": "cpu",
        "submit_latency_s": {"runs": latencies, "median": statistics.median(latencies), "target": 5.0},
        "epoch_seconds": {"orchestrated": ray_seconds, "bare_engine": bare_seconds, "job": job_id},
        "per_epoch_overhead": {"value": ray_epoch / bare_epoch - 1, "target": 0.05,
                               "fixed_cost_s": ray_epoch - bare_epoch},
        "settings": {"job": str(JOB.name), "epochs": args.epochs, "train_images": 10 * args.train_per_class,
                     "val_images": 200},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("submit_latency_s", "per_epoch_overhead", "epoch_seconds")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
