"""The generated COCO dataset: real JPEGs and instances json that pycocotools reads, matching what was drawn."""

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

from lesa_core.data.synthetic import COCO_CATEGORIES, main, write_coco_dataset


def _load_coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    eroded = mask.astype(bool)
    for _ in range(steps):
        padded = np.pad(eroded, 1)
        eroded = eroded & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return eroded


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    return ~_erode(~mask.astype(bool), steps)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_dataset(tmp_path_factory.mktemp("coco"), num_train=10, num_val=4, image_size=(64, 96), seed=0)


@pytest.fixture(scope="module")
def train_coco(coco_root):
    return _load_coco(coco_root / "annotations" / "instances_train2017.json")


def test_layout_loads_in_pycocotools_with_unique_ids(coco_root, train_coco):
    val_coco = _load_coco(coco_root / "annotations" / "instances_val2017.json")
    assert set(train_coco.dataset) == {"info", "licenses", "images", "annotations", "categories"}
    assert train_coco.dataset["categories"] == list(COCO_CATEGORIES)
    assert [c["name"] for c in COCO_CATEGORIES] == ["circle", "square", "triangle"]
    assert all(c["supercategory"] == "shape" for c in COCO_CATEGORIES)
    assert len(train_coco.imgs) == 10 and len(val_coco.imgs) == 4
    assert not set(train_coco.imgs) & set(val_coco.imgs)
    assert not set(train_coco.anns) & set(val_coco.anns)
    for split, coco in (("train", train_coco), ("val", val_coco)):
        for image in coco.dataset["images"]:
            with Image.open(coco_root / f"{split}2017" / image["file_name"]) as pil_image:
                assert pil_image.format == "JPEG" and pil_image.mode == "RGB"
                assert pil_image.size == (image["width"], image["height"])
            assert 64 <= image["height"] <= 96 and 64 <= image["width"] <= 96
            assert 1 <= len(coco.imgToAnns[image["id"]]) <= 4
    orientations = {image["width"] >= image["height"] for image in train_coco.dataset["images"]}
    assert orientations == {True, False}


def test_painted_pixels_are_exactly_the_annotated_regions(coco_root, train_coco):
    """Inside each mask the saved image is one flat colour; just outside it, something else."""
    checked = 0
    for image in train_coco.dataset["images"]:
        pixels = np.asarray(Image.open(coco_root / "train2017" / image["file_name"]), dtype=np.float64)
        annotations = train_coco.imgToAnns[image["id"]]
        masks = [train_coco.annToMask(annotation).astype(bool) for annotation in annotations]
        for index, mask in enumerate(masks):
            others = np.zeros_like(mask)
            for other_index, other in enumerate(masks):
                if other_index != index:
                    others |= other
            inner = _erode(mask, 2)  # JPEG chroma subsampling blurs about two pixels at edges
            ring = _dilate(mask, 4) & ~_dilate(mask, 2) & ~_dilate(others, 2)
            if inner.sum() < 10 or ring.sum() < 10:
                continue
            inside_colour = pixels[inner].mean(axis=0)
            assert pixels[inner].std(axis=0).max() < 15
            assert np.abs(inside_colour - pixels[ring].mean(axis=0)).max() > 40
            checked += 1
    assert checked >= 15


def test_boxes_and_areas_are_those_of_the_masks(train_coco):
    for annotation in train_coco.dataset["annotations"]:
        mask = train_coco.annToMask(annotation)
        rows, cols = np.nonzero(mask)
        x, y, w, h = annotation["bbox"]
        assert (x, y, x + w, y + h) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert annotation["area"] == mask.sum()
        assert annotation["iscrowd"] == 0


def test_unoccluded_objects_are_polygons_and_occluded_ones_their_visible_part(train_coco):
    kinds = {"polygon": 0, "rle": 0}
    for image in train_coco.dataset["images"]:
        height, width = image["height"], image["width"]
        annotations = train_coco.imgToAnns[image["id"]]
        coverage = sum(train_coco.annToMask(annotation).astype(np.int64) for annotation in annotations)
        assert coverage.max() == 1  # visible regions never overlap
        for annotation in annotations:
            if isinstance(annotation["segmentation"], dict):
                kinds["rle"] += 1
                continue
            kinds["polygon"] += 1
            (polygon,) = annotation["segmentation"]
            vertices = len(polygon) // 2
            assert vertices == {1: 32, 2: 4, 3: 3}[annotation["category_id"]]
            drawn = Image.new("1", (width, height))
            ImageDraw.Draw(drawn).polygon(list(zip(polygon[::2], polygon[1::2], strict=True)), fill=1)
            drawn = np.asarray(drawn)
            mask = train_coco.annToMask(annotation).astype(bool)
            assert (drawn & mask).sum() / (drawn | mask).sum() > 0.85
    assert kinds["polygon"] >= 5 and kinds["rle"] >= 3


def test_output_is_a_function_of_the_arguments(tmp_path, coco_root):
    again = write_coco_dataset(tmp_path / "again", num_train=10, num_val=4, image_size=(64, 96), seed=0)
    other = write_coco_dataset(tmp_path / "other", num_train=10, num_val=4, image_size=(64, 96), seed=1)
    for relative in ("annotations/instances_train2017.json", "annotations/instances_val2017.json",
                     "train2017/000000000001.jpg", "val2017/000000000014.jpg"):
        assert (again / relative).read_bytes() == (coco_root / relative).read_bytes()
    assert (other / "annotations/instances_train2017.json").read_bytes() != (
        coco_root / "annotations/instances_train2017.json"
    ).read_bytes()


def test_command_line_writes_the_dataset(tmp_path, capsys):
    main(["coco", str(tmp_path), "--num-train", "2", "--num-val", "1", "--min-size", "48", "--max-size", "56",
          "--seed", "3"])
    assert str(tmp_path) in capsys.readouterr().out
    expected = write_coco_dataset(tmp_path / "direct", num_train=2, num_val=1, image_size=(48, 56), seed=3)
    for split in ("train", "val"):
        written = json.loads((tmp_path / "annotations" / f"instances_{split}2017.json").read_text())
        assert written == json.loads((expected / "annotations" / f"instances_{split}2017.json").read_text())
    assert len(list((tmp_path / "train2017").glob("*.jpg"))) == 2


def test_an_int_image_size_gives_square_images(tmp_path):
    root = write_coco_dataset(tmp_path, num_train=3, num_val=1, image_size=48)
    images = _load_coco(root / "annotations" / "instances_train2017.json").dataset["images"]
    assert {(image["height"], image["width"]) for image in images} == {(48, 48)}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_train": -1}, "num_train"),
    ({"image_size": (80, 64)}, "image_size"),
    ({"image_size": (16, 32)}, "image_size"),
])
def test_bad_arguments_are_rejected(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_coco_dataset(tmp_path, **kwargs)
