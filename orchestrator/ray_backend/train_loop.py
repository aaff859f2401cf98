"""What every Ray Train worker runs: a job spec turned into lesa_core data, model and engine calls.

Under DDP (gloo on CPU, NCCL on GPU, set up by Ray Train) each worker trains on its shard; rank 0 logs
the epoch's metrics to MLflow and saves the checkpoint that ``ray.train.report`` hands to Ray Train. Every
worker also exports live step metrics through Ray's metrics agent (``metrics.TrainingMetrics``).
A restarted worker group, or a resubmitted job with the same run name, continues from
``ray.train.get_checkpoint()``. No model math here: only wiring.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray.train
import ray.train.torch
import timm
import torch
from torch import nn

from lesa_core.data.coco import CocoInstances, build_coco_loader, build_coco_transforms
from lesa_core.data.imagenet import build_imagenet_loaders, resolve_imagenet_data_config
from lesa_core.detection.mask_rcnn import light_heads, maskrcnn_lesa_fpn
from lesa_core.engine import classification, detection
from lesa_core.engine.checkpoint import load_checkpoint, save_checkpoint, unwrap_model
from lesa_core.engine.schedule import build_lr_scheduler

from ..spec import JobSpec, parse_spec
from ..tracking import Tracker
from .metrics import TrainingMetrics

CHECKPOINT_FILE = "checkpoint.pth"


def build_model(spec: JobSpec, num_classes: int) -> nn.Module:
    """The spec's model: a timm LESA classifier or a Mask R-CNN (``num_classes`` counts the background)."""
    lesa = spec.model.lesa.model_dump()
    if spec.task == "classification":
        return timm.create_model(spec.model.arch, num_classes=num_classes, img_size=spec.model.img_size, **lesa)
    detector = spec.model.detector
    heads = {}
    if detector.light_heads:
        heads = light_heads(detector.fpn_channels, num_classes, **detector.light_head_widths())
    return maskrcnn_lesa_fpn(
        spec.model.arch, num_classes=num_classes, backbone_weights=spec.model.pretrained,
        trainable_backbone_layers=detector.trainable_backbone_layers, min_size=detector.min_size,
        max_size=detector.max_size, fpn_channels=detector.fpn_channels, img_size=spec.model.img_size, **lesa, **heads,
        **detector.maskrcnn_kwargs(),
    )


@dataclass
class Task:
    """The pieces one task needs in the epoch loop."""

    model: nn.Module
    train_loader: Any
    val_loader: Any
    num_classes: int
    extra: dict[str, Any]


def _classification_task(spec: JobSpec) -> Task:
    probe = timm.create_model(spec.model.arch, num_classes=0, img_size=spec.model.img_size,
                              **spec.model.lesa.model_dump())
    train_loader, val_loader = build_imagenet_loaders(
        spec.data.root, data_config=resolve_imagenet_data_config(probe, spec.data.img_size),
        batch_size=spec.schedule.batch_size_per_worker, num_workers=spec.data.workers, seed=spec.schedule.seed,
        crop_scale=spec.data.crop_scale, auto_augment=spec.data.auto_augment,
    )
    classes = train_loader.dataset.classes
    return Task(build_model(spec, len(classes)), train_loader, val_loader, len(classes), {"classes": list(classes)})


def _detection_task(spec: JobSpec) -> Task:
    train_set = CocoInstances(spec.data.root, spec.data.train_split or "train", train=True,
                              transforms=build_coco_transforms(train=True))
    val_set = CocoInstances(spec.data.root, spec.data.val_split or "val", train=False)
    batch = spec.schedule.batch_size_per_worker
    train_loader = build_coco_loader(train_set, batch_size=batch, train=True, workers=spec.data.workers,
                                     seed=spec.schedule.seed)
    val_loader = build_coco_loader(val_set, batch_size=batch, train=False, workers=spec.data.workers,
                                   aspect_ratio_grouping=False)
    extra = {"class_names": list(train_set.class_names), "label_to_cat_id": train_set.label_to_cat_id}
    return Task(build_model(spec, train_set.num_classes), train_loader, val_loader, train_set.num_classes, extra)


