"""Standalone single-process trainer: ``python -m lesa_core.train <task> [options]``.

Each task is a subcommand with its own ``train_<task>(args)`` function. Classification trains a timm model
on an ImageNet-layout folder with a named recipe (:data:`lesa_core.engine.recipe.RECIPES`), evaluates after
every epoch, and writes ``last.pth`` (resume with ``--resume``; the run continues exactly where it stopped),
``best.pth`` (highest val top-1) and ``metrics.jsonl`` to ``--output``.

Quickstart (10 generated shape classes, test_lesa_resnet at 64 px, a few minutes on 2 CPU cores):

    python -m lesa_core.data.synthetic imagenet data/quickstart_imagenet
    python -m lesa_core.train classification --data data/quickstart_imagenet --model test_lesa_resnet \\
        --recipe quickstart --workers 1 --output runs/quickstart
    python -m lesa_core.evaluate --model test_lesa_resnet --checkpoint runs/quickstart/best.pth \\
        --data data/quickstart_imagenet
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from tqdm import tqdm

from .data.imagenet import (
    build_imagenet_loaders,
    create_mixup_and_criterion,
    find_classes,
    resolve_imagenet_data_config,
)
from .engine.checkpoint import load_checkpoint, save_checkpoint, unwrap_model
from .engine.classification import OnStep, create_classification_model, evaluate, train_one_epoch
from .engine.recipe import RECIPES, ClassificationRecipe, build_optimizer, build_scheduler


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def classification_recipe(args: argparse.Namespace) -> ClassificationRecipe:
    """The named recipe with the command-line overrides applied; ``--lr`` is the run's peak learning rate."""
    recipe = RECIPES[args.recipe]
    overrides = {
        "epochs": args.epochs, "warmup_epochs": args.warmup_epochs, "batch_size_per_device": args.batch_size,
        "img_size": args.img_size, "auto_augment": args.auto_augment, "mixup_alpha": args.mixup,
        "cutmix_alpha": args.cutmix, "label_smoothing": args.label_smoothing, "ema_decay": args.ema_decay,
        "grad_accum_steps": args.grad_accum,
    }
    recipe = replace(recipe, **{key: value for key, value in overrides.items() if value is not None})
    if args.lr is not None:
        recipe = replace(recipe, base_lr=args.lr, base_batch_size=recipe.global_batch_size(world_size=1))
    return recipe


def _metrics_line(metrics: dict[str, float]) -> str:
    return "  ".join(f"{key} {value:.4g}" for key, value in metrics.items())


