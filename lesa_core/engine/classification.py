"""Classification training and evaluation loops: pure torch, device- and DDP-agnostic.

``train_one_epoch`` steps a timm scheduler per optimizer update, supports gradient accumulation, mixup
targets, an EMA copy and bf16 autocast (CUDA); callers observe it through ``on_step``. ``evaluate`` sums
counts across ranks when torch.distributed is initialised. Accuracies are fractions on a 0..1 scale, like
the COCO metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..metrics.accuracy import topk_correct
from .checkpoint import unwrap_model

OnStep = Callable[[int, dict[str, float]], None]


def _use_bf16(device: torch.device, amp: bool) -> bool:
    return amp and device.type == "cuda"


def _autocast(device: torch.device, amp: bool) -> AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if _use_bf16(device, amp) else nullcontext()


def _to_device(images: torch.Tensor, device: torch.device, amp: bool) -> torch.Tensor:
    memory_format = torch.channels_last if _use_bf16(device, amp) else torch.contiguous_format
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
    if _use_bf16(device, amp):
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a loader whose sampler depends on the epoch (``DistributedSampler.set_epoch``)."""
    set_epoch = getattr(loader.sampler, "set_epoch", None)
    if set_epoch is not None:
        set_epoch(epoch)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    device: str | torch.device,
    amp: bool,
    criterion: nn.Module,
    epoch: int,
    on_step: OnStep | None = None,
    mixup_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    grad_accum_steps: int = 1,
    ema: nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """Train for one pass over ``loader``.

    Args:
        model: the model (plain, DDP or compiled), put in train mode.
        loader: yields (B, 3, H, W) images and (B,) labels; its sampler is set to ``epoch``.
        optimizer: stepped once every ``grad_accum_steps`` batches (and on the last batch).
        scheduler: a timm scheduler; ``step_update(num_updates)`` after each optimizer step, ``num_updates``
            counting optimizer steps since training began (``epoch * ceil(len(loader) / grad_accum_steps)`` at
            the start of this epoch), so a resumed run lands on the same schedule.
        device: where batches go.
        amp: bf16 autocast and channels_last inputs on CUDA; no effect on CPU.
        criterion: loss of (logits, targets); soft-target loss when ``mixup_fn`` is given.
        epoch: 0-based epoch index.
        on_step: called after every batch as ``on_step(global_batch_index, {"train/loss", "train/lr", "epoch"})``.
        mixup_fn: timm ``Mixup``, turns (images, labels) into mixed images and (B, C) soft targets.
        grad_accum_steps: batches per optimizer step; losses are averaged over the accumulated batches.
        ema: e.g. ``timm.utils.ModelEmaV3``; ``ema.update(model, step=num_updates)`` after each optimizer step.
        scaler: a ``torch.amp.GradScaler`` for fp16 training; bf16 (what ``amp`` uses) needs none.

    Returns:
        ``train/loss`` (mean over batches), ``train/lr`` (at the last batch), ``train/images_per_sec`` (this
        process, wall clock) and ``epoch`` (the index passed in).

    Raises:
        FloatingPointError: a batch's loss is NaN or infinite; the message names the epoch and step.
    """
    device = torch.device(device)
    model.train()
    set_loader_epoch(loader, epoch)
    num_batches = len(loader)
    if num_batches == 0:
        raise ValueError("the training loader yields no batches")
    updates_per_epoch = math.ceil(num_batches / grad_accum_steps)
    num_updates = epoch * updates_per_epoch
    loss_sum, num_images, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for step, (images, labels) in enumerate(loader):
        images = _to_device(images, device, amp)
        targets = labels.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        window_start = step - step % grad_accum_steps
        window = min(grad_accum_steps, num_batches - window_start)  # the last window may be shorter
        is_update_step = step == window_start + window - 1
        # under DDP, all-reduce gradients only on the batch that steps the optimizer
        no_sync = getattr(model, "no_sync", None)
        sync_context = no_sync() if no_sync is not None and not is_update_step else nullcontext()
        with sync_context:
            with _autocast(device, amp):
                loss = criterion(model(images), targets)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"non-finite loss {loss_value} at epoch {epoch} step {step}")
            scaled_loss = loss / window
            (scaler.scale(scaled_loss) if scaler is not None else scaled_loss).backward()
        lr = optimizer.param_groups[0]["lr"]
        if is_update_step:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            if ema is not None:
                ema.update(unwrap_model(model), step=num_updates)
            scheduler.step_update(num_updates=num_updates)
        loss_sum += loss_value
        num_images += images.shape[0]
        if on_step is not None:
            on_step(epoch * num_batches + step, {"train/loss": loss_value, "train/lr": lr, "epoch": float(epoch)})
    seconds = time.perf_counter() - start
    return {"train/loss": loss_sum / num_batches, "train/lr": lr, "train/images_per_sec": num_images / seconds,
            "epoch": float(epoch)}


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
        with _autocast(device, amp):
            logits = model(images)
        totals[0] += F.cross_entropy(logits.float(), labels, reduction="sum")
        totals[1:3] += topk_correct(logits, labels, ks=(1, 5))
        totals[3] += labels.shape[0]
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    loss_sum, top1, top5, num_images = totals.tolist()
    if num_images == 0:
        raise ValueError("the evaluation loader yielded no images")
    return {"val/acc1": top1 / num_images, "val/acc5": top5 / num_images, "val/loss": loss_sum / num_images}

