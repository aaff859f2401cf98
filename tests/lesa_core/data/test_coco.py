"""CocoInstances on a generated COCO dataset: tensors, transforms, batching and every kind of bad input."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from lesa_core.data.coco import (
    CocoInstances,
    GroupedBatchSampler,
    RandomHorizontalFlip,
    ResizeShortestEdge,
    build_coco_loader,
    build_coco_transforms,
    collate_fn,
    segmentation_to_mask,
)
from lesa_core.data.synthetic import write_coco_dataset


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_dataset(tmp_path_factory.mktemp("coco"), num_train=8, num_val=4, image_size=(64, 96), seed=0)


@pytest.fixture(scope="module")
def train_set(coco_root):
    return CocoInstances(coco_root, "train", train=True)


def _instances(coco_root, split="val"):
    return json.loads((coco_root / "annotations" / f"instances_{split}2017.json").read_text())


def _write_json(path, content):
    path.write_text(json.dumps(content))
    return path


def _copy_split(coco_root, tmp_path, split="val"):
    """A private copy of one split, so a test may break its files."""
    shutil.copytree(coco_root / f"{split}2017", tmp_path / f"{split}2017")
    (tmp_path / "annotations").mkdir()
    shutil.copy(coco_root / "annotations" / f"instances_{split}2017.json", tmp_path / "annotations")
    return tmp_path


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of an (H, W) mask: run lengths in column-major order, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int64)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": [0, *runs] if flat[0] else runs}


def test_samples_match_the_annotations_and_the_pixels(coco_root, train_set):
    instances = _instances(coco_root, "train")
    checked = 0
    for index, image_id in enumerate(train_set.image_ids):
        image, target = train_set[index]
        annotations = [a for a in instances["annotations"] if a["image_id"] == image_id]
        assert image.dtype == torch.float32 and image.shape[0] == 3
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert set(target) == {"boxes", "labels", "masks", "image_id", "area", "iscrowd"}
        assert target["image_id"] == image_id
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (len(annotations), *image.shape[1:])
        assert target["labels"].tolist() == [a["category_id"] for a in annotations]
        assert target["area"].tolist() == [a["area"] for a in annotations]
        assert target["iscrowd"].tolist() == [0] * len(annotations)
        for box, mask in zip(target["boxes"], target["masks"], strict=True):
            rows, cols = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            # away from JPEG-blurred edges, the masked pixels are the one flat colour the generator painted there
            interior = -torch.nn.functional.max_pool2d(-mask[None].float(), 5, stride=1, padding=2)[0]
            if interior.sum() >= 10:
                assert image[:, interior.bool()].std(dim=1).max() < 0.06
                checked += 1
    assert checked >= 10


def test_polygons_and_both_kinds_of_rle_give_the_same_mask(coco_root):
    instances = _instances(coco_root, "train")
    annotation = next(a for a in instances["annotations"] if isinstance(a["segmentation"], list))
    image = next(i for i in instances["images"] if i["id"] == annotation["image_id"])
    height, width = image["height"], image["width"]
    from_polygon = segmentation_to_mask(annotation["segmentation"], height, width)
    assert from_polygon.shape == (height, width) and from_polygon.sum() == annotation["area"]
    uncompressed = _uncompressed_rle(from_polygon)
    np.testing.assert_array_equal(segmentation_to_mask(uncompressed, height, width), from_polygon)
    occluded = next(a for a in instances["annotations"] if isinstance(a["segmentation"], dict))
    image = next(i for i in instances["images"] if i["id"] == occluded["image_id"])
    compressed_mask = segmentation_to_mask(occluded["segmentation"], image["height"], image["width"])
    assert compressed_mask.sum() == occluded["area"]


def test_category_ids_map_to_contiguous_labels(coco_root, tmp_path):
    instances = _instances(coco_root)
    sparse = {1: 7, 2: 30, 3: 12}
    for category in instances["categories"]:
        category["id"] = sparse[category["id"]]
    for annotation in instances["annotations"]:
        annotation["category_id"] = sparse[annotation["category_id"]]
    ann_file = _write_json(tmp_path / "sparse.json", instances)
    dataset = CocoInstances(coco_root, "val", train=False, ann_file=ann_file)
    assert dataset.label_to_cat_id == {1: 7, 2: 12, 3: 30}
    assert dataset.cat_id_to_label == {7: 1, 12: 2, 30: 3}
    assert dataset.class_names == ("__background__", "circle", "triangle", "square")
    assert dataset.num_classes == 4
    _, target = dataset[0]
    annotations = [a for a in instances["annotations"] if a["image_id"] == dataset.image_ids[0]]
    assert [dataset.label_to_cat_id[label] for label in target["labels"].tolist()] == [
        a["category_id"] for a in annotations
    ]


def test_crowd_annotations_stay_out_of_training_targets(coco_root, tmp_path):
    instances = _instances(coco_root)
    first, second = instances["images"][:2]
    crowd_mask = np.zeros((first["height"], first["width"]), dtype=np.uint8)
    crowd_mask[2:10, 3:20] = 1
    crowd = {"id": 9001, "image_id": first["id"], "category_id": 1, "segmentation": _uncompressed_rle(crowd_mask),
             "area": 136.0, "bbox": [3, 2, 17, 8], "iscrowd": 1}
    # the second image is left with only a crowd region
    instances["annotations"] = [a for a in instances["annotations"] if a["image_id"] != second["id"]]
    instances["annotations"] += [crowd, {**crowd, "id": 9002, "image_id": second["id"]}]
    ann_file = _write_json(tmp_path / "crowd.json", instances)

    train_set = CocoInstances(coco_root, "val", train=True, ann_file=ann_file)
    eval_set = CocoInstances(coco_root, "val", train=False, ann_file=ann_file)
    assert second["id"] not in train_set.image_ids and second["id"] in eval_set.image_ids
    _, train_target = train_set[train_set.image_ids.index(first["id"])]
    _, eval_target = eval_set[eval_set.image_ids.index(first["id"])]
    assert train_target["iscrowd"].sum() == 0
    assert len(eval_target["labels"]) == len(train_target["labels"]) + 1
    crowd_index = eval_target["iscrowd"].tolist().index(1)
    np.testing.assert_array_equal(eval_target["masks"][crowd_index].numpy(), crowd_mask)


def test_horizontal_flip_moves_image_boxes_and_masks_together(train_set):
    image, target = train_set[0]
    flipped_image, flipped = RandomHorizontalFlip(p=1.0)(image, target)
    width = image.shape[-1]
    torch.testing.assert_close(flipped_image, image.flip(-1))
    torch.testing.assert_close(flipped["masks"], target["masks"].flip(-1))
    torch.testing.assert_close(flipped["boxes"][:, [1, 3]], target["boxes"][:, [1, 3]])
    torch.testing.assert_close(flipped["boxes"][:, [0, 2]], width - target["boxes"][:, [2, 0]])
    for box, mask in zip(flipped["boxes"], flipped["masks"], strict=True):
        cols = torch.nonzero(mask, as_tuple=True)[1]
        assert box[[0, 2]].tolist() == [cols.min(), cols.max() + 1]
    unchanged_image, unchanged = RandomHorizontalFlip(p=0.0)(image, target)
    assert unchanged_image is image and unchanged is target


def test_resize_keeps_the_aspect_ratio_and_the_boxes_on_the_masks(train_set):
    image, target = train_set[0]
    height, width = image.shape[-2:]
    resize = ResizeShortestEdge(min_size=128, max_size=150)
    resized_image, resized = resize(image, target)
    scale = min(128 / min(height, width), 150 / max(height, width))
    assert resized_image.shape[-2:] == (round(height * scale), round(width * scale))
    assert resized["masks"].shape[-2:] == resized_image.shape[-2:]
    assert set(resized["masks"].unique().tolist()) <= {0, 1}
    for box, mask in zip(resized["boxes"], resized["masks"], strict=True):
        rows, cols = torch.nonzero(mask, as_tuple=True)
        tight = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)
        assert (box - tight).abs().max() <= 2.0
    torch.testing.assert_close(resized["area"], target["area"] * (resized_image.shape[-1] / width)
                               * (resized_image.shape[-2] / height))


def test_transforms_builder_defaults_to_flip_only_for_training():
    assert build_coco_transforms(train=False) is None
    train = build_coco_transforms(train=True)
    assert [type(t) for t in train.transforms] == [RandomHorizontalFlip]
    resizing = build_coco_transforms(train=True, min_size=800, max_size=1333)
    assert [type(t) for t in resizing.transforms] == [ResizeShortestEdge, RandomHorizontalFlip]


def test_grouped_batches_hold_one_orientation_and_cover_every_index_once():
    group_ids = [0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0]  # 6 landscape, 5 portrait
    for batch_size, order in ((3, range(11)), (4, reversed(range(11))), (2, [4, 1, 0, 9, 7, 2, 10, 3, 8, 6, 5])):
        sampler = GroupedBatchSampler(list(order), group_ids, batch_size)
        batches = list(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(11))
        assert len(batches) == len(sampler) == -(-11 // batch_size)
        mixed = [batch for batch in batches if len({group_ids[i] for i in batch}) > 1]
        assert len(mixed) <= 1 and all(len(batch) <= batch_size for batch in batches)
    # leftovers of 2 and 1 would not fill a batch each: one mixed batch keeps the count at ceil(n / b)
    assert list(GroupedBatchSampler([0, 1, 2], [0, 0, 1], 4)) == [[0, 1, 2]]
    # leftovers of 3 and 3 need two batches anyway: both stay pure
    assert list(GroupedBatchSampler(range(6), [0, 1, 0, 1, 0, 1], 4)) == [[0, 2, 4], [1, 3, 5]]


def test_grouped_batches_over_distributed_shards_keep_ranks_in_step(train_set):
    group_ids = train_set.orientation_groups()
    assert set(group_ids) == {0, 1}
    seen, lengths = [], set()
    for rank in range(2):
        shard = DistributedSampler(train_set, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler = GroupedBatchSampler(shard, group_ids, 3)
        sampler.set_epoch(1)
        batches = list(sampler)
        lengths.add(len(batches))
        seen += [i for batch in batches for i in batch]
    assert len(lengths) == 1
    assert sorted(seen) == list(range(len(train_set)))


def test_loader_batches_by_orientation_deterministically(train_set):
    def epoch(loader):
        order, mixed_batches = [], 0
        for images, targets in loader:
            mixed_batches += len({image.shape[-1] >= image.shape[-2] for image in images}) > 1
            order += [target["image_id"] for target in targets]
        return order, mixed_batches

    loader = build_coco_loader(train_set, batch_size=3, train=True, workers=0, aspect_ratio_grouping=True, seed=5)
    first, mixed_batches = epoch(loader)
    assert sorted(first) == sorted(train_set.image_ids) and first != train_set.image_ids
    assert mixed_batches <= 1
    again = build_coco_loader(train_set, batch_size=3, train=True, workers=0, aspect_ratio_grouping=True, seed=5)
    assert epoch(again)[0] == first
    assert epoch(loader)[0] == first  # the order is a function of (seed, epoch) only
    loader.batch_sampler.set_epoch(1)
    assert epoch(loader)[0] != first  # the next epoch is reshuffled
    eval_loader = build_coco_loader(train_set, batch_size=3, train=False, aspect_ratio_grouping=False)
    assert epoch(eval_loader)[0] == train_set.image_ids


# ----------------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_annotation_file_is_named(coco_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json"):
        CocoInstances(coco_root, "val", train=False, ann_file=tmp_path / "nowhere.json")


@pytest.mark.parametrize(("content", "match"), [
    ('{"images": [', "not valid JSON"),
    ("[1, 2, 3]", "not a COCO instances file"),
    ('{"images": [], "annotations": []}', r"not a COCO instances file: no list \['categories'\]"),
])
def test_corrupt_annotation_file_is_named(coco_root, tmp_path, content, match):
    ann_file = tmp_path / "broken.json"
    ann_file.write_text(content)
    with pytest.raises(ValueError, match=match) as error:
        CocoInstances(coco_root, "val", train=False, ann_file=ann_file)
    assert str(ann_file) in str(error.value)


def test_unknown_category_names_the_annotation_and_file(coco_root, tmp_path):
    instances = _instances(coco_root)
    instances["annotations"][1]["category_id"] = 99
    bad_id = instances["annotations"][1]["id"]
    ann_file = _write_json(tmp_path / "unknown_category.json", instances)
    with pytest.raises(ValueError, match=rf"annotation {bad_id} in .*unknown_category\.json.* category_id 99"):
        CocoInstances(coco_root, "val", train=False, ann_file=ann_file)


def test_images_missing_on_disk_are_named_with_their_id(coco_root, tmp_path):
    root = _copy_split(coco_root, tmp_path)
    image = _instances(coco_root)["images"][2]
    (root / "val2017" / image["file_name"]).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{image['file_name']} \(image id {image['id']}\)"):
        CocoInstances(root, "val", train=False)


def test_out_of_image_and_degenerate_boxes_are_clipped_or_dropped(coco_root, tmp_path, caplog):
    instances = _instances(coco_root)
    image = instances["images"][0]
    width = image["width"]
    extra = {"image_id": image["id"], "category_id": 2, "segmentation": [[1, 1, 5, 1, 5, 5]], "area": 8.0,
             "iscrowd": 0}
    instances["annotations"] += [
        {**extra, "id": 9001, "bbox": [width - 10, -4, 30, 20]},  # sticks out: clipped
        {**extra, "id": 9002, "bbox": [width + 5, 3, 10, 10]},  # wholly outside: dropped
        {**extra, "id": 9003, "bbox": [10, 10, 0, 12]},  # zero width: dropped
    ]
    ann_file = _write_json(tmp_path / "boxes.json", instances)
    with caplog.at_level(logging.WARNING, logger="lesa_core.data.coco"):
        dataset = CocoInstances(coco_root, "val", train=True, ann_file=ann_file)
    assert (dataset.num_clipped_boxes, dataset.num_dropped_boxes) == (2, 2)
    assert "clipped 2 boxes to their image and dropped 2 degenerate ones" in caplog.text
    _, target = dataset[dataset.image_ids.index(image["id"])]
    original = [a for a in _instances(coco_root)["annotations"] if a["image_id"] == image["id"]]
    assert len(target["boxes"]) == len(original) + 1
    assert target["boxes"][-1].tolist() == [width - 10, 0, width, 16]


def test_an_empty_dataset_is_an_error(coco_root, tmp_path):
    instances = _instances(coco_root)
    no_images = _write_json(tmp_path / "no_images.json", {**instances, "images": [], "annotations": []})
    with pytest.raises(ValueError, match=r"no_images\.json has no images"):
        CocoInstances(coco_root, "val", train=False, ann_file=no_images)
    crowd_only = {**instances, "annotations": [{**a, "iscrowd": 1} for a in instances["annotations"]]}
    crowd_file = _write_json(tmp_path / "crowd_only.json", crowd_only)
    with pytest.raises(ValueError, match="has no images with non-crowd annotations"):
        CocoInstances(coco_root, "val", train=True, ann_file=crowd_file)


def test_unreadable_images_are_skipped_and_counted(coco_root, tmp_path, caplog):
    root = _copy_split(coco_root, tmp_path)
    images = _instances(coco_root)["images"]
    truncated = root / "val2017" / images[1]["file_name"]
    truncated.write_bytes(truncated.read_bytes()[:300])
    resized = root / "val2017" / images[2]["file_name"]
    Image.open(resized).resize((40, 40)).save(resized)

    eval_set = CocoInstances(root, "val", train=False)
    with caplog.at_level(logging.WARNING, logger="lesa_core.data.coco"):
        assert eval_set[1] is None and eval_set[2] is None
    assert eval_set.num_skipped_images == 2
    assert f"{truncated} (image id {images[1]['id']})" in caplog.text
    assert "size 40x40 differs from the json's" in caplog.text
    assert "2 image(s) skipped so far" in caplog.text

    # in a DataLoader worker the skipped samples are dropped from their batch instead of crashing it
    loader = build_coco_loader(eval_set, batch_size=2, train=False, workers=1, aspect_ratio_grouping=False)
    batches = [[target["image_id"] for target in targets] for _, targets in loader]
    assert batches == [[images[0]["id"]], [images[3]["id"]]]
    assert collate_fn([None, None]) == ([], [])

    # training substitutes the next readable image so batches keep their size
    train_set = CocoInstances(root, "val", train=True)
    assert train_set[1][1]["image_id"] == images[3]["id"]
    assert train_set.num_skipped_images == 2