def train_classification(args: argparse.Namespace, *, on_step: OnStep | None = None) -> dict[str, float]:
    """Train and evaluate every epoch as the ``classification`` subcommand's ``args`` say.

    Args:
        args: the parsed ``classification`` subcommand.
        on_step: also called with every training batch's ``(global step, metrics)``.

    Returns:
        The last epoch's train and val metrics plus ``val/best_acc1``.
    """
    recipe = classification_recipe(args)
    seed_everything(args.seed)
    device = torch.device(args.device)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    classes = find_classes(args.data)
    model = create_classification_model(args.model, num_classes=len(classes), device=device,
                                        img_size=recipe.img_size, amp=args.amp, compile_model=args.compile)
    data_config = resolve_imagenet_data_config(unwrap_model(model), recipe.img_size)
    train_loader, val_loader = build_imagenet_loaders(
        args.data, data_config=data_config, batch_size=recipe.batch_size_per_device, num_workers=args.workers,
        seed=args.seed, auto_augment=recipe.auto_augment, crop_scale=recipe.crop_scale,
        color_jitter=recipe.color_jitter, classes=classes, val_labels=args.val_labels,
        pin_memory=device.type == "cuda",
    )
    optimizer = build_optimizer(model, recipe, world_size=1)
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch=len(train_loader))
    mixup_fn, criterion = create_mixup_and_criterion(
        len(classes), mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha,
        label_smoothing=recipe.label_smoothing,
    )
    ema = ModelEmaV3(unwrap_model(model), decay=recipe.ema_decay) if recipe.ema_decay else None

    start_epoch, best_acc1 = 0, float("-inf")
    if args.resume:
        checkpoint = load_checkpoint(args.resume, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema)
        if checkpoint["extra"].get("classes", classes) != classes:
            raise ValueError(f"{args.resume}: trained on other classes than {args.data}/train")
        start_epoch, best_acc1 = checkpoint["epoch"], checkpoint["extra"].get("best_acc1", best_acc1)
        print(f"resumed from {args.resume} at epoch {start_epoch}")

    run_info = {"model": args.model, "classes": classes, "recipe": asdict(recipe), "seed": args.seed}
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, recipe.epochs):
        progress = tqdm(total=len(train_loader), desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False)

        def report_step(step: int, step_metrics: dict[str, float], progress: tqdm = progress) -> None:
            progress.update(1)
            progress.set_postfix(loss=f"{step_metrics['train/loss']:.3f}", lr=f"{step_metrics['train/lr']:.2e}")
            if on_step is not None:
                on_step(step, step_metrics)

        metrics = train_one_epoch(
            model, train_loader, optimizer, scheduler, device=device, amp=args.amp, criterion=criterion,
            epoch=epoch, on_step=report_step, mixup_fn=mixup_fn, grad_accum_steps=recipe.grad_accum_steps, ema=ema,
        )
        progress.close()
        val_progress = tqdm(val_loader, desc="val", leave=False)
        metrics |= evaluate(model, val_progress, device=device, amp=args.amp)
        if ema is not None:
            ema_metrics = evaluate(ema.module, tqdm(val_loader, desc="val ema", leave=False), device=device,
                                   amp=args.amp)
            metrics |= {key.replace("val/", "val_ema/"): value for key, value in ema_metrics.items()}
        is_best = metrics["val/acc1"] > best_acc1
        best_acc1 = max(best_acc1, metrics["val/acc1"])
        metrics["val/best_acc1"] = best_acc1
        print(_metrics_line(metrics), flush=True)
        with open(output / "metrics.jsonl", "a") as log:
            log.write(json.dumps(metrics) + "\n")

        state = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=None, epoch=epoch + 1, ema=ema,
                     extra={**run_info, "best_acc1": best_acc1, "metrics": metrics})
        save_checkpoint(output / "last.pth", **state)
        if is_best:
            save_checkpoint(output / "best.pth", **state)
    return metrics


def add_classification_parser(tasks: Any) -> None:
    """The ``classification`` subcommand."""
    parser = tasks.add_parser("classification", help="ImageNet-layout image classification",
                              description=train_classification.__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ and val/")
    parser.add_argument("--model", required=True, help="timm model name, e.g. lesa_resnet50, test_lesa_resnet")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="lesa_imagenet")
    parser.add_argument("--quickstart", dest="recipe", action="store_const", const="quickstart",
                        help="same as --recipe quickstart")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--warmup-epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="images per step (recipe: batch_size_per_device)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, scaled to the batch)")
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--auto-augment", help="timm RandAugment string, e.g. rand-m9-mstd0.5")
    parser.add_argument("--mixup", type=float, help="mixup alpha")
    parser.add_argument("--cutmix", type=float, help="cutmix alpha")
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--ema-decay", type=float)
    parser.add_argument("--grad-accum", type=int, help="batches per optimizer step")
    parser.add_argument("--val-labels", type=Path, help="labels file of a flat val/ folder")
    parser.add_argument("--workers", type=int, default=4, help="data loading processes")
    parser.add_argument("--output", type=Path, default=Path("runs/classification"))
    parser.add_argument("--resume", type=Path, help="a last.pth to continue from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast + channels_last (CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.set_defaults(run=train_classification)


def build_parser() -> argparse.ArgumentParser:
    """The trainer's command line: one subcommand per task."""
    parser = argparse.ArgumentParser(prog="python -m lesa_core.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True)
    add_classification_parser(tasks)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
