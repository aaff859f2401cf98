"""Writes small real datasets on disk in ImageNet and COCO layouts.

The files are real JPEGs that go through the same readers, decoders and transforms as the real datasets, so a
quickstart or a test exercises the whole pipeline. Everything is deterministic from ``seed``.
"""

from __future__ import annotations

import argparse
import colorsys
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from .imagenet import VAL_LABELS_FILE

# ---------------------------------------------------------------------------------------------------------------------
# ImageNet layout: ROOT/train/<wnid>/*.JPEG, ROOT/val/<wnid>/*.JPEG (or flat ROOT/val/*.JPEG + ROOT/val_labels.csv)
# ---------------------------------------------------------------------------------------------------------------------

_Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def _draw_circle(draw: ImageDraw.ImageDraw, box: _Box, colour: tuple[int, int, int]) -> None:
    draw.ellipse(box, fill=colour)


def _draw_square(draw: ImageDraw.ImageDraw, box: _Box, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    inset = (x1 - x0) * 0.12
    draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=colour)


def _draw_triangle(draw: ImageDraw.ImageDraw, box: _Box, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def _draw_plus(draw: ImageDraw.ImageDraw, box: _Box, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    arm = (x1 - x0) / 6
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    draw.rectangle((x0, cy - arm, x1, cy + arm), fill=colour)
    draw.rectangle((cx - arm, y0, cx + arm, y1), fill=colour)


def _draw_ring(draw: ImageDraw.ImageDraw, box: _Box, colour: tuple[int, int, int]) -> None:
    draw.ellipse(box, outline=colour, width=max(2, round((box[2] - box[0]) / 7)))


def _draw_horizontal_stripes(draw: ImageDraw.ImageDraw, box: _Box, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    band = (y1 - y0) / 7
    for i in range(0, 7, 2):
        draw.rectangle((x0, y0 + i * band, x1, y0 + (i + 1) * band), fill=colour)


def _draw_vertical_stripes(draw: ImageDraw.ImageDraw, box: _Box, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    band = (x1 - x0) / 7
    for i in range(0, 7, 2):
        draw.rectangle((x0 + i * band, y0, x0 + (i + 1) * band, y1), fill=colour)


def _draw_checkerboard(draw: ImageDraw.ImageDraw, box: _Box, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, _ = box  # boxes are square
    cell = (x1 - x0) / 4
    for row in range(4):
        for col in range(row % 2, 4, 2):
            draw.rectangle((x0 + col * cell, y0 + row * cell, x0 + (col + 1) * cell, y0 + (row + 1) * cell),
                           fill=colour)


def _draw_diamond(draw: ImageDraw.ImageDraw, box: _Box, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)


def _draw_dots(draw: ImageDraw.ImageDraw, box: _Box, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, _ = box
    step = (x1 - x0) / 3
    radius = step * 0.3
    for row in range(3):
        for col in range(3):
            cx, cy = x0 + (col + 0.5) * step, y0 + (row + 0.5) * step
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)


# (shape, base colour): every class differs from every other in shape and in colour. All shapes are symmetric
# under a horizontal flip, so flip augmentation never turns one class into another.
IMAGENET_SHAPE_CLASSES: tuple[tuple[Callable[..., None], tuple[int, int, int]], ...] = (
    (_draw_circle, (220, 40, 40)),
    (_draw_square, (40, 70, 220)),
    (_draw_triangle, (40, 190, 60)),
    (_draw_plus, (235, 215, 40)),
    (_draw_ring, (210, 50, 210)),
    (_draw_horizontal_stripes, (40, 210, 220)),
    (_draw_vertical_stripes, (240, 140, 30)),
    (_draw_checkerboard, (120, 50, 170)),
    (_draw_diamond, (245, 245, 245)),
    (_draw_dots, (20, 20, 20)),
)

def _synthetic_wnid(class_idx: int) -> str:
    return f"n{class_idx:08d}"


def _render_shape_image(class_idx: int, image_size: int, rng: np.random.Generator) -> Image.Image:
    """One (image_size, image_size) RGB image: a jittered shape of ``class_idx`` on a noisy greyish background."""
    grey = rng.uniform(60, 190)
    tint = rng.normal(0, 12, size=3)
    noise = rng.normal(0, 18, size=(image_size, image_size, 3))
    background = np.clip(grey + tint + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(background, mode="RGB")

    draw_shape, base_colour = IMAGENET_SHAPE_CLASSES[class_idx]
    colour = tuple(int(c) for c in np.clip(np.asarray(base_colour) + rng.normal(0, 20, size=3), 0, 255))
    side = image_size * rng.uniform(0.4, 0.75)
    x0 = rng.uniform(0, image_size - side)
    y0 = rng.uniform(0, image_size - side)
    draw_shape(ImageDraw.Draw(image), (x0, y0, x0 + side, y0 + side), colour)
    return image


def write_imagenet_dataset(
    root: str | Path,
    *,
    num_classes: int = 10,
    train_per_class: int = 80,
    val_per_class: int = 20,
    image_size: int = 64,
    seed: int = 0,
    flat_val: bool = False,
) -> Path:
    """Write a small ImageNet-layout dataset of shape classes as real JPEG files.

    Class ``k`` has the fake wnid ``n{k:08d}`` and is one shape in one colour (circle, square, triangle, plus,
    ring, horizontal and vertical stripes, checkerboard, diamond, dot grid), drawn at a random position and
    scale with colour jitter on a noisy background, and saved at a random JPEG quality.

    Args:
        root: dataset folder; ``train/`` and ``val/`` are created in it.
        num_classes: 1 to 10 classes.
        train_per_class: training images per class.
        val_per_class: validation images per class.
        image_size: side of the square images in pixels.
        seed: everything written is a function of the arguments.
        flat_val: write ``val/ILSVRC2012_val_<8 digits>.JPEG`` files with a ``val_labels.csv`` of
            ``file name,wnid`` lines (the ILSVRC2012 validation layout) instead of ``val/<wnid>/`` folders.

    Returns:
        ``root`` as a Path.
    """
    if not 1 <= num_classes <= len(IMAGENET_SHAPE_CLASSES):
        raise ValueError(f"num_classes={num_classes}: the generator draws 1 to {len(IMAGENET_SHAPE_CLASSES)} classes")
    root = Path(root)
    rng = np.random.default_rng(seed)

    def save(image: Image.Image, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="JPEG", quality=int(rng.integers(75, 96)))

    for class_idx in range(num_classes):
        wnid = _synthetic_wnid(class_idx)
        for i in range(train_per_class):
            save(_render_shape_image(class_idx, image_size, rng), root / "train" / wnid / f"{wnid}_{i}.JPEG")

    val_classes = [class_idx for class_idx in range(num_classes) for _ in range(val_per_class)]
    if flat_val:
        val_classes = [int(c) for c in rng.permutation(val_classes)]  # ILSVRC val files are not grouped by class
    label_lines = []
    for val_idx, class_idx in enumerate(val_classes, start=1):
        wnid = _synthetic_wnid(class_idx)
        image = _render_shape_image(class_idx, image_size, rng)
        if flat_val:
            name = f"ILSVRC2012_val_{val_idx:08d}.JPEG"
            save(image, root / "val" / name)
            label_lines.append(f"{name},{wnid}\n")
        else:
            save(image, root / "val" / wnid / f"{wnid}_val_{val_idx}.JPEG")
    if flat_val:
        (root / VAL_LABELS_FILE).write_text("".join(label_lines))
    return root


# ---------------------------------------------------------------------------------------------------------------------
# COCO instances: coloured circles, squares and triangles on textured backgrounds
# ---------------------------------------------------------------------------------------------------------------------

COCO_CATEGORIES = (
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
)
_CIRCLE_VERTICES = 32
_MAX_OBJECTS = 4
_MIN_VISIBLE_FRACTION = 0.5  # a new object may hide at most half of any earlier one
_PLACEMENT_ATTEMPTS = 20


def _shape_polygon(category_id: int, center: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Vertices (V, 2) as (x, y) of a shape inscribed in the circle (center, radius), rotated by angle."""
    num_vertices = {1: _CIRCLE_VERTICES, 2: 4, 3: 3}[category_id]
    # squares and triangles turn with the angle; a circle's rotation changes nothing
    thetas = angle + np.linspace(0.0, 2.0 * np.pi, num_vertices, endpoint=False)
    return center + radius * np.stack([np.cos(thetas), np.sin(thetas)], axis=1)


def _rasterize(polygon: list[float], height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a flat [x1, y1, x2, y2, ...] polygon, rasterised by pycocotools itself."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))).astype(bool)


def _textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float image: smooth low-frequency grey blotches with a slight tint and pixel noise."""
    coarse = rng.uniform(60.0, 190.0, size=(int(rng.integers(3, 7)), int(rng.integers(3, 7))))
    blotches = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((width, height), Image.BICUBIC))
    tint = rng.uniform(0.85, 1.15, size=3)
    return blotches[:, :, None] * tint + rng.normal(0.0, 8.0, size=(height, width, 3))


def _object_colours(rng: np.random.Generator, num_objects: int) -> list[np.ndarray]:
    """(3,) RGB colours in 0..255, saturated to stand out from the grey background, hues spread apart."""
    first_hue = rng.uniform(0.0, 1.0)
    colours = []
    for index in range(num_objects):
        hue = (first_hue + index / num_objects + rng.uniform(-0.05, 0.05)) % 1.0
        colours.append(255.0 * np.asarray(colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))))
    return colours


def _place_objects(
    rng: np.random.Generator, height: int, width: int
) -> tuple[list[int], list[list[float]], list[np.ndarray]]:
    """Draws 1-4 objects in painting order; returns category ids, flat polygons and full (H, W) masks.

    Every object lies fully inside the image. About a third are put next to an earlier object so
    that images have occlusions, but no object may leave less than half of an earlier one visible.
    """
    category_ids: list[int] = []
    polygons: list[list[float]] = []
    masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    short_side = min(height, width)
    for _ in range(int(rng.integers(1, _MAX_OBJECTS + 1))):
        for _attempt in range(_PLACEMENT_ATTEMPTS):
            category_id = int(rng.integers(1, len(COCO_CATEGORIES) + 1))
            radius = rng.uniform(0.12, 0.3) * short_side
            low, high = np.array([radius + 1, radius + 1]), np.array([width - radius - 1, height - radius - 1])
            if masks and rng.uniform() < 0.35:
                anchor = np.mean(np.reshape(polygons[int(rng.integers(len(polygons)))], (-1, 2)), axis=0)
                center = np.clip(anchor + rng.normal(0.0, radius, size=2), low, high)
            else:
                center = rng.uniform(low, high)
            polygon = np.round(_shape_polygon(category_id, center, radius, rng.uniform(0.0, 2.0 * np.pi)), 2)
            flat_polygon = polygon.ravel().tolist()
            mask = _rasterize(flat_polygon, height, width)
            if mask.sum() < 16:
                continue
            hidden_too_much = (
                (vis & ~mask).sum() < _MIN_VISIBLE_FRACTION * full.sum()
                for vis, full in zip(visible, masks, strict=True)
            )
            if any(hidden_too_much):
                continue
            visible = [vis & ~mask for vis in visible]
            category_ids.append(category_id)
            polygons.append(flat_polygon)
            masks.append(mask)
            visible.append(mask)
            break
    return category_ids, polygons, masks


def _visible_segmentation(polygon: list[float], mask: np.ndarray, visible: np.ndarray) -> list[list[float]] | dict:
    """The full polygon when nothing hides the object, else the visible region as compressed RLE."""
    if np.array_equal(mask, visible):
        return [polygon]
    rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _write_coco_split(
    root: Path,
    split: str,
    rng: np.random.Generator,
    *,
    num_images: int,
    first_image_id: int,
    first_annotation_id: int,
    image_size: tuple[int, int],
) -> int:
    """Writes ``root/<split>2017/*.jpg`` and its instances json; returns the next free annotation id."""
    image_dir = root / f"{split}2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    annotation_id = first_annotation_id
    for image_id in range(first_image_id, first_image_id + num_images):
        height, width = (int(side) for side in rng.integers(image_size[0], image_size[1] + 1, size=2))
        canvas = _textured_background(rng, height, width)
        category_ids, polygons, masks = _place_objects(rng, height, width)
        for mask, colour in zip(masks, _object_colours(rng, len(masks)), strict=True):
            canvas[mask] = colour
        canvas += rng.normal(0.0, 3.0, size=canvas.shape)
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(image_dir / file_name, quality=90)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width, "license": 1})

        for index, (category_id, polygon, mask) in enumerate(zip(category_ids, polygons, masks, strict=True)):
            visible = mask.copy()
            for later_mask in masks[index + 1 :]:
                visible &= ~later_mask
            visible_rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
            annotations.append({
                "id": annotation_id,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": _visible_segmentation(polygon, mask, visible),
                "area": float(mask_utils.area(visible_rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(visible_rle)],
                "iscrowd": 0,
            })
            annotation_id += 1

    instances = {
        "info": {"description": "lesa-orch synthetic shapes (circle, square, triangle)", "version": "1.0"},
        "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": images,
        "annotations": annotations,
        "categories": list(COCO_CATEGORIES),
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(instances), encoding="utf-8")
    return annotation_id


def write_coco_dataset(
    root: str | Path,
    *,
    num_train: int = 32,
    num_val: int = 8,
    image_size: int | tuple[int, int] = (96, 160),
    seed: int = 0,
) -> Path:
    """Writes a COCO-2017-layout instances dataset of circles, squares and triangles; returns ``root``.

    Layout: ``train2017/*.jpg``, ``val2017/*.jpg`` (JPEG quality 90) and
    ``annotations/instances_{train,val}2017.json``, which pycocotools loads unchanged. Each image has
    1-4 objects of random size, colour and rotation on a textured background; later objects occlude
    earlier ones. Annotations describe the *visible* region, as COCO does: an unoccluded object has
    its polygon (circles have 32 vertices), an occluded one a compressed-RLE mask of what is left of it
    (``iscrowd`` stays 0). ``bbox`` (x, y, w, h) and ``area`` are those of the visible region in pixels,
    so the painted pixels of an object are exactly its annotation's mask. Image and annotation ids are
    unique across both splits. The output depends only on the arguments.

    Args:
        root: the dataset folder (created if needed).
        num_train: images in ``train2017``.
        num_val: images in ``val2017``.
        image_size: (min, max) side length in pixels; each image's height and width are drawn
            independently from this range, so orientations vary. An int s gives s x s images.
        seed: seed of everything random.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train} and {num_val}")
    min_side, max_side = (image_size, image_size) if isinstance(image_size, int) else image_size
    if not 32 <= min_side <= max_side:
        raise ValueError(f"image_size must be (min, max) with 32 <= min <= max, got {image_size}")
    root = Path(root)
    annotation_id = 1
    for split_index, (split, num_images, first_image_id) in enumerate(
        [("train", num_train, 1), ("val", num_val, num_train + 1)]
    ):
        annotation_id = _write_coco_split(
            root,
            split,
            np.random.default_rng([seed, split_index]),
            num_images=num_images,
            first_image_id=first_image_id,
            first_annotation_id=annotation_id,
            image_size=(min_side, max_side),
        )
    return root


# ---------------------------------------------------------------------------------------------------------------------
# Command line: python -m lesa_core.data.synthetic {coco,imagenet} ROOT [options]
# ---------------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Parses the command line and writes the chosen dataset."""
    parser = argparse.ArgumentParser(prog="python -m lesa_core.data.synthetic", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    coco = commands.add_parser("coco", help="COCO 2017 instances layout (circles, squares, triangles)")
    coco.add_argument("root", type=Path)
    coco.add_argument("--num-train", type=int, default=32)
    coco.add_argument("--num-val", type=int, default=8)
    coco.add_argument("--min-size", type=int, default=96, help="smallest image side in pixels")
    coco.add_argument("--max-size", type=int, default=160, help="largest image side in pixels")
    coco.add_argument("--seed", type=int, default=0)

    imagenet = commands.add_parser("imagenet", help="ImageNet folder layout (shape classes)")
    imagenet.add_argument("root", type=Path)
    imagenet.add_argument("--num-classes", type=int, default=10)
    imagenet.add_argument("--train-per-class", type=int, default=80)
    imagenet.add_argument("--val-per-class", type=int, default=20)
    imagenet.add_argument("--image-size", type=int, default=64)
    imagenet.add_argument("--flat-val", action="store_true", help="ILSVRC2012 flat val/ folder + val_labels.csv")
    imagenet.add_argument("--seed", type=int, default=0)

    args = parser.parse_args(argv)
    if args.command == "coco":
        root = write_coco_dataset(
            args.root,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=(args.min_size, args.max_size),
            seed=args.seed,
        )
    else:
        root = write_imagenet_dataset(
            args.root,
            num_classes=args.num_classes,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            image_size=args.image_size,
            seed=args.seed,
            flat_val=args.flat_val,
        )
    print(f"wrote {args.command} dataset to {root}")


if __name__ == "__main__":
    main()
