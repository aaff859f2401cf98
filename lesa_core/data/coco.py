"""COCO instances for Mask R-CNN: a pycocotools-backed dataset, paired transforms, batching and loaders.

Samples are what torchvision's detection models take: a float image (3, H, W) in [0, 1] and a target dict
with ``boxes`` (N, 4) xyxy, ``labels`` (N,) in 1..K, ``masks`` (N, H, W) uint8, ``image_id``, ``area`` and
``iscrowd``. Bad annotation files fail at construction with the file named; an image that cannot be read
at load time is logged and skipped, never a crash inside a DataLoader worker.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .sharding import distributed_rank_and_world_size

logger = logging.getLogger(__name__)

Target = dict[str, Any]
Sample = tuple[torch.Tensor, Target]
Transform = Callable[[torch.Tensor, Target], Sample]

_REQUIRED_KEYS = ("images", "annotations", "categories")
_MAX_SUBSTITUTES = 8  # readable images tried in place of an unreadable one when training


def segmentation_to_mask(segmentation: list[list[float]] | dict[str, Any], height: int, width: int) -> np.ndarray:
    """(H, W) uint8 mask of a COCO segmentation: polygons, uncompressed RLE or compressed RLE."""
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def _read_instances_file(path: Path) -> dict[str, Any]:
    """The parsed json of a COCO instances file, or an error naming the file and what is wrong."""
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        instances = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"COCO annotation file {path} is not valid JSON: {err}") from err
    if not isinstance(instances, dict):
        raise ValueError(f"COCO annotation file {path} is not a COCO instances file: the top level is not an object")
    missing = [key for key in _REQUIRED_KEYS if not isinstance(instances.get(key), list)]
    if missing:
        raise ValueError(f"COCO annotation file {path} is not a COCO instances file: no list {missing}")
    return instances


def _check_references(instances: dict[str, Any], path: Path) -> None:
    """Every annotation must name a known image and category and carry an (x, y, w, h) bbox."""
    category_ids = {category["id"] for category in instances["categories"]}
    image_ids = {image["id"] for image in instances["images"]}
    for annotation in instances["annotations"]:
        annotation_id = annotation.get("id")
        if annotation.get("category_id") not in category_ids:
            raise ValueError(
                f"annotation {annotation_id} in {path} has unknown category_id {annotation.get('category_id')!r}"
            )
        if annotation.get("image_id") not in image_ids:
            raise ValueError(
                f"annotation {annotation_id} in {path} has unknown image_id {annotation.get('image_id')!r}"
            )
        bbox = annotation.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise ValueError(f"annotation {annotation_id} in {path} has no [x, y, w, h] bbox: {bbox!r}")


def _clip_xywh_box(bbox: Sequence[float], height: int, width: int) -> tuple[float, float, float, float]:
    """An (x, y, w, h) box as xyxy clipped to a (height, width) image."""
    x, y, w, h = (float(v) for v in bbox)
    return min(max(x, 0.0), width), min(max(y, 0.0), height), min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)


@dataclass(frozen=True)
class _ImageRecord:
    """What one image needs at load time; boxes are already clipped and degenerate ones gone."""

    image_id: int
    path: Path
    height: int
    width: int
    boxes: np.ndarray  # N, 4 xyxy
    labels: np.ndarray  # N
    areas: np.ndarray  # N
    iscrowd: np.ndarray  # N
    segmentations: tuple[Any, ...]


class CocoInstances(Dataset):
    """COCO instance segmentation over pycocotools, yielding torchvision detection samples.

    Training (``train=True``) keeps only non-crowd annotations and drops images left without any;
    evaluation keeps every image and every annotation (crowd ones flagged in ``iscrowd``) while metrics
    come from the ground-truth json through :attr:`coco`. Boxes are clipped to their image and degenerate
    ones dropped (counted in ``num_clipped_boxes`` / ``num_dropped_boxes`` and logged).

    An image that fails to decode, or whose size differs from the json, is logged with a running count
    (``num_skipped_images``, per process). When training, the next readable image takes its place so a
    batch keeps its size and DDP ranks stay in step; when evaluating the sample is ``None``, which
    :func:`collate_fn` drops, so the image never reaches the evaluator.

    Args:
        root: dataset folder in COCO 2017 layout.
        split: ``train`` or ``val``; picks ``annotations/instances_<split>2017.json`` and ``<split>2017/``.
        transforms: called as ``transforms(image, target)``; see :func:`build_coco_transforms`.
        train: training or evaluation behaviour, as above.
        ann_file: annotation json instead of the layout's.
        img_dir: image folder instead of the layout's.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        transforms: Transform | None = None,
        train: bool,
        ann_file: str | Path | None = None,
        img_dir: str | Path | None = None,
    ) -> None:
        root = Path(root)
        self.ann_file = Path(ann_file) if ann_file is not None else root / "annotations" / f"instances_{split}2017.json"
        self.img_dir = Path(img_dir) if img_dir is not None else root / f"{split}2017"
        self.transforms = transforms
        self.train = train
        self.num_skipped_images = 0

        instances = _read_instances_file(self.ann_file)
        _check_references(instances, self.ann_file)
        self.coco = COCO()
        self.coco.dataset = instances
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()

        categories = sorted(instances["categories"], key=lambda category: category["id"])
        self.label_to_cat_id = {label: category["id"] for label, category in enumerate(categories, start=1)}
        self.cat_id_to_label = {cat_id: label for label, cat_id in self.label_to_cat_id.items()}
        self.class_names = ("__background__", *(category["name"] for category in categories))

        self.num_clipped_boxes = 0
        self.num_dropped_boxes = 0
        records = [self._build_record(image_id) for image_id in sorted(self.coco.imgs)]
        self._records = [record for record in records if len(record.labels) > 0 or not train]
        if self.num_clipped_boxes or self.num_dropped_boxes:
            logger.warning(
                "%s: clipped %d boxes to their image and dropped %d degenerate ones",
                self.ann_file,
                self.num_clipped_boxes,
                self.num_dropped_boxes,
            )
        if not self._records:
            which = "images with non-crowd annotations" if train else "images"
            raise ValueError(f"COCO dataset {self.ann_file} has no {which}")
        self._check_images_exist()

    @property
    def num_classes(self) -> int:
        """Categories plus background: the ``num_classes`` of a torchvision Mask R-CNN."""
        return len(self.class_names)

    def _build_record(self, image_id: int) -> _ImageRecord:
        image = self.coco.imgs[image_id]
        height, width = int(image["height"]), int(image["width"])
        boxes, labels, areas, iscrowd, segmentations = [], [], [], [], []
        for annotation in self.coco.imgToAnns[image_id]:
            crowd = int(annotation.get("iscrowd", 0))
            if crowd and self.train:
                continue
            box = _clip_xywh_box(annotation["bbox"], height, width)
            x, y, w, h = annotation["bbox"]
            if box != (x, y, x + w, y + h):
                self.num_clipped_boxes += 1
            if box[2] <= box[0] or box[3] <= box[1]:
                self.num_dropped_boxes += 1
                continue
            boxes.append(box)
            labels.append(self.cat_id_to_label[annotation["category_id"]])
            areas.append(float(annotation.get("area", w * h)))
            iscrowd.append(crowd)
            segmentations.append(annotation.get("segmentation", []))
        return _ImageRecord(
            image_id=image_id,
            path=self.img_dir / image["file_name"],
            height=height,
            width=width,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            areas=np.asarray(areas, dtype=np.float32),
            iscrowd=np.asarray(iscrowd, dtype=np.int64),
            segmentations=tuple(segmentations),
        )

    def _check_images_exist(self) -> None:
        missing = [record for record in self._records if not record.path.is_file()]
        if missing:
            first = missing[0]
            raise FileNotFoundError(
                f"{len(missing)} image(s) listed in {self.ann_file} are missing, "
                f"first: {first.path} (image id {first.image_id})"
            )

    def __len__(self) -> int:
        return len(self._records)

    @property
    def image_ids(self) -> list[int]:
        """COCO image id of each index."""
        return [record.image_id for record in self._records]

    def orientation_groups(self) -> list[int]:
        """Per index: 0 for landscape or square images (w >= h), 1 for portrait; read from the json."""
        return [0 if record.width >= record.height else 1 for record in self._records]

    def __getitem__(self, index: int) -> Sample | None:
        for offset in range(_MAX_SUBSTITUTES + 1):
            sample = self._load(self._records[(index + offset) % len(self._records)])
            if sample is not None or not self.train:
                return sample
        raise RuntimeError(
            f"images {index} to {index + _MAX_SUBSTITUTES} of {self.img_dir} are all unreadable; see the log"
        )

    def _load(self, record: _ImageRecord) -> Sample | None:
        try:
            with Image.open(record.path) as pil_image:
                pil_image = pil_image.convert("RGB")
        except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            return self._skip(record, str(err))
        if pil_image.size != (record.width, record.height):
            found, expected = f"{pil_image.width}x{pil_image.height}", f"{record.width}x{record.height}"
            return self._skip(record, f"size {found} differs from the json's {expected}")
        image = TF.pil_to_tensor(pil_image).float().div_(255.0)  # 3, H, W
        masks = np.zeros((len(record.segmentations), record.height, record.width), dtype=np.uint8)
        for mask, segmentation in zip(masks, record.segmentations, strict=True):
            mask[:] = segmentation_to_mask(segmentation, record.height, record.width)
        target = {
            "boxes": torch.from_numpy(record.boxes.copy()),
            "labels": torch.from_numpy(record.labels.copy()),
            "masks": torch.from_numpy(masks),  # N, H, W
            "image_id": record.image_id,
            "area": torch.from_numpy(record.areas.copy()),
            "iscrowd": torch.from_numpy(record.iscrowd.copy()),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _skip(self, record: _ImageRecord, reason: str) -> None:
        self.num_skipped_images += 1
        logger.warning(
            "skipping image %s (image id %d): %s; %d image(s) skipped so far in this process",
            record.path,
            record.image_id,
            reason,
            self.num_skipped_images,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Paired transforms: image (3, H, W) and target change together
# ---------------------------------------------------------------------------------------------------------------------


class Compose:
    """Applies paired transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> Sample:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target


class RandomHorizontalFlip:
    """Mirrors image (3, H, W), masks (N, H, W) and boxes (N, 4) xyxy together with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, target: Target) -> Sample:
        if torch.rand(()) >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        boxes = target["boxes"]
        target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target


class ResizeShortestEdge:
    """Resizes keeping the aspect ratio: shortest edge to ``min_size`` unless the longest would pass ``max_size``.

    Bilinear (antialiased) for the image (3, H, W), nearest for masks (N, H, W); boxes and areas are scaled.
    """

    def __init__(self, min_size: int, max_size: int = 1333) -> None:
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, image: torch.Tensor, target: Target) -> Sample:
        height, width = image.shape[-2:]
        scale = min(self.min_size / min(height, width), self.max_size / max(height, width))
        new_height, new_width = round(height * scale), round(width * scale)
        scale_x, scale_y = new_width / width, new_height / height
        target = dict(target)
        target["boxes"] = target["boxes"] * torch.tensor([scale_x, scale_y, scale_x, scale_y])
        target["area"] = target["area"] * (scale_x * scale_y)
        masks = target["masks"]
        target["masks"] = (
            TF.resize(masks, [new_height, new_width], interpolation=TF.InterpolationMode.NEAREST)
            if len(masks)
            else masks.new_zeros((0, new_height, new_width))
        )
        image = TF.resize(image, [new_height, new_width], antialias=True)
        return image, target


