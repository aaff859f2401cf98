"""train_one_epoch / evaluate for Mask R-CNN: pure torch, no Ray or MLflow; callers observe via ``on_step``.

Batches are ``(images, targets)`` lists as :func:`lesa_core.data.coco.collate_fn` makes them. The
scheduler is a timm scheduler stepped per iteration (``step_update``), so warmup and step or cosine
decay follow the iteration count.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ..metrics.coco_eval import CocoEvaluator

StepCallback = Callable[[int, dict[str, float]], None]


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()


def _to_device(images: list[torch.Tensor], targets: list[dict[str, Any]], device: torch.device):
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    return images, targets


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    *,
    device: torch.device | str,
    amp: bool = False,
    on_step: StepCallback | None = None,
    epoch: int = 0,
    grad_clip: float | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns epoch means as ``train/loss``, ``train/loss_<part>``, ``train/lr``,
    ``train/images_per_sec`` and ``epoch``.

    Raises:
        FloatingPointError: a non-finite loss, naming the epoch, the step and every loss part.
    """
    device = torch.device(device)
    model.train()
    steps_per_epoch = len(loader) if hasattr(loader, "__len__") else 0
    sums: dict[str, float] = defaultdict(float)
    images_seen, steps = 0, 0
    start = time.perf_counter()
    for step, (images, targets) in enumerate(loader):
        if not images:  # every sample of the batch was unreadable and skipped by the dataset
            continue
        images, targets = _to_device(images, targets, device)
        with _autocast(device, amp):
            loss_parts = model(images, targets)
        loss = sum(loss_parts.values())
        if not math.isfinite(loss.item()):
            parts = ", ".join(f"{name}={value.item():.4g}" for name, value in loss_parts.items())
            raise FloatingPointError(f"non-finite loss at epoch {epoch} step {step}: {parts}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step_update(num_updates=epoch * steps_per_epoch + step + 1)

        steps += 1
        images_seen += len(images)
        step_metrics = {"train/loss": loss.item(), "train/lr": optimizer.param_groups[0]["lr"]}
        step_metrics.update({f"train/{name}": value.item() for name, value in loss_parts.items()})
        for name, value in step_metrics.items():
            sums[name] += value
        if on_step is not None:
            on_step(step, step_metrics)
    if steps == 0:
        raise ValueError(f"epoch {epoch}: the loader gave no usable batch")
    metrics = {name: total / steps for name, total in sums.items()}
    metrics["train/lr"] = optimizer.param_groups[0]["lr"]
    metrics["train/images_per_sec"] = images_seen / (time.perf_counter() - start)
    metrics["epoch"] = float(epoch)
    return metrics


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str,
    amp: bool = False,
    iou_types: tuple[str, ...] = ("bbox", "segm"),
    on_step: StepCallback | None = None,
) -> dict[str, float]:
    """COCO evaluation of ``model`` on ``loader`` (its dataset a :class:`~lesa_core.data.coco.CocoInstances`).

    Under DDP each rank predicts its shard; the evaluator gathers all predictions and scores them once.
    Returns ``coco/bbox_mAP``, ``coco/bbox_mAP_50``, ... and the same for ``segm``, on a 0..1 scale.
    """
    device = torch.device(device)
    model.eval()
    dataset = loader.dataset
    evaluator = CocoEvaluator(dataset.coco, iou_types=iou_types, label_to_cat_id=dataset.label_to_cat_id)
    for step, (images, targets) in enumerate(loader):
        if not images:
            continue
        images = [image.to(device, non_blocking=True) for image in images]
        with _autocast(device, amp):
            outputs = model(images)
        evaluator.update({
            int(target["image_id"]): {k: v.float().cpu() for k, v in output.items()}
            for target, output in zip(targets, outputs, strict=True)
        })
        if on_step is not None:
            on_step(step, {})
    evaluator.synchronize_between_processes()
    return evaluator.summarize()
