"""ImageNet folders on disk: both layouts, timm transforms, mixup, DDP-aware loaders, and bad input."""

import logging
import math
import shutil

import pytest
import timm
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch.utils.data import DataLoader, DistributedSampler

import lesa_core  # noqa: F401  (registers the models)
from lesa_core.data.imagenet import (
    EvalShardSampler,
    ImageNetDataset,
    build_imagenet_loaders,
    create_imagenet_transforms,
    create_mixup_and_criterion,
    find_classes,
    read_val_labels,
    resolve_imagenet_data_config,
)
from lesa_core.data.synthetic import write_imagenet_dataset

WNIDS = ["n00000000", "n00000001", "n00000002"]


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    return write_imagenet_dataset(tmp_path_factory.mktemp("folders"), num_classes=3, train_per_class=6,
                                  val_per_class=2, image_size=32)


@pytest.fixture(scope="module")
def flat_root(tmp_path_factory):
    return write_imagenet_dataset(tmp_path_factory.mktemp("flat"), num_classes=3, train_per_class=2,
                                  val_per_class=3, image_size=32, flat_val=True)


@pytest.fixture
def copy_of(tmp_path):
    def copy(root):
        return shutil.copytree(root, tmp_path / "copy")
    return copy


@pytest.fixture(scope="module")
def data_config():
    with torch.device("meta"):
        model = timm.create_model("test_lesa_resnet")
    return resolve_imagenet_data_config(model, img_size=40)


def test_folder_layout_indexes_classes_by_sorted_train_wnids(folder_root):
    assert find_classes(folder_root) == WNIDS
    for split, per_class in (("train", 6), ("val", 2)):
        dataset = ImageNetDataset(folder_root, split)
        assert dataset.classes == WNIDS
        assert len(dataset) == 3 * per_class
        assert all(path.parent.name == WNIDS[target] for path, target in dataset.samples)
        image, target = dataset[0]
        assert isinstance(image, Image.Image) and image.mode == "RGB" and target == 0


def test_flat_val_layout_takes_labels_from_the_labels_file(flat_root):
    labels = read_val_labels(flat_root / "val_labels.csv")
    dataset = ImageNetDataset(flat_root, "val")
    assert len(dataset) == 9 == len(labels)
    assert all(WNIDS[target] == labels[path.name] for path, target in dataset.samples)
    assert sorted(dataset.targets) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_labels_file_formats_header_whitespace_and_kaggle(tmp_path):
    (tmp_path / "a.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01751748 1 2 3 4\n")
    (tmp_path / "b.txt").write_text("ILSVRC2012_val_00000002.JPEG  n09193705\n\n")
    assert read_val_labels(tmp_path / "a.csv") == {"ILSVRC2012_val_00000001": "n01751748"}
    assert read_val_labels(tmp_path / "b.txt") == {"ILSVRC2012_val_00000002.JPEG": "n09193705"}
    (tmp_path / "bad.csv").write_text("x.JPEG,n1\nonly_a_name\n")
    with pytest.raises(ValueError, match=r"bad.csv:2"):
        read_val_labels(tmp_path / "bad.csv")


def test_flat_val_with_labels_elsewhere_and_stems_as_keys(flat_root, copy_of, tmp_path):
    root = copy_of(flat_root)
    labels = read_val_labels(root / "val_labels.csv")
    (root / "val_labels.csv").unlink()
    with pytest.raises(FileNotFoundError, match="no labels file"):
        ImageNetDataset(root, "val")
    elsewhere = tmp_path / "solution.csv"
    elsewhere.write_text("".join(f"{name.removesuffix('.JPEG')} {wnid}\n" for name, wnid in labels.items()))
    assert len(ImageNetDataset(root, "val", val_labels=elsewhere)) == 9


def test_train_transform_crops_flips_and_normalises_to_the_crop_size(data_config):
    train_transform, _ = create_imagenet_transforms(data_config)
    image = Image.new("RGB", (90, 50), (200, 30, 30))
    out = train_transform(image)
    assert out.shape == (3, 40, 40) and out.dtype == torch.float32
    red = (200 / 255 - data_config["mean"][0]) / data_config["std"][0]
    torch.testing.assert_close(out[0], torch.full((40, 40), red), atol=1e-3, rtol=0)
    randaugment, _ = create_imagenet_transforms(data_config, auto_augment="rand-m9-mstd0.5")
    assert "RandAugment" in repr(randaugment)
    assert randaugment(image).shape == (3, 40, 40)


def test_eval_transform_resizes_by_crop_pct_then_centre_crops(data_config):
    _, eval_transform = create_imagenet_transforms(data_config)
    assert data_config["crop_pct"] == 0.95  # test_lesa_resnet's pretrained_cfg
    image = Image.effect_noise((120, 80), 60).convert("RGB")
    resized = TF.resize(image, math.floor(40 / 0.95), interpolation=TF.InterpolationMode.BILINEAR)
    expected = TF.normalize(TF.to_tensor(TF.center_crop(resized, 40)), data_config["mean"], data_config["std"])
    torch.testing.assert_close(eval_transform(image), expected)


