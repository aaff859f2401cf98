"""Classification training and evaluation: pure torch, device- and DDP-agnostic.

``train_one_epoch`` is the shared epoch loop (:func:`lesa_core.engine.loop.run_epoch`: per-update timm schedule,
gradient accumulation, clipping, EMA, bf16 autocast on CUDA) with the classification loss, mixup targets
included; callers observe it through ``on_step``. ``evaluate`` sums counts across ranks when torch.distributed
is initialised. Accuracies are fractions on a 0..1 scale, like the COCO metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data import Mixup
from torch import nn
from torch.utils.data import DataLoader

from ..metrics import names
from ..metrics.accuracy import topk_correct
from .loop import BatchLoss, autocast, run_epoch, use_bf16


def _to_device(images: torch.Tensor, device: torch.device, amp: bool) -> torch.Tensor:
    memory_format = torch.channels_last if use_bf16(device, amp) else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=memory_format)


def create_classification_model(
    name: str,
    *,
    num_classes: int,
    device: str | torch.device = "cpu",
    img_size: int | None = None,
    amp: bool = False,
    compile_model: bool = False,
    **model_kwargs: Any,
) -> nn.Module:
    """``timm.create_model(name)`` on ``device``, channels_last with ``amp`` on CUDA, optionally compiled.

    Args:
        name: a timm model name (the LESA models are registered by ``import lesa_core``).
        num_classes: classifier outputs.
        device: where the model lives.
        img_size: construction-time input size (sizes LESA's position tables); None keeps the default.
        amp: the model will run under bf16 autocast; on CUDA it is then stored channels_last.
        compile_model: wrap it in ``torch.compile``; checkpoints still hold the plain weights.
        **model_kwargs: passed to ``timm.create_model`` (LESA options, drop_rate, ...).
    """
    if img_size is not None:
        model_kwargs["img_size"] = img_size
    device = torch.device(device)
    model = timm.create_model(name, num_classes=num_classes, **model_kwargs).to(device)
    if use_bf16(device, amp):
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def classification_loss(criterion: nn.Module, mixup_fn: Mixup | None = None) -> BatchLoss:
    """How an (images (B, 3, H, W), labels (B,)) batch becomes a loss, for :func:`~.loop.run_epoch`."""

    def batch_loss(model: nn.Module, batch: Any, device: torch.device, amp: bool):
        images, labels = batch
        images = _to_device(images, device, amp)
        targets = labels.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        with autocast(device, amp):
            loss = criterion(model(images), targets)
        return loss, {}, images.shape[0]

    return batch_loss


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    criterion: nn.Module | None = None,
    mixup_fn: Mixup | None = None,
    **loop_options: Any,
) -> dict[str, float]:
    """Train for one pass over ``loader`` of (B, 3, H, W) images and (B,) labels.

    Args:
        model, loader, optimizer, scheduler: see :func:`~.loop.run_epoch`.
        criterion: loss of (logits, targets), default cross-entropy; a soft-target loss with ``mixup_fn``.
        mixup_fn: timm ``Mixup``, turns (images, labels) into mixed images and (B, C) soft targets.
        **loop_options: ``device``, ``amp``, ``epoch``, ``on_step``, ``grad_accum_steps``, ``grad_clip``, ``ema``,
            ``scaler``: the shared loop's keywords (:func:`~.loop.run_epoch`), the same for both tasks.

    Returns:
        ``train/loss`` (mean over batches), ``train/lr`` (at the last batch), ``train/images_per_sec`` (this
        process, wall clock) and ``epoch`` (the index passed in).

    Raises:
        FloatingPointError: a batch's loss is NaN or infinite; the message names the epoch and step.
    """
    batch_loss = classification_loss(criterion or nn.CrossEntropyLoss(), mixup_fn)
    return run_epoch(model, loader, optimizer, scheduler, batch_loss=batch_loss, **loop_options)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *, device: str | torch.device, amp: bool
) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean cross-entropy over ``loader``, summed across ranks under DDP.

    Args:
        model: plain, DDP or compiled; the DDP wrapper is bypassed (weights are identical on every rank, and
            ranks may hold different numbers of batches), and the model is put in eval mode.
        loader: yields (B, 3, H, W) images and (B,) labels (a DataLoader, or one wrapped in a progress bar);
            under DDP each rank holds a disjoint shard.
        device: where batches go.
        amp: bf16 autocast and channels_last inputs on CUDA; no effect on CPU.

    Returns:
        ``val/acc1`` and ``val/acc5`` as fractions (0..1) and ``val/loss``, over all images of all ranks.
    """
    device = torch.device(device)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, images
    for images, labels in loader:
        images = _to_device(images, device, amp)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        totals[0] += F.cross_entropy(logits.float(), labels, reduction="sum")
        totals[1:3] += topk_correct(logits, labels, ks=(1, 5))
        totals[3] += labels.shape[0]
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    loss_sum, top1, top5, num_images = totals.tolist()
    if num_images == 0:
        raise ValueError("the evaluation loader yielded no images")
    return {names.VAL_ACC1: top1 / num_images, names.VAL_ACC5: top5 / num_images, names.VAL_LOSS: loss_sum / num_images}

