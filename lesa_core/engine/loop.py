"""The training epoch both tasks share: optimizer updates, accumulation, clipping, EMA, schedule, observation.

A task supplies how a batch becomes a loss (:data:`BatchLoss`); everything about updates lives here once, so the
two engines have one signature and one meaning of a step: ``on_step(global_batch_index, metrics)`` after every
batch, ``global_batch_index = epoch * len(loader) + batch``. The loader's sampler is set to the epoch first, so
the data order is a function of (seed, epoch) and a resumed run replays it.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from .checkpoint import unwrap_model

OnStep = Callable[[int, dict[str, float]], None]
# (model, batch, device, amp) -> (loss, {part name: loss part}, images in the batch), or None for an empty batch
BatchLoss = Callable[[nn.Module, Any, torch.device, bool], "tuple[torch.Tensor, dict[str, torch.Tensor], int] | None"]


def use_bf16(device: torch.device, amp: bool) -> bool:
    """``amp`` means bf16 autocast and channels_last, on CUDA only."""
    return amp and device.type == "cuda"


def autocast(device: torch.device, amp: bool) -> AbstractContextManager:
    """bf16 autocast on CUDA with ``amp``, else nothing."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16(device, amp) else nullcontext()


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Reshuffle a loader whose sampler or batch sampler depends on the epoch (``DistributedSampler``)."""
    for holder in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if hasattr(holder, "set_epoch"):
            holder.set_epoch(epoch)


def run_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    *,
    batch_loss: BatchLoss,
    device: str | torch.device,
    amp: bool = False,
    epoch: int = 0,
    on_step: OnStep | None = None,
    grad_accum_steps: int = 1,
    grad_clip: float | None = None,
    ema: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One pass over ``loader``: the epoch of both task engines' ``train_one_epoch``.

    Args:
        model: the model (plain, DDP or compiled), put in train mode.
        loader: the task's batches; its sampler (or batch sampler) is set to ``epoch`` first.
        optimizer: stepped once every ``grad_accum_steps`` batches (and on the last batch).
        scheduler: a timm scheduler; ``step_update(num_updates)`` after each optimizer step, ``num_updates``
            counting optimizer steps since training began, so a resumed run lands on the same schedule.
        batch_loss: how the task turns a batch into a loss.
        device: where batches go.
        amp: bf16 autocast (and channels_last classification inputs) on CUDA; no effect on CPU.
        epoch: 0-based epoch index.
        on_step: called after every batch as ``on_step(epoch * len(loader) + batch, {"train/loss", "train/lr",
            "train/<part>", "epoch"})``.
        grad_accum_steps: batches per optimizer step; losses are averaged over the accumulated batches.
        grad_clip: clip the global gradient norm to this before each optimizer step.
        ema: e.g. ``timm.utils.ModelEmaV3``; ``ema.update(model, step=num_updates)`` after each optimizer step.
        scaler: a ``torch.amp.GradScaler`` for fp16 training; bf16 (what ``amp`` uses) needs none.

    Returns:
        Means over the epoch's batches of ``train/loss`` and each ``train/<part>``, ``train/lr`` at the last
        batch, ``train/images_per_sec`` (this process, wall clock) and ``epoch``.

    Raises:
        FloatingPointError: a non-finite loss, naming the epoch, the batch and every loss part.
        ValueError: the loader gave no usable batch.
    """
    device = torch.device(device)
    model.train()
    set_loader_epoch(loader, epoch)
    num_batches = len(loader)  # type: ignore[arg-type]
    if num_batches == 0:
        raise ValueError(f"epoch {epoch}: the training loader yields no batches")
    num_updates = epoch * math.ceil(num_batches / grad_accum_steps)  # updates since training began
    sums: dict[str, float] = defaultdict(float)
    used_batches, num_images, lr = 0, 0, optimizer.param_groups[0]["lr"]
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        window_start = step - step % grad_accum_steps
        window = min(grad_accum_steps, num_batches - window_start)  # the last window may be shorter
        is_update_step = step == window_start + window - 1
        # under DDP, all-reduce gradients only on the batch that steps the optimizer
        no_sync = getattr(model, "no_sync", None)
        with no_sync() if no_sync is not None and not is_update_step else nullcontext():
            computed = batch_loss(model, batch, device, amp)
            if computed is not None:
                loss, parts, batch_images = computed
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    named = ", ".join(f"{name}={value.item():.4g}" for name, value in parts.items())
                    raise FloatingPointError(f"non-finite loss {loss_value} at epoch {epoch} step {step}"
                                             + (f": {named}" if named else ""))
                scaled = loss / window
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
        lr = optimizer.param_groups[0]["lr"]
        if is_update_step:
            if grad_clip:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            if ema is not None:
                ema.update(unwrap_model(model), step=num_updates)
            if scheduler is not None:
                scheduler.step_update(num_updates=num_updates)
        if computed is None:  # every sample of the batch was unreadable and skipped by the dataset
            continue
        step_metrics = {"train/loss": loss_value, "train/lr": lr}
        step_metrics.update({f"train/{name}": value.item() for name, value in parts.items()})
        for name, value in step_metrics.items():
            sums[name] += value
        used_batches += 1
        num_images += batch_images
        if on_step is not None:
            on_step(epoch * num_batches + step, {**step_metrics, "epoch": float(epoch)})
    if used_batches == 0:
        raise ValueError(f"epoch {epoch}: the loader gave no usable batch")
    metrics = {name: total / used_batches for name, total in sums.items()}
    metrics["train/lr"] = lr
    metrics["train/images_per_sec"] = num_images / (time.perf_counter() - start)
    metrics["epoch"] = float(epoch)
    return metrics