def test_mixup_gives_soft_targets_and_the_matching_criterion():
    mixup_fn, criterion = create_mixup_and_criterion(5, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    assert isinstance(mixup_fn, Mixup) and isinstance(criterion, SoftTargetCrossEntropy)
    _, targets = mixup_fn(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert targets.shape == (4, 5)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
    none, smoothing = create_mixup_and_criterion(5, label_smoothing=0.1)
    assert none is None and isinstance(smoothing, LabelSmoothingCrossEntropy)
    assert isinstance(create_mixup_and_criterion(5)[1], torch.nn.CrossEntropyLoss)


def test_loaders_shuffle_by_seed_and_epoch_and_cover_val_once(folder_root, data_config):
    def epoch_order(seed, epoch):
        train_loader, _ = build_imagenet_loaders(folder_root, data_config=data_config, batch_size=4,
                                                 num_workers=0, seed=seed)
        train_loader.sampler.set_epoch(epoch)
        return list(train_loader.sampler)

    train_loader, val_loader = build_imagenet_loaders(folder_root, data_config=data_config, batch_size=4,
                                                      num_workers=0)
    assert isinstance(train_loader.sampler, DistributedSampler) and train_loader.sampler.num_replicas == 1
    assert epoch_order(0, 1) == epoch_order(0, 1)
    assert epoch_order(0, 0) != epoch_order(0, 1) != epoch_order(1, 1)
    assert [images.shape[0] for images, _ in train_loader] == [4, 4, 4, 4]  # 18 images, full batches only
    assert sorted(list(val_loader.sampler)) == list(range(6))
    images, labels = next(iter(val_loader))
    assert images.shape == (6, 3, 40, 40) and labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_eval_shards_are_disjoint_and_cover_every_image():
    shards = [list(EvalShardSampler(7, rank=rank, world_size=3)) for rank in range(3)]
    assert sorted(index for shard in shards for index in shard) == list(range(7))
    assert [len(shard) for shard in shards] == [3, 2, 2]


def test_fewer_images_than_a_batch_is_refused(folder_root, data_config):
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_imagenet_loaders(folder_root, data_config=data_config, batch_size=64, num_workers=0)


def test_non_image_files_are_skipped_and_counted(folder_root, copy_of, caplog):
    root = copy_of(folder_root)
    (root / "train" / WNIDS[0] / "notes.txt").write_text("not an image")
    (root / "train" / WNIDS[1] / ".DS_Store").write_bytes(b"\0\1")
    (root / "train" / "README").write_text("top-level file")
    with caplog.at_level(logging.WARNING, logger="lesa_core.data.imagenet"):
        dataset = ImageNetDataset(root, "train")
    assert len(dataset) == 18
    assert "skipped 3 non-image files" in caplog.text


def test_an_empty_class_folder_is_an_error_naming_it(folder_root, copy_of):
    root = copy_of(folder_root)
    (root / "train" / "n00000009").mkdir()
    (root / "val" / "n00000009").mkdir()
    with pytest.raises(ValueError, match=r"class folders without images: \[.*train/n00000009\]"):
        ImageNetDataset(root, "train")


def test_class_sets_that_differ_between_train_and_val_are_errors(folder_root, copy_of):
    root = copy_of(folder_root)
    shutil.move(root / "val" / WNIDS[2], root / "val" / "n00000007")
    with pytest.raises(ValueError, match=r"val: classes differ .*missing \[n00000002\].*not in train \[n00000007\]"):
        ImageNetDataset(root, "val")


def test_flat_labels_with_an_unknown_class_or_an_unlabelled_image_are_errors(flat_root, copy_of):
    root = copy_of(flat_root)
    labels_file = root / "val_labels.csv"
    lines = labels_file.read_text().splitlines()
    labels_file.write_text("\n".join([*lines[:-1], lines[-1].split(",")[0] + ",n00000042"]))
    with pytest.raises(ValueError, match=r"val_labels.csv: classes differ .*not in train \[n00000042\]"):
        ImageNetDataset(root, "val")
    labels_file.write_text("\n".join(lines[1:]))
    with pytest.raises(ValueError, match=r"no label for \[ILSVRC2012_val_00000001.JPEG\]"):
        ImageNetDataset(root, "val")


def _corrupt_two_images(root):
    """A truncated JPEG and a file of garbage bytes, both named like images."""
    first, second = sorted((root / "train" / WNIDS[0]).iterdir())[:2]
    first.write_bytes(first.read_bytes()[:200])
    second.write_bytes(b"definitely not a jpeg" * 10)
    return first, second


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_images_are_skipped_at_load_time_without_killing_workers(
    folder_root, copy_of, data_config, caplog, num_workers
):
    root = copy_of(folder_root)
    truncated, garbage = _corrupt_two_images(root)
    train_transform, _ = create_imagenet_transforms(data_config)
    dataset = ImageNetDataset(root, "train", transform=train_transform)
    assert len(dataset) == 18  # found by name; unreadable only when loaded
    loader = DataLoader(dataset, batch_size=6, num_workers=num_workers, timeout=60 if num_workers else 0)
    with caplog.at_level(logging.WARNING, logger="lesa_core.data.imagenet"):
        batches = list(loader)
    assert [images.shape for images, _ in batches] == [(6, 3, 40, 40)] * 3
    # the two bad class-0 images are replaced by the next readable one (also class 0)
    assert batches[0][1].tolist() == [0] * 6
    if num_workers == 0:
        assert dataset.unreadable == {truncated, garbage}
        assert "2 unreadable so far" in caplog.text and truncated.name in caplog.text


def test_a_dataset_of_only_unreadable_images_raises_instead_of_looping(tmp_path):
    root = write_imagenet_dataset(tmp_path, num_classes=1, train_per_class=20, val_per_class=0, image_size=32)
    for path in (root / "train" / WNIDS[0]).iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(RuntimeError, match="unreadable images in a row"):
        ImageNetDataset(root, "train")[0]
