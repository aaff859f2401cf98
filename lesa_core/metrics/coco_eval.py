"""COCO box and mask AP for torchvision Mask R-CNN outputs, as a flat metric dict.

:class:`CocoEvaluator` turns per-image predictions into COCO result records as they arrive (boxes as
xywh, masks as compressed RLE, so memory stays small), gathers them across DDP ranks, and runs
pycocotools' ``COCOeval`` once per IoU type. Keys: ``coco/{bbox,segm}_mAP``, ``_mAP_50``, ``_mAP_75``,
``_mAP_s``, ``_mAP_m``, ``_mAP_l``, on a 0..1 scale; ``-1.0`` (COCOeval's own value) where the ground
truth has no object of that size.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .names import COCO_STAT_SUFFIXES, IOU_TYPES, coco_metric


def boxes_xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) x1, y1, x2, y2 -> (N, 4) x, y, w, h."""
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


def masks_to_rles(masks: torch.Tensor, threshold: float = 0.5) -> list[dict[str, Any]]:
    """(N, 1, H, W) or (N, H, W) mask probabilities -> N compressed RLEs of ``masks > threshold``.

    RLE ``counts`` are str so the records are JSON- and pickle-friendly.
    """
    if masks.shape[0] == 0:
        return []
    binary = (masks.reshape(-1, *masks.shape[-2:]) > threshold).to(torch.uint8).cpu().numpy()  # N, H, W
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))  # H, W, N as pycocotools wants
    return [{"size": rle["size"], "counts": rle["counts"].decode("ascii")} for rle in rles]


def prediction_to_coco_results(
    image_id: int,
    prediction: Mapping[str, torch.Tensor],
    label_to_cat_id: Mapping[int, int],
    *,
    with_masks: bool,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """One image's Mask R-CNN output (``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,), ``masks``
    (N, 1, H, W)) -> N COCO result records with ``bbox`` xywh and, if ``with_masks``, ``segmentation`` RLE."""
    boxes = boxes_xyxy_to_xywh(prediction["boxes"].detach().float().cpu()).tolist()
    scores = prediction["scores"].detach().float().cpu().tolist()
    labels = prediction["labels"].detach().cpu().tolist()
    unknown = sorted(set(labels) - set(label_to_cat_id))
    if unknown:
        raise ValueError(f"image {image_id}: predicted labels {unknown} have no COCO category id")
    results = [
        {"image_id": image_id, "category_id": label_to_cat_id[label], "bbox": box, "score": score}
        for box, score, label in zip(boxes, scores, labels, strict=True)
    ]
    if with_masks:
        for result, rle in zip(results, masks_to_rles(prediction["masks"].detach(), mask_threshold), strict=True):
            result["segmentation"] = rle
    return results


class CocoEvaluator:
    """Accumulates Mask R-CNN predictions and computes COCO AP per IoU type.

    Predictions are keyed by image id: an image seen twice (e.g. the padding a ``DistributedSampler`` adds)
    keeps its last predictions. Only images passed to :meth:`update` are evaluated, with or without
    detections; an image never passed (e.g. skipped as unreadable) is left out of the metrics.

    Under DDP, call :meth:`synchronize_between_processes` on every rank before :meth:`summarize`: it
    gathers every rank's results to every rank, so each rank then evaluates the full set and returns
    the same metrics (log them from rank 0).

    Args:
        coco_gt: ground truth, e.g. ``CocoInstances(...).coco``; crowd regions are handled by COCOeval.
        iou_types: any of ``bbox`` and ``segm``.
        label_to_cat_id: contiguous model label -> COCO category id.
        mask_threshold: mask probability above which a pixel belongs to the instance.
        verbose: let pycocotools print its progress and summary tables.
    """

    def __init__(
        self,
        coco_gt: COCO,
        iou_types: Iterable[str] = IOU_TYPES,
        *,
        label_to_cat_id: Mapping[int, int],
        mask_threshold: float = 0.5,
        verbose: bool = False,
    ) -> None:
        self.iou_types = tuple(iou_types)
        bad = [iou_type for iou_type in self.iou_types if iou_type not in IOU_TYPES]
        if bad or not self.iou_types:
            raise ValueError(f"iou_types must be a non-empty selection of {IOU_TYPES}, got {self.iou_types}")
        self.coco_gt = coco_gt
        self.label_to_cat_id = dict(label_to_cat_id)
        self.mask_threshold = mask_threshold
        self.verbose = verbose
        self.results: dict[int, list[dict[str, Any]]] = {}  # image id -> its COCO result records

    def update(self, predictions: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
        """Adds predictions, image id -> Mask R-CNN output at the original image size."""
        with_masks = "segm" in self.iou_types
        for image_id, prediction in predictions.items():
            image_id = int(image_id)
            image = self.coco_gt.imgs.get(image_id)
            if image is None:
                raise ValueError(f"image id {image_id} is not in the ground truth")
            if with_masks and tuple(prediction["masks"].shape[-2:]) != (image["height"], image["width"]):
                raise ValueError(
                    f"image {image_id}: masks are {tuple(prediction['masks'].shape[-2:])}, the image is "
                    f"{(image['height'], image['width'])}; predictions must be at the original image size"
                )
            self.results[image_id] = prediction_to_coco_results(
                image_id, prediction, self.label_to_cat_id, with_masks=with_masks, mask_threshold=self.mask_threshold
            )

    def synchronize_between_processes(self) -> None:
        """Merges every DDP rank's results into every rank; does nothing without an initialised process group."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered: list[dict[int, list[dict[str, Any]]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self.results)
        merged: dict[int, list[dict[str, Any]]] = {}
        for rank_results in gathered:
            merged.update(rank_results or {})
        self.results = merged

    def summarize(self) -> dict[str, float]:
        """Runs COCOeval per IoU type -> ``{"coco/<iou_type>_<stat>": value}`` with values in 0..1 or -1.0."""
        if not self.results:
            raise ValueError("CocoEvaluator.summarize: no predictions were added with update()")
        image_ids = sorted(self.results)
        records = [record for image_id in image_ids for record in self.results[image_id]]
        metrics = {}
        for iou_type in self.iou_types:
            output = contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())
            with output:
                coco_eval = COCOeval(self.coco_gt, self._load_results(records, iou_type), iouType=iou_type)
                coco_eval.params.imgIds = image_ids
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
            for suffix, value in zip(COCO_STAT_SUFFIXES, coco_eval.stats[: len(COCO_STAT_SUFFIXES)], strict=True):
                metrics[coco_metric(iou_type, suffix)] = float(value)
        return metrics

    def _load_results(self, records: list[dict[str, Any]], iou_type: str) -> COCO:
        """One IoU type's view of the records as a COCO object, via pycocotools' ``loadRes`` when non-empty.

        ``loadRes`` sets each detection's ``area`` (used for the size ranges) from the box or the mask,
        whichever the record holds, so each IoU type gets records holding only its own geometry.
        """
        geometry = "bbox" if iou_type == "bbox" else "segmentation"
        keep = ("image_id", "category_id", "score", geometry)
        if records:
            return self.coco_gt.loadRes([{key: record[key] for key in keep} for record in records])
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": list(self.coco_gt.dataset["images"]),
            "categories": copy.deepcopy(self.coco_gt.dataset["categories"]),
            "annotations": [],
        }
        coco_dt.createIndex()
        return coco_dt
