"""Standalone single-process trainer: ``python -m lesa_core.train classification|detection [options]``.

Each task trains from a named preset (:data:`lesa_core.tasks.PRESETS`) with command-line overrides, through the
same :func:`lesa_core.tasks.build_task` the orchestrator's Ray Train workers use, so a preset and a job spec of
the same values give the same run. It evaluates on the preset's cadence, prints the metrics (top-1 / top-5, or
COCO box and mask AP), and writes ``last.pth`` (resume with ``--resume``: the run continues exactly where it
stopped), ``best.pth`` (best evaluated primary metric) and ``metrics.jsonl`` to ``--output``.

Quickstarts (generated data, written on first use; a few minutes on 2 CPU cores for classification):

    python -m lesa_core.train classification --quickstart --output runs/quickstart
    python -m lesa_core.train detection --quickstart --output runs/quickstart_coco
    python -m lesa_core.evaluate --model test_lesa_resnet --checkpoint runs/quickstart/best.pth \\
        --data data/quickstart_imagenet
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .data.synthetic import write_coco_dataset, write_imagenet_dataset
from .engine.checkpoint import load_checkpoint, save_checkpoint
from .engine.loop import OnStep
from .metrics import names
from .tasks import PRESETS, QUICKSTART_DATA, TaskConfig, build_task

_DEFAULT_PRESET = {"classification": "lesa_imagenet", "detection": "lesa_coco_20e"}


def task_config(args: argparse.Namespace) -> TaskConfig:
    """The named preset with the command-line overrides applied; ``--lr`` is the run's peak learning rate."""
    preset = PRESETS[args.preset]
    if preset.task != args.task:
        raise SystemExit(f"--preset {args.preset} is a {preset.task} preset, not {args.task}")
    data = {"root": str(args.data) if args.data else None, "batch_size": args.batch_size, "workers": args.workers}
    optim = {"epochs": args.epochs, "warmup_epochs": args.warmup_epochs, "grad_accum_steps": args.grad_accum}
    run = {"seed": args.seed, "eval_every": args.eval_every, "amp": args.amp or None}
    if args.task == "classification":
        data |= {"img_size": args.img_size, "auto_augment": args.auto_augment, "mixup_alpha": args.mixup,
                 "cutmix_alpha": args.cutmix, "label_smoothing": args.label_smoothing,
                 "val_labels": str(args.val_labels) if args.val_labels else None}
        run["ema_decay"] = args.ema_decay
    config = replace(
        preset, data=replace(preset.data, **_given(data)), optim=replace(preset.optim, **_given(optim)),
        **_given(run),
    )
    if args.model:
        config = replace(config, model=replace(config.model, arch=args.model))
    if args.lr is not None:  # the peak for this run's batch (one process)
        batch = config.data.batch_size * config.optim.grad_accum_steps
        config = replace(config, optim=replace(config.optim, lr=args.lr, lr_reference_batch=batch))
    return config


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def ensure_quickstart_data(preset: str, root: str | Path) -> None:
    """Write the quickstart's generated dataset at ``root`` if it is missing."""
    sizes = QUICKSTART_DATA.get(preset)
    if sizes is None or Path(root).exists():
        return
    print(f"generating the {preset} dataset at {root}", flush=True)
    writer = write_coco_dataset if preset == "quickstart_coco" else write_imagenet_dataset
    writer(root, **sizes)


def _metrics_line(metrics: dict[str, float]) -> str:
    return "  ".join(f"{key} {value:.4g}" for key, value in metrics.items())


