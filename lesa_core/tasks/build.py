"""A :class:`TaskConfig` turned into what training needs: model, loaders, optimizer, schedule, engine calls.

Both the standalone trainer (``python -m lesa_core.train``) and the orchestrator's Ray Train workers build their
run here, so the same config and seed give the same run: everything is seeded before it is built, in one order.
A distributed caller passes ``prepare_model`` (e.g. Ray Train's, which moves the model and wraps it in DDP).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import timm
import torch
from timm.utils import ModelEmaV3
from torch import nn

from ..data.coco import CocoInstances, build_coco_loader, build_coco_transforms
from ..data.imagenet import (
    build_imagenet_loaders,
    create_mixup_and_criterion,
    find_classes,
    resolve_imagenet_data_config,
)
from ..data.sharding import distributed_rank_and_world_size
from ..detection.mask_rcnn import light_heads, maskrcnn_lesa_fpn
from ..engine import classification, detection
from ..engine.checkpoint import unwrap_model
from ..engine.loop import OnStep, use_bf16
from ..engine.optim import build_lr_scheduler, build_optimizer
from .config import TaskConfig


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: TaskConfig, num_classes: int) -> nn.Module:
    """The config's network: a timm classifier, or a Mask R-CNN (``num_classes`` counts the background)."""
    model = config.model
    lesa = dict(model.lesa)
    if config.task == "classification":
        return timm.create_model(model.arch, num_classes=num_classes, img_size=model.img_size, **lesa)
    detector = model.detector
    heads = light_heads(detector.fpn_channels, num_classes, **detector.light_head_widths()) if detector.light_heads \
        else {}
    return maskrcnn_lesa_fpn(
        model.arch, num_classes=num_classes, backbone_weights=model.pretrained,
        trainable_backbone_layers=detector.trainable_backbone_layers, min_size=detector.min_size,
        max_size=detector.max_size, fpn_channels=detector.fpn_channels, img_size=model.img_size, **lesa, **heads,
        **detector.maskrcnn_kwargs(),
    )


@dataclass
class Task:
    """A built run: call :meth:`train_one_epoch` and, where :meth:`TaskConfig.evaluates_after` says, :meth:`evaluate`.

    Attributes:
        config: what it was built from.
        model: on its device, wrapped by ``prepare_model`` if one was given.
        train_loader, val_loader: this process's shards.
        optimizer, scheduler: over the model's trainable parameters, per-update schedule.
        num_classes: classifier outputs (detection: object classes + background).
        extra: what a checkpoint must carry to rebuild the model's outputs (class names, label map).
        device: where batches go.
    """

    config: TaskConfig
    model: nn.Module
    train_loader: Any
    val_loader: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    num_classes: int
    extra: dict[str, Any]
    device: torch.device
    ema: ModelEmaV3 | None = None
    engine_options: dict[str, Any] = field(default_factory=dict)

    @property
    def engine(self) -> Any:
        """The task's engine module (``train_one_epoch`` / ``evaluate``, one signature for both)."""
        return detection if self.config.task == "detection" else classification

    @property
    def amp(self) -> bool:
        return use_bf16(self.device, self.config.amp)

    def train_one_epoch(self, epoch: int, *, on_step: OnStep | None = None, loader: Iterable | None = None
                        ) -> dict[str, float]:
        """One epoch of the engine; ``loader`` replaces the train loader for this call (e.g. a timed wrapper)."""
        return self.engine.train_one_epoch(
            self.model, loader if loader is not None else self.train_loader, self.optimizer, self.scheduler,
            device=self.device, amp=self.amp, epoch=epoch, on_step=on_step,
            grad_accum_steps=self.config.optim.grad_accum_steps, grad_clip=self.config.optim.grad_clip, ema=self.ema,
            **self.engine_options,
        )

    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        """The engine's evaluation of ``model`` (default: this task's) on the val loader."""
        return self.engine.evaluate(unwrap_model(model if model is not None else self.model), self.val_loader,
                                    device=self.device, amp=self.amp)


def _classification_data(config: TaskConfig, device: torch.device) -> tuple[Any, Any, int, dict[str, Any]]:
    data = config.data
    classes = find_classes(data.root)
    probe = timm.create_model(config.model.arch, num_classes=0, img_size=config.model.img_size,
                              **dict(config.model.lesa))
    train_loader, val_loader = build_imagenet_loaders(
        data.root, data_config=resolve_imagenet_data_config(probe, data.img_size), batch_size=data.batch_size,
        num_workers=data.workers, seed=config.seed, auto_augment=data.auto_augment, crop_scale=data.crop_scale,
        color_jitter=data.color_jitter, classes=classes, val_labels=data.val_labels,
        pin_memory=device.type == "cuda",
    )
    return train_loader, val_loader, len(classes), {"classes": list(classes)}


def _detection_data(config: TaskConfig) -> tuple[Any, Any, int, dict[str, Any]]:
    data = config.data
    train_set = CocoInstances(data.root, data.train_split or "train", train=True,
                              transforms=build_coco_transforms(train=True))
    val_set = CocoInstances(data.root, data.val_split or "val", train=False)
    train_loader = build_coco_loader(train_set, batch_size=data.batch_size, train=True, workers=data.workers,
                                     seed=config.seed)
    val_loader = build_coco_loader(val_set, batch_size=data.batch_size, train=False, workers=data.workers,
                                   aspect_ratio_grouping=False)
    extra = {"class_names": list(train_set.class_names), "label_to_cat_id": train_set.label_to_cat_id}
    return train_loader, val_loader, train_set.num_classes, extra


def build_task(
    config: TaskConfig,
    *,
    device: str | torch.device = "cpu",
    prepare_model: Callable[[nn.Module], nn.Module] | None = None,
) -> Task:
    """Seed, then build the config's loaders (sharded under torch.distributed), model, optimizer and schedule.

    Args:
        config: the run.
        device: where the model and batches go (``prepare_model`` may move the model itself).
        prepare_model: wraps the built model for distributed training (e.g. ``ray.train.torch.prepare_model``);
            default: move it to ``device`` (channels_last under bf16 autocast).
    """
    device = torch.device(device)
    seed_everything(config.seed)
    if config.task == "detection":
        train_loader, val_loader, num_classes, extra = _detection_data(config)
    else:
        train_loader, val_loader, num_classes, extra = _classification_data(config, device)
    model = build_model(config, num_classes)
    if prepare_model is not None:
        model = prepare_model(model)
    else:
        model = model.to(device)
        if use_bf16(device, config.amp) and config.task == "classification":
            model = model.to(memory_format=torch.channels_last)
    _, world_size = distributed_rank_and_world_size()
    global_batch = config.data.batch_size * world_size * config.optim.grad_accum_steps
    optimizer = build_optimizer(model, config.optim, global_batch=global_batch)
    scheduler = build_lr_scheduler(optimizer, config.optim, batches_per_epoch=len(train_loader))
    ema, engine_options = None, {}
    if config.task == "classification":
        mixup_fn, criterion = create_mixup_and_criterion(
            num_classes, mixup_alpha=config.data.mixup_alpha, cutmix_alpha=config.data.cutmix_alpha,
            label_smoothing=config.data.label_smoothing,
        )
        engine_options = {"criterion": criterion, "mixup_fn": mixup_fn}
        if config.ema_decay:
            ema = ModelEmaV3(unwrap_model(model), decay=config.ema_decay)
    return Task(config, model, train_loader, val_loader, optimizer, scheduler, num_classes, extra, device, ema,
                engine_options)