def build_task(spec: JobSpec) -> Task:
    """The spec's data loaders and model (classification or detection), before any Ray Train wrapping."""
    return _detection_task(spec) if spec.task == "detection" else _classification_task(spec)


def spec_optimizer(spec: JobSpec, model: nn.Module) -> torch.optim.Optimizer:
    """The spec's optimizer (AdamW or SGD) over the trainable parameters at the scaled learning rate."""
    params = [p for p in model.parameters() if p.requires_grad]
    schedule = spec.schedule
    if schedule.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.scaled_lr, weight_decay=schedule.weight_decay)
    return torch.optim.SGD(params, lr=spec.scaled_lr, momentum=schedule.momentum, nesterov=schedule.nesterov,
                           weight_decay=schedule.weight_decay)


def spec_lr_scheduler(spec: JobSpec, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """The spec's per-step schedule (warmup, then cosine or steps) for ``optimizer``."""
    schedule = spec.schedule
    return build_lr_scheduler(optimizer, epochs=schedule.epochs, steps_per_epoch=steps_per_epoch,
                              decay=schedule.decay, warmup_epochs=schedule.warmup_epochs,
                              milestones=schedule.milestones, gamma=schedule.gamma)


def _set_epoch(loader: Any, epoch: int) -> None:
    for holder in (loader.sampler, loader.batch_sampler):
        if hasattr(holder, "set_epoch"):
            holder.set_epoch(epoch)


def _has_checkpoint_file(filesystem: pyarrow.fs.FileSystem, folder: str) -> bool:
    return filesystem.get_file_info(f"{folder}/{CHECKPOINT_FILE}").type == pyarrow.fs.FileType.File


def newest_complete_checkpoint(filesystem: pyarrow.fs.FileSystem, run_dir: str) -> ray.train.Checkpoint | None:
    """The newest ``checkpoint_*`` folder of a run that holds its checkpoint file, or None."""
    entries = filesystem.get_file_info(pyarrow.fs.FileSelector(run_dir, allow_not_found=True))
    # folder names are checkpoint_<timestamp>, so name order is time order
    folders = sorted((e.path for e in entries if e.type == pyarrow.fs.FileType.Directory
                      and e.base_name.startswith("checkpoint_")), reverse=True)
    folder = next((f for f in folders if _has_checkpoint_file(filesystem, f)), None)
    return ray.train.Checkpoint(folder, filesystem=filesystem) if folder else None


def restore_point(
    reported: ray.train.Checkpoint | None, storage_path: str, run_name: str
) -> ray.train.Checkpoint | None:
    """Where a (re)started worker group continues from.

    Ray Train's checkpoint if its file arrived. Otherwise the newest complete checkpoint in the run's storage:
    a driver killed while a checkpoint was being persisted leaves that folder without its file, and a worker
    killed before the controller polled its last reports leaves Ray with no checkpoint at all although the
    worker had written them.
    """
    if reported is not None and _has_checkpoint_file(reported.filesystem, reported.path):
        return reported
    if reported is not None:
        filesystem, run_dir = reported.filesystem, reported.path.rstrip("/").rsplit("/", 1)[0]
    else:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(storage_path)
        run_dir = f"{root.rstrip('/')}/{run_name}"
    found = newest_complete_checkpoint(filesystem, run_dir)
    if found is not None and reported is not None:
        print(f"lesa-orch: checkpoint {reported.path} is incomplete; using {found.path}", flush=True)
    return found


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: ``config`` holds the resolved spec, the MLflow URI and run id."""
    spec = parse_spec(config["spec"], source=f"job {config['job_id']}")
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(spec.schedule.seed)
    task = build_task(spec)
    model = ray.train.torch.prepare_model(task.model)
    optimizer = spec_optimizer(spec, model)
    scheduler = spec_lr_scheduler(spec, optimizer, len(task.train_loader))
    start_epoch, last_eval = 0, {}
    run_name = config.get("run_name", config["job_id"])  # a search names each trial's run
    checkpoint = restore_point(ray.train.get_checkpoint(), spec.storage.path, run_name)
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(Path(directory) / CHECKPOINT_FILE, model=unwrap_model(model),
                                    optimizer=optimizer, scheduler=scheduler)
        start_epoch = state["epoch"]  # finished epochs
        last_eval = state.get("extra", {}).get("eval_metrics", {})
        if rank == 0:
            print(f"lesa-orch: resumed from checkpoint {checkpoint.path} at epoch {start_epoch}", flush=True)
    tracker, run_id = None, config.get("run_id")
    if rank == 0 and (run_id or config.get("parent_run_id")):
        tracker = Tracker(config["tracking_uri"])
        if not run_id:  # a search trial: rank 0 opens (or, resumed, reopens) the trial's child run
            run_id = tracker.start_trial_run(spec, config["job_id"], config["parent_run_id"], config["trial_id"])
    if rank == 0:
        print(f"lesa-orch: training on {context.get_world_size()} worker(s), device {device}", flush=True)
    amp = spec.schedule.amp and device.type == "cuda"
    live_metrics = TrainingMetrics(config["job_id"], config.get("trial_id", ""), rank, device)

    first_step_at = time.time()  # when training starts: a search's per-trial start-up cost ends here
    if start_epoch >= spec.schedule.epochs:  # restored after the last epoch: say so, or a search sees no result
        ray.train.report({**last_eval, "epoch": float(start_epoch - 1), "epochs_completed": start_epoch,
                          "first_step_at": first_step_at})
    for epoch in range(start_epoch, spec.schedule.epochs):
        _set_epoch(task.train_loader, epoch)
        loader = live_metrics.wrap(task.train_loader, epoch)
        if spec.task == "detection":
            metrics = detection.train_one_epoch(model, loader, optimizer, scheduler, device=device, amp=amp,
                                                epoch=epoch, grad_clip=spec.schedule.grad_clip,
                                                on_step=live_metrics.on_step)
        else:
            metrics = classification.train_one_epoch(model, loader, optimizer, scheduler, device=device, amp=amp,
                                                     epoch=epoch, criterion=nn.CrossEntropyLoss(),
                                                     on_step=live_metrics.on_step)
        fresh_eval: dict[str, float] = {}
        if (epoch + 1) % spec.eval.every_epochs == 0 or epoch + 1 == spec.schedule.epochs:
            engine = detection if spec.task == "detection" else classification
            fresh_eval = last_eval = engine.evaluate(unwrap_model(model), task.val_loader, device=device, amp=amp)
        metrics = {**metrics, "epoch": float(epoch)}
        if tracker is not None:  # MLflow gets evaluations only when they happen
            tracker.log_metrics(run_id, {**metrics, **fresh_eval}, step=epoch)
            summary = " ".join(f"{key}={value:.4g}" for key, value in sorted({**metrics, **fresh_eval}.items()))
            print(f"lesa-orch: epoch {epoch} {summary}", flush=True)
        with tempfile.TemporaryDirectory() as directory:
            report_checkpoint = None
            if rank == 0:
                save_checkpoint(Path(directory) / CHECKPOINT_FILE, model=model, optimizer=optimizer,
                                scheduler=scheduler, scaler=None, epoch=epoch + 1,
                                extra={**task.extra, "num_classes": task.num_classes, "eval_metrics": last_eval})
                report_checkpoint = ray.train.Checkpoint.from_directory(directory)
            # Ray Train scores checkpoints by the primary metric, so every report carries the latest evaluation
            progress = {"epochs_completed": epoch + 1, "first_step_at": first_step_at}
            ray.train.report({**metrics, **last_eval, **progress}, checkpoint=report_checkpoint)
