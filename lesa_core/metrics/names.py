"""Metric names, defined once: what the engines report and each task's primary metric.

Every metric is a flat ``"<group>/<name>"`` key. Training: ``train/loss``, ``train/loss_<part>`` (detection's
loss terms), ``train/lr``, ``train/images_per_sec``, and ``epoch``. Classification evaluation: ``val/acc1``,
``val/acc5`` (fractions, 0..1) and ``val/loss``. Detection evaluation: COCO AP for boxes and masks on a 0..1
scale, ``coco/<iou_type>_mAP<suffix>``, where COCO's "no object of this size" (-1) is not a score.
"""

from __future__ import annotations

TASKS = ("classification", "detection")

TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_IMAGES_PER_SEC = "train/images_per_sec"
EPOCH = "epoch"

VAL_ACC1 = "val/acc1"
VAL_ACC5 = "val/acc5"
VAL_LOSS = "val/loss"
CLASSIFICATION_EVAL = (VAL_ACC1, VAL_ACC5, VAL_LOSS)

IOU_TYPES = ("bbox", "segm")
# COCOeval.stats[0:6]: AP@[.5:.95], AP@.5, AP@.75, AP small, AP medium, AP large
COCO_STAT_SUFFIXES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")
OBJECT_SIZES = ("s", "m", "l")


def coco_metric(iou_type: str, suffix: str = "mAP") -> str:
    """``coco/<iou_type>_<suffix>``, e.g. ``coco_metric("segm", "mAP_50") == "coco/segm_mAP_50"``."""
    return f"coco/{iou_type}_{suffix}"


COCO_EVAL = tuple(coco_metric(kind, suffix) for kind in IOU_TYPES for suffix in COCO_STAT_SUFFIXES)
COCO_BY_SIZE = tuple(coco_metric(kind, f"mAP_{size}") for kind in IOU_TYPES for size in OBJECT_SIZES)

EVAL_METRICS = {"classification": CLASSIFICATION_EVAL, "detection": COCO_EVAL}
PRIMARY_METRIC = {"classification": VAL_ACC1, "detection": coco_metric("bbox")}
PRIMARY_MODE = {"classification": "max", "detection": "max"}
# what an evaluated epoch reports besides its evaluation: what a job may rank checkpoints or trials by
REPORTED_METRICS = {task: (*EVAL_METRICS[task], TRAIN_LOSS) for task in TASKS}
OBJECTIVE_METRICS = {task: (*REPORTED_METRICS[task], TRAIN_IMAGES_PER_SEC) for task in TASKS}


def primary_metric(task: str) -> str:
    """The metric a task's checkpoints are ranked by unless a job names another."""
    if task not in PRIMARY_METRIC:
        raise ValueError(f"task={task!r} is not one of {TASKS}")
    return PRIMARY_METRIC[task]
