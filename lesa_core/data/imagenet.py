"""ImageNet classification data: folder datasets, timm transforms, mixup / label smoothing, DDP-aware loaders.

Two layouts are read:

* folders: ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG``;
* flat validation (the ILSVRC2012 release): ``ROOT/val/*.JPEG`` plus a labels file of ``file name,wnid``
  lines (comma or whitespace separated, an optional header; Kaggle's ``LOC_val_solution.csv`` also works).

Class indices are the sorted wnids of ``ROOT/train``; validation must hold exactly the same classes.
Non-image files are skipped with a logged count; an unreadable (truncated, corrupt) image is skipped with a
logged count when it is loaded and the next sample is served in its place, so a bad file never kills a
DataLoader worker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from timm.data import Mixup, create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .sharding import distributed_rank_and_world_size

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
VAL_LABELS_FILE = "val_labels.csv"
VAL_LABELS_CANDIDATES = (VAL_LABELS_FILE, "val_labels.txt", "LOC_val_solution.csv")
MAX_CONSECUTIVE_UNREADABLE = 16
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _list_images(folder: Path) -> tuple[list[Path], int]:
    """Image files of ``folder`` in sorted order, and how many other entries it holds."""
    with os.scandir(folder) as entries:  # scandir: no stat per file on a 1.28M-file tree
        names = [(entry.name, entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS)
                 for entry in entries]
    images = sorted(folder / name for name, is_image in names if is_image)
    return images, len(names) - len(images)


def _class_folders(split_dir: Path) -> list[Path]:
    return sorted(entry for entry in split_dir.iterdir() if entry.is_dir())


def find_classes(root: str | Path) -> list[str]:
    """Sorted class folder names (wnids) of ``root/train``: position = class index."""
    train_dir = Path(root) / "train"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"{train_dir}: no training folder (expected {train_dir}/<wnid>/*.JPEG)")
    classes = [folder.name for folder in _class_folders(train_dir)]
    if not classes:
        raise ValueError(f"{train_dir}: no class folders")
    return classes


def _check_same_classes(classes: Sequence[str], found: set[str], where: Path) -> None:
    missing, extra = sorted(set(classes) - found), sorted(found - set(classes))
    if missing or extra:
        raise ValueError(
            f"{where}: classes differ from the training classes: missing {_preview(missing)}, "
            f"not in train {_preview(extra)}"
        )


def _preview(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"


def read_val_labels(path: str | Path) -> dict[str, str]:
    """Labels file -> {image file name or stem: wnid}.

    Each line is ``name,label`` or ``name label``; only the first token of the label is kept (Kaggle's
    ``ImageId,PredictionString`` rows start with the wnid). A first line that names columns is skipped.
    """
    path = Path(path)
    labels: dict[str, str] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(",", 1) if "," in line else line.split(None, 1)
        if len(fields) != 2 or not fields[1].split():
            raise ValueError(f"{path}:{line_no}: expected 'file name,wnid', got {line!r}")
        name, label = fields[0].strip(), fields[1].split()[0]
        if line_no == 1 and name.lower() in {"imageid", "image", "file", "filename", "name", "image_id"}:
            continue
        labels[name] = label
    return labels


def _find_val_labels(root: Path) -> Path:
    for name in VAL_LABELS_CANDIDATES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"{root / 'val'} has no class folders and {root} has no labels file ({', '.join(VAL_LABELS_CANDIDATES)})"
    )


class ImageNetDataset(Dataset):
    """One split of an ImageNet-layout folder as (image, class index) samples.

    Args:
        root: dataset folder holding ``train/`` and ``val/``.
        split: ``train`` or ``val`` (any folder name under ``root``).
        transform: applied to the RGB PIL image; a timm transform gives a (3, H, W) float tensor.
        classes: class names in index order; defaults to :func:`find_classes` (sorted wnids of ``train``).
        val_labels: labels file for a flat split folder; searched in ``root`` if not given.

    Raises:
        FileNotFoundError: the split folder or a flat split's labels file is missing.
        ValueError: a class folder holds no images, or the split's classes differ from ``classes``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        classes: Sequence[str] | None = None,
        val_labels: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            raise FileNotFoundError(f"{self.split_dir}: no such folder")
        self.classes = list(classes) if classes is not None else find_classes(self.root)
        self.class_to_idx = {name: idx for idx, name in enumerate(self.classes)}
        self.transform = transform
        folders = _class_folders(self.split_dir)
        if folders:
            self.samples, skipped = self._scan_class_folders(folders)
        else:
            self.samples, skipped = self._scan_flat(Path(val_labels) if val_labels else _find_val_labels(self.root))
        if skipped:
            logger.warning("%s: skipped %d non-image files", self.split_dir, skipped)
        self.targets = [target for _, target in self.samples]
        self.unreadable: set[Path] = set()

    def _scan_class_folders(self, folders: list[Path]) -> tuple[list[tuple[Path, int]], int]:
        _check_same_classes(self.classes, {folder.name for folder in folders}, self.split_dir)
        samples: list[tuple[Path, int]] = []
        skipped = sum(1 for entry in self.split_dir.iterdir() if not entry.is_dir())
        empty = []
        for folder in folders:
            images, others = _list_images(folder)
            skipped += others
            if not images:
                empty.append(str(folder))
            samples.extend((path, self.class_to_idx[folder.name]) for path in images)
        if empty:
            raise ValueError(f"class folders without images: {_preview(empty)}")
        return samples, skipped

    def _scan_flat(self, labels_path: Path) -> tuple[list[tuple[Path, int]], int]:
        labels = read_val_labels(labels_path)
        images, skipped = _list_images(self.split_dir)
        if not images:
            raise ValueError(f"{self.split_dir}: no images and no class folders")
        unlabelled = [path.name for path in images if path.name not in labels and path.stem not in labels]
        if unlabelled:
            raise ValueError(f"{labels_path}: no label for {_preview(unlabelled)} in {self.split_dir}")
        image_labels = [labels[path.name] if path.name in labels else labels[path.stem] for path in images]
        _check_same_classes(self.classes, set(image_labels), labels_path)
        samples = [(path, self.class_to_idx[label]) for path, label in zip(images, image_labels, strict=True)]
        return samples, skipped

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """(transformed image, class index); an unreadable image is logged and the next sample served instead."""
        for _ in range(MAX_CONSECUTIVE_UNREADABLE):
            path, target = self.samples[index]
            try:
                with Image.open(path) as file:
                    image = file.convert("RGB")
            except UNREADABLE_IMAGE_ERRORS as error:
                self.unreadable.add(path)
                logger.warning("skipped unreadable image %s (%s): %d unreadable so far in this process",
                               path, error, len(self.unreadable))
                index = (index + 1) % len(self.samples)
                continue
            return (self.transform(image) if self.transform is not None else image), target
        raise RuntimeError(f"{MAX_CONSECUTIVE_UNREADABLE} unreadable images in a row up to {path}: check the dataset")