def train(args: argparse.Namespace, *, on_step: OnStep | None = None) -> dict[str, float]:
    """Train and evaluate as the subcommand's ``args`` say.

    Args:
        args: the parsed subcommand.
        on_step: also called with every training batch's ``(global step, metrics)``.

    Returns:
        The last epoch's train metrics, the last evaluation and ``best/<primary metric>``.
    """
    config = task_config(args)
    ensure_quickstart_data(args.preset, config.data.root)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    task = build_task(config, device=args.device)
    if args.compile:
        task.model = torch.compile(task.model)
    primary = names.primary_metric(config.task)
    start_epoch, best, last_eval = 0, -math.inf, {}
    if args.resume:
        checkpoint = load_checkpoint(args.resume, model=task.model, optimizer=task.optimizer,
                                     scheduler=task.scheduler, ema=task.ema)
        if any(checkpoint["extra"].get(key, value) != value for key, value in task.extra.items()):
            raise SystemExit(f"{args.resume}: trained on other classes than {config.data.root}")
        start_epoch = checkpoint["epoch"]
        best = checkpoint["extra"].get("best", best)
        last_eval = checkpoint["extra"].get("eval_metrics", {})
        print(f"resumed from {args.resume} at epoch {start_epoch}")

    run_info = {"config": json.loads(json.dumps(asdict(config), default=list)), "img_size": config.data.img_size}
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, config.optim.epochs):
        progress = tqdm(total=len(task.train_loader), desc=f"epoch {epoch + 1}/{config.optim.epochs}", leave=False)

        def report_step(step: int, step_metrics: dict[str, float], progress: tqdm = progress) -> None:
            progress.update(1)
            progress.set_postfix(loss=f"{step_metrics['train/loss']:.3f}", lr=f"{step_metrics['train/lr']:.2e}")
            if on_step is not None:
                on_step(step, step_metrics)

        metrics = task.train_one_epoch(epoch, on_step=report_step)
        progress.close()
        is_best = False
        if config.evaluates_after(epoch):
            last_eval = task.evaluate()
            if task.ema is not None:
                ema_metrics = task.evaluate(task.ema.module)
                last_eval |= {key.replace("val/", "val_ema/"): value for key, value in ema_metrics.items()}
            is_best = last_eval[primary] > best
            best = max(best, last_eval[primary])
            metrics |= last_eval | {f"best/{primary}": best}
        print(_metrics_line(metrics), flush=True)
        with open(output / "metrics.jsonl", "a") as log:
            log.write(json.dumps(metrics) + "\n")
        state = dict(model=task.model, optimizer=task.optimizer, scheduler=task.scheduler, scaler=None,
                     epoch=epoch + 1, ema=task.ema,
                     extra={**task.extra, **run_info, "best": best, "eval_metrics": last_eval})
        save_checkpoint(output / "last.pth", **state)
        if is_best:
            save_checkpoint(output / "best.pth", **state)
    if config.task == "detection" and last_eval:
        bbox, segm = last_eval[names.coco_metric("bbox")], last_eval[names.coco_metric("segm")]
        print(f"COCO AP: bbox {bbox:.4f}  segm {segm:.4f}", flush=True)
    return {**metrics, **last_eval, f"best/{primary}": best}


def _add_common_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    presets = sorted(name for name, preset in PRESETS.items() if preset.task == task)
    quickstart = f"quickstart_{'coco' if task == 'detection' else 'imagenet'}"
    parser.add_argument("--preset", choices=presets, default=_DEFAULT_PRESET[task], help="the run's starting values")
    parser.add_argument("--quickstart", dest="preset", action="store_const", const=quickstart,
                        help=f"same as --preset {quickstart} (generated data, written on first use)")
    parser.add_argument("--data", type=Path, help="dataset folder (default: the preset's)")
    parser.add_argument("--model", help="a registered model name, e.g. lesa_resnet50, test_lesa_resnet")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--warmup-epochs", type=float)
    parser.add_argument("--batch-size", type=int, help="images per step")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the preset's, scaled to the batch)")
    parser.add_argument("--grad-accum", type=int, help="batches per optimizer step")
    parser.add_argument("--eval-every", type=int, help="evaluate every N epochs (and after the last)")
    parser.add_argument("--workers", type=int, help="data loading processes")
    parser.add_argument("--output", type=Path, default=Path(f"runs/{task}"))
    parser.add_argument("--resume", type=Path, help="a last.pth to continue from")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast + channels_last (CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.set_defaults(run=train, task=task)


def build_parser() -> argparse.ArgumentParser:
    """The trainer's command line: one subcommand per task."""
    parser = argparse.ArgumentParser(prog="python -m lesa_core.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True)
    classification = tasks.add_parser("classification", help="ImageNet-layout image classification",
                                      description=train.__doc__)
    _add_common_arguments(classification, "classification")
    classification.add_argument("--img-size", type=int, help="crop side")
    classification.add_argument("--auto-augment", help="timm RandAugment string, e.g. rand-m9-mstd0.5")
    classification.add_argument("--mixup", type=float, help="mixup alpha")
    classification.add_argument("--cutmix", type=float, help="cutmix alpha")
    classification.add_argument("--label-smoothing", type=float)
    classification.add_argument("--ema-decay", type=float)
    classification.add_argument("--val-labels", type=Path, help="labels file of a flat val/ folder")
    detection = tasks.add_parser("detection", help="COCO-layout instance segmentation (Mask R-CNN)",
                                 description=train.__doc__)
    _add_common_arguments(detection, "detection")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
