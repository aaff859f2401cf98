"""Mask R-CNN training and COCO evaluation: pure torch, no Ray or MLflow; callers observe via ``on_step``.

Batches are ``(images, targets)`` lists as :func:`lesa_core.data.coco.collate_fn` makes them. ``train_one_epoch``
is the shared epoch loop (:func:`lesa_core.engine.loop.run_epoch`) with the detector's summed loss terms, so it
has the classification engine's signature and meaning of a step, and reports each term as ``train/<term>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..metrics.coco_eval import CocoEvaluator
from ..metrics.names import IOU_TYPES
from .loop import autocast, run_epoch


def _to_device(images: list[torch.Tensor], targets: list[dict[str, Any]], device: torch.device):
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    return images, targets


def detection_loss(model: nn.Module, batch: Any, device: torch.device, amp: bool):
    """An (images, targets) batch -> (summed loss, the detector's loss terms, images), or None if it is empty."""
    images, targets = batch
    if not images:  # every sample of the batch was unreadable and skipped by the dataset
        return None
    images, targets = _to_device(images, targets, device)
    with autocast(device, amp):
        loss_parts = model(images, targets)
    return sum(loss_parts.values()), loss_parts, len(images)


def train_one_epoch(
    model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, scheduler: Any | None, **loop_options: Any
) -> dict[str, float]:
    """One pass over ``loader``; ``loop_options`` are the shared loop's keywords (:func:`~.loop.run_epoch`:
    ``device``, ``amp``, ``epoch``, ``on_step``, ``grad_accum_steps``, ``grad_clip``, ``ema``, ``scaler``).

    Returns:
        Epoch means of ``train/loss`` and ``train/loss_<term>``, ``train/lr``, ``train/images_per_sec``, ``epoch``.

    Raises:
        FloatingPointError: a non-finite loss, naming the epoch, the step and every loss term.
    """
    return run_epoch(model, loader, optimizer, scheduler, batch_loss=detection_loss, **loop_options)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str,
    amp: bool = False,
    iou_types: tuple[str, ...] = IOU_TYPES,
) -> dict[str, float]:
    """COCO evaluation of ``model`` on ``loader`` (its dataset a :class:`~lesa_core.data.coco.CocoInstances`).

    Under DDP each rank predicts its shard; the evaluator gathers all predictions and scores them once.
    Returns ``coco/bbox_mAP``, ``coco/bbox_mAP_50``, ... and the same for ``segm``, on a 0..1 scale.
    """
    device = torch.device(device)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    model.eval()
    dataset = loader.dataset
    evaluator = CocoEvaluator(dataset.coco, iou_types=iou_types, label_to_cat_id=dataset.label_to_cat_id)
    for images, targets in loader:
        if not images:
            continue
        images = [image.to(device, non_blocking=True) for image in images]
        with autocast(device, amp):
            outputs = model(images)
        evaluator.update({
            int(target["image_id"]): {k: v.float().cpu() for k, v in output.items()}
            for target, output in zip(targets, outputs, strict=True)
        })
    evaluator.synchronize_between_processes()
    return evaluator.summarize()