def resolve_imagenet_data_config(model: nn.Module, img_size: int | None = None) -> dict[str, Any]:
    """timm data config of ``model`` (mean, std, interpolation, crop_pct), at ``img_size`` if given."""
    return resolve_data_config({"img_size": img_size} if img_size else {}, model=model)


def create_imagenet_transforms(
    data_config: dict[str, Any],
    *,
    auto_augment: str | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    color_jitter: float | None = None,
) -> tuple[Callable[[Image.Image], torch.Tensor], Callable[[Image.Image], torch.Tensor]]:
    """(train, eval) transforms from timm, each PIL image -> normalised (3, S, S) tensor.

    Train: random-resized crop (area ``crop_scale``) + horizontal flip [+ RandAugment from ``auto_augment``, e.g.
    ``"rand-m9-mstd0.5"``] [+ colour jitter]. Eval: resize the short side to ``S / crop_pct``, centre crop ``S``.
    """
    train_transform = create_transform(
        **data_config, is_training=True, scale=crop_scale, auto_augment=auto_augment, color_jitter=color_jitter
    )
    eval_transform = create_transform(**data_config, is_training=False)
    return train_transform, eval_transform


def create_mixup_and_criterion(
    num_classes: int, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, label_smoothing: float = 0.0
) -> tuple[Mixup | None, nn.Module]:
    """(mixup_fn or None, train criterion).

    With mixup or cutmix on, timm's ``Mixup`` turns (B,) labels into smoothed (B, num_classes) soft targets
    (B must be even) and the criterion is soft-target cross-entropy; otherwise labels stay indices and the
    criterion is (label-smoothed) cross-entropy.
    """
    if mixup_alpha > 0 or cutmix_alpha > 0:
        mixup_fn = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=label_smoothing,
                         num_classes=num_classes)
        return mixup_fn, SoftTargetCrossEntropy()
    if label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=label_smoothing)
    return None, nn.CrossEntropyLoss()


class EvalShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: disjoint shards covering the dataset once, no padding,
    so summed counts across ranks are exact."""

    def __init__(self, dataset_len: int, *, rank: int, world_size: int) -> None:
        self.indices = range(rank, dataset_len, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_imagenet_loaders(
    root: str | Path,
    *,
    data_config: dict[str, Any],
    batch_size: int,
    num_workers: int = 4,
    seed: int = 0,
    auto_augment: str | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    color_jitter: float | None = None,
    classes: Sequence[str] | None = None,
    val_labels: str | Path | None = None,
    eval_batch_size: int | None = None,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """(train, val) loaders over ``root``, sharded across ranks when torch.distributed is initialised.

    The train order is a function of (seed, epoch) only: a ``DistributedSampler`` (one replica without a
    process group) reshuffled by ``sampler.set_epoch(epoch)``, which the engine calls. Workers are not
    persistent so their augmentation seeds follow the (checkpointed) torch RNG and a resumed run replays
    the same epoch. Train batches are full (``drop_last``); val shards cover each image exactly once.

    Args:
        root: dataset folder with ``train/`` and ``val/`` in either layout.
        data_config: from :func:`resolve_imagenet_data_config`.
        batch_size: per-process train batch.
        num_workers: DataLoader worker processes per loader.
        seed: shuffling seed.
        auto_augment, crop_scale, color_jitter: see :func:`create_imagenet_transforms`.
        classes: class names in index order (default: sorted wnids of ``root/train``).
        val_labels: labels file of a flat val folder (default: searched in ``root``).
        eval_batch_size: per-process val batch (default ``2 * batch_size``).
        pin_memory: pin host memory (for CUDA).
    """
    train_transform, eval_transform = create_imagenet_transforms(
        data_config, auto_augment=auto_augment, crop_scale=crop_scale, color_jitter=color_jitter
    )
    train_set = ImageNetDataset(root, "train", transform=train_transform, classes=classes)
    val_set = ImageNetDataset(root, "val", transform=eval_transform, classes=train_set.classes, val_labels=val_labels)
    rank, world_size = distributed_rank_and_world_size()
    if len(train_set) < batch_size * world_size:
        raise ValueError(f"{train_set.split_dir}: {len(train_set)} images, fewer than one batch of "
                         f"{batch_size} on each of {world_size} processes")
    train_sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    val_sampler = EvalShardSampler(len(val_set), rank=rank, world_size=world_size)
    common = dict(num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False)
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=train_sampler, drop_last=True, **common)
    val_loader = DataLoader(val_set, batch_size=eval_batch_size or 2 * batch_size, sampler=val_sampler, **common)
    return train_loader, val_loader
