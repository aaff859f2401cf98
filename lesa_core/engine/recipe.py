"""Classification training recipes as data: the official LESA ImageNet schedule and a CPU quickstart.

Official LESA-ResNet ImageNet recipe (Chenglin-Yang/LESA_classification, README training command and
``lib/utils.py``): SGD with Nesterov momentum 0.9, learning rate 0.05 for a batch of 128 images, weight
decay 8e-5, 95 epochs with 5 of linear warmup from 0, then cosine to 0, updated every iteration; no label
smoothing, mixup or colour jitter. Here the learning rate scales linearly with the global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class ClassificationRecipe:
    """How to train a classifier: optimizer, schedule, batch and augmentation.

    Attributes:
        batch_size_per_device: images per process per forward pass.
        optimizer: ``sgd`` (momentum, optional Nesterov) or ``adamw``.
        base_lr: learning rate for ``base_batch_size`` images; the run uses ``lr(world_size)``.
        base_batch_size: the batch ``base_lr`` is quoted for.
        momentum, nesterov: SGD only.
        weight_decay: on every parameter.
        epochs: total epochs, warmup included.
        warmup_epochs: linear warmup from ``warmup_lr_init``, counted in iterations.
        warmup_lr_init: learning rate at the first iteration.
        min_lr: learning rate at the end of the cosine.
        img_size: training and evaluation crop side.
        crop_scale: area range of the random-resized crop.
        auto_augment: timm RandAugment string such as ``"rand-m9-mstd0.5"``, or None.
        color_jitter: colour jitter strength, or None for none.
        mixup_alpha, cutmix_alpha: 0 turns each off.
        label_smoothing: 0 for plain cross-entropy.
        ema_decay: keep a ``timm.utils.ModelEmaV3`` with this decay, or None.
        grad_accum_steps: batches per optimizer step.
    """

    batch_size_per_device: int = 32  # 4 devices make the official global batch of 128
    optimizer: str = "sgd"
    base_lr: float = 0.05
    base_batch_size: int = 128
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 8e-5
    epochs: int = 95
    warmup_epochs: int = 5
    warmup_lr_init: float = 0.0
    min_lr: float = 0.0
    img_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    auto_augment: str | None = None
    color_jitter: float | None = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float | None = None
    grad_accum_steps: int = 1

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.batch_size_per_device < 1 or self.grad_accum_steps < 1 or self.epochs < 1:
            raise ValueError("batch_size_per_device, grad_accum_steps and epochs must be at least 1")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be in [0, epochs={self.epochs})")
        if (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.batch_size_per_device % 2:
            raise ValueError(f"mixup / cutmix pair images: batch_size_per_device={self.batch_size_per_device} "
                             "must be even")

    def global_batch_size(self, world_size: int) -> int:
        """Images per optimizer step across all processes."""
        return self.batch_size_per_device * world_size * self.grad_accum_steps

    def lr(self, world_size: int) -> float:
        """Peak learning rate, linearly scaled: ``base_lr * global_batch / base_batch_size``."""
        return self.base_lr * self.global_batch_size(world_size) / self.base_batch_size


RECIPES: dict[str, ClassificationRecipe] = {
    "lesa_imagenet": ClassificationRecipe(),
    # generated shape classes on a CPU: test_lesa_resnet at 64 px reaches >= 90% top-1 within minutes
    "quickstart": ClassificationRecipe(
        batch_size_per_device=32, optimizer="adamw", base_lr=2e-3, base_batch_size=32, weight_decay=0.05,
        epochs=8, warmup_epochs=1, img_size=64, crop_scale=(0.5, 1.0),
    ),
}


def build_optimizer(model: nn.Module, recipe: ClassificationRecipe, world_size: int = 1) -> torch.optim.Optimizer:
    """The recipe's optimizer over the trainable parameters at ``recipe.lr(world_size)``."""
    params = [param for param in model.parameters() if param.requires_grad]
    lr = recipe.lr(world_size)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                               weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, recipe: ClassificationRecipe, steps_per_epoch: int
) -> CosineLRScheduler:
    """Per-iteration warmup + cosine to ``min_lr``, stepped with ``step_update(num_updates)``.

    Args:
        optimizer: its learning rate is the peak.
        recipe: epochs, warmup and floors.
        steps_per_epoch: batches per epoch (``len(train_loader)``); with gradient accumulation the schedule
            counts ``ceil(steps_per_epoch / grad_accum_steps)`` optimizer updates per epoch.
    """
    updates_per_epoch = math.ceil(steps_per_epoch / recipe.grad_accum_steps)
    warmup_updates = recipe.warmup_epochs * updates_per_epoch
    return CosineLRScheduler(
        optimizer,
        t_initial=recipe.epochs * updates_per_epoch - warmup_updates,
        lr_min=recipe.min_lr,
        warmup_t=warmup_updates,
        warmup_lr_init=recipe.warmup_lr_init,
        warmup_prefix=True,
        t_in_epochs=False,
    )
