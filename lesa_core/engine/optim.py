"""How parameters are updated, for every task: one optimizer + learning-rate schedule config and its factory.

:class:`OptimConfig` is the one schema with the one set of defaults; the job spec's ``schedule`` section and the
standalone trainer both fill it. The optimizer comes from timm's ``create_optimizer_v2`` (weight decay on every
trainable parameter, as the official LESA code does); the schedule is a timm scheduler counted in optimizer
updates, stepped with ``scheduler.step_update(num_updates)``: linear warmup from ``warmup_factor * lr``, then
cosine to ``min_lr`` or steps of ``gamma`` at ``milestones``.

Named presets are data (``OPTIM_PRESETS``): the official LESA ImageNet recipe (Chenglin-Yang/LESA_classification:
SGD with Nesterov momentum 0.9, lr 0.05 per 128 images, weight decay 8e-5, 95 epochs of which 5 warm up from 0,
cosine to 0 per iteration) and the paper's COCO schedule (LESA_detection's 20e config: SGD lr 0.01 for 8 x 1
images, weight decay 1e-4, steps of 0.1 at epochs 16 and 19, linear warmup from 0.001 x lr).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn

OPTIMIZERS = ("sgd", "adamw")
DECAYS = ("cosine", "step")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule.

    Attributes:
        epochs: length of training, warmup included.
        optimizer: ``sgd`` (momentum, optionally Nesterov) or ``adamw``.
        lr: peak learning rate for ``lr_reference_batch`` images per update; scaled linearly to the global batch.
        lr_reference_batch: the batch ``lr`` is quoted for.
        momentum, nesterov: SGD only.
        weight_decay: on every trainable parameter.
        warmup_epochs: linear warmup, fractions of an epoch allowed, counted in updates.
        warmup_factor: the warmup starts at ``warmup_factor * peak``.
        decay: ``cosine`` to ``min_lr`` after the warmup, or ``step``: times ``gamma`` at each of ``milestones``.
        grad_clip: clip the global gradient norm to this, or None.
        grad_accum_steps: batches per optimizer update.
    """

    epochs: int = 1
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    lr_reference_batch: int = 256
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    warmup_factor: float = 0.001
    decay: Literal["cosine", "step"] = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr: float = 0.0
    grad_clip: float | None = None
    grad_accum_steps: int = 1

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.decay not in DECAYS:
            raise ValueError(f"decay={self.decay!r} is not one of {DECAYS}")
        if self.epochs < 1 or self.grad_accum_steps < 1 or self.lr_reference_batch < 1:
            raise ValueError("epochs, grad_accum_steps and lr_reference_batch must be at least 1")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be in [0, epochs={self.epochs}]")
        if self.decay == "step" and not self.milestones:
            raise ValueError("decay='step' needs milestones (epochs at which lr is multiplied by gamma)")

    def peak_lr(self, global_batch: int) -> float:
        """``lr`` scaled linearly from ``lr_reference_batch`` to ``global_batch`` images per update."""
        return self.lr * global_batch / self.lr_reference_batch


OPTIM_PRESETS: dict[str, OptimConfig] = {
    "lesa_imagenet": OptimConfig(
        epochs=95, optimizer="sgd", lr=0.05, lr_reference_batch=128, nesterov=True, weight_decay=8e-5,
        warmup_epochs=5, warmup_factor=0.0,
    ),
    # 8 GPUs x 1 image; mmdetection's 500 warmup iterations are ~0.034 of a COCO epoch at that batch
    "lesa_coco_20e": OptimConfig(
        epochs=20, optimizer="sgd", lr=0.01, lr_reference_batch=8, weight_decay=1e-4, warmup_epochs=0.034,
        decay="step", milestones=(16, 19),
    ),
}


def build_optimizer(model: nn.Module, config: OptimConfig, *, global_batch: int) -> torch.optim.Optimizer:
    """The config's optimizer over ``model``'s trainable parameters at ``config.peak_lr(global_batch)``."""
    params = [param for param in model.parameters() if param.requires_grad]
    if config.optimizer == "adamw":
        name, extra = "adamw", {}
    else:  # timm's "sgd" is Nesterov SGD, "momentum" plain momentum SGD
        name, extra = ("sgd" if config.nesterov else "momentum"), {"momentum": config.momentum}
    return create_optimizer_v2(params, opt=name, lr=config.peak_lr(global_batch), weight_decay=config.weight_decay,
                               filter_bias_and_bn=False, **extra)


def updates_per_epoch(batches_per_epoch: int, config: OptimConfig) -> int:
    """Optimizer updates in an epoch of ``batches_per_epoch`` batches (the last window may be short)."""
    return math.ceil(batches_per_epoch / config.grad_accum_steps)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, *, batches_per_epoch: int) -> Scheduler:
    """The config's per-update schedule for ``optimizer``, whose current learning rate is the peak.

    Raises:
        ValueError: an empty training loader, or a milestone outside the schedule.
    """
    if batches_per_epoch < 1:
        raise ValueError(f"batches_per_epoch={batches_per_epoch}: the training loader is empty")
    steps = updates_per_epoch(batches_per_epoch, config)
    peak = optimizer.param_groups[0]["lr"]
    warmup = round(config.warmup_epochs * steps)
    total = config.epochs * steps
    if config.decay == "step":
        outside = [m for m in config.milestones if not 0 < m <= config.epochs]
        if outside:
            raise ValueError(f"milestones {outside} are outside 1..{config.epochs} epochs")
        return MultiStepLRScheduler(
            # timm decays once t + 1 reaches decay_t; +1 makes the first update of a milestone epoch the first decayed
            optimizer, decay_t=[m * steps + 1 for m in config.milestones], decay_rate=config.gamma,
            warmup_t=warmup, warmup_lr_init=peak * config.warmup_factor, warmup_prefix=False, t_in_epochs=False,
        )  # milestones count from update 0, warmup included
    return CosineLRScheduler(
        optimizer, t_initial=max(total - warmup, 1), lr_min=config.min_lr, warmup_t=warmup,
        warmup_lr_init=peak * config.warmup_factor, warmup_prefix=True, t_in_epochs=False,
    )
