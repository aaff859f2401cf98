"""The generated ImageNet-layout dataset: layout, real JPEGs, labels file, determinism."""

import pytest
from PIL import Image

from lesa_core.data.synthetic import write_imagenet_dataset


def _files(root):
    return sorted(path.relative_to(root) for path in root.rglob("*") if path.is_file())


def test_folder_layout_has_one_folder_per_class_with_real_jpegs(tmp_path):
    root = write_imagenet_dataset(tmp_path / "ds", num_classes=3, train_per_class=4, val_per_class=2, image_size=40)
    assert root == tmp_path / "ds"
    for split, per_class in (("train", 4), ("val", 2)):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == ["n00000000", "n00000001", "n00000002"]
        for folder in folders:
            images = list((root / split / folder).glob("*.JPEG"))
            assert len(images) == per_class
            with Image.open(images[0]) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (40, 40))


def test_flat_val_writes_ilsvrc_names_and_a_label_for_each(tmp_path):
    root = write_imagenet_dataset(tmp_path, num_classes=4, train_per_class=1, val_per_class=3, image_size=32,
                                  flat_val=True)
    val_files = sorted(p.name for p in (root / "val").iterdir())
    assert val_files == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 13)]
    labels = dict(line.split(",") for line in (root / "val_labels.csv").read_text().splitlines())
    assert sorted(labels) == val_files
    assert sorted(labels.values()) == sorted([f"n{k:08d}" for k in range(4)] * 3)


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    kwargs = dict(num_classes=2, train_per_class=2, val_per_class=1, image_size=32)
    first = write_imagenet_dataset(tmp_path / "a", seed=5, **kwargs)
    again = write_imagenet_dataset(tmp_path / "b", seed=5, **kwargs)
    other = write_imagenet_dataset(tmp_path / "c", seed=6, **kwargs)
    assert _files(first) == _files(again) == _files(other)
    assert all((first / f).read_bytes() == (again / f).read_bytes() for f in _files(first))
    assert any((first / f).read_bytes() != (other / f).read_bytes() for f in _files(first))


@pytest.mark.parametrize("num_classes", [0, 11])
def test_class_count_outside_the_shape_table_is_refused(tmp_path, num_classes):
    with pytest.raises(ValueError, match=f"num_classes={num_classes}"):
        write_imagenet_dataset(tmp_path, num_classes=num_classes)