def build_coco_transforms(
    *, train: bool, flip_prob: float = 0.5, min_size: int | None = None, max_size: int = 1333
) -> Compose | None:
    """Training: optional shortest-edge resize then a random horizontal flip; evaluation: resize or None.

    Resizing is off by default because torchvision's ``GeneralizedRCNNTransform`` resizes inside the model.
    """
    transforms: list[Transform] = []
    if min_size is not None:
        transforms.append(ResizeShortestEdge(min_size, max_size))
    if train and flip_prob > 0:
        transforms.append(RandomHorizontalFlip(flip_prob))
    return Compose(transforms) if transforms else None


def collate_fn(batch: Sequence[Sample | None]) -> tuple[list[torch.Tensor], list[Target]]:
    """Batches samples as (images, targets) lists, dropping skipped (None) samples; may return two empty lists."""
    samples = [sample for sample in batch if sample is not None]
    return [image for image, _ in samples], [target for _, target in samples]


# ---------------------------------------------------------------------------------------------------------------------
# Batching: aspect-ratio groups, DDP-aware loaders
# ---------------------------------------------------------------------------------------------------------------------


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches indices from any sampler so that each batch holds one group (e.g. one image orientation).

    Wraps any index sampler, a ``DistributedSampler`` included. Every index the sampler yields appears in
    exactly one batch, and there are always ``ceil(len(sampler) / batch_size)`` batches, so DDP ranks with
    equally long samplers take the same number of steps. To hold that count, the groups' leftovers at the
    end of an epoch go into mixed batches when they would not fill a batch each; with two groups that is
    at most one mixed batch per epoch.

    Args:
        sampler: yields dataset indices.
        group_ids: the group of each dataset index.
        batch_size: indices per batch.
    """

    def __init__(self, sampler: Sampler[int] | Iterable[int], group_ids: Sequence[int], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        pending: dict[int, list[int]] = {}
        for index in self.sampler:
            group = pending.setdefault(self.group_ids[index], [])
            group.append(index)
            if len(group) == self.batch_size:
                yield group.copy()
                group.clear()
        leftovers = [group for group in pending.values() if group]
        num_leftover_batches = math.ceil(sum(len(group) for group in leftovers) / self.batch_size)
        if len(leftovers) == num_leftover_batches:
            yield from leftovers
            return
        mixed = [index for group in leftovers for index in group]
        for start in range(0, len(mixed), self.batch_size):
            yield mixed[start : start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Forwards to the wrapped sampler (``DistributedSampler`` reshuffles per epoch this way)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def build_coco_loader(
    dataset: CocoInstances,
    *,
    batch_size: int,
    train: bool,
    workers: int = 0,
    aspect_ratio_grouping: bool = True,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader of (images, targets) lists over ``dataset``, sharded when torch.distributed is initialised.

    The order is a function of (seed, epoch) only: a ``DistributedSampler`` (one replica without a process
    group) inside a :class:`GroupedBatchSampler` (one group when grouping is off), reshuffled by
    ``loader.batch_sampler.set_epoch(epoch)``, which the engine calls every epoch. Under DDP each rank reads
    its shard (evaluation shards are padded with repeated images, which
    :class:`~lesa_core.metrics.coco_eval.CocoEvaluator` de-duplicates by image id). Under Ray Train, do not let
    ``prepare_data_loader`` add a second distributed sampler (``add_dist_sampler=False``).

    Args:
        dataset: the dataset.
        batch_size: images per batch on this process.
        train: shuffle (deterministically from ``seed`` and the epoch) or keep the dataset order.
        workers: DataLoader worker processes.
        aspect_ratio_grouping: batch landscape and portrait images separately.
        seed: shuffling and worker seeds.
    """
    rank, world_size = distributed_rank_and_world_size()
    # one replica without a process group: the order is a function of (seed, epoch) however the run is launched
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed)
    group_ids = dataset.orientation_groups() if aspect_ratio_grouping else [0] * len(dataset)
    return DataLoader(
        dataset,
        batch_sampler=GroupedBatchSampler(sampler, group_ids, batch_size),
        num_workers=workers,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed + rank),
    )
