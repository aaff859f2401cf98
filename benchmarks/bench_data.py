"""Data-loading throughput: decoded + transformed images per second on one CPU core.

For each ``JPEG:CROP`` size pair, writes a generated ImageNet-layout dataset of real JPEGs (ImageNet photos
average about 400x350; the CPU quickstart uses 64 px) and times ``ImageNetDataset[i]`` (open, decode, timm
transform, normalised tensor) in one process with one torch thread, for the train transform (random-resized
crop + flip), the train transform with RandAugment, and the eval transform (resize + centre crop at the
model's crop_pct). Images per second per core times the worker count bounds what a DataLoader can feed.
Results go to a JSON file.

    python benchmarks/bench_data.py                    # 224 px crops of 400 px JPEGs, 64 px of 64 px
    python benchmarks/bench_data.py --sizes 500:288     # another setting
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import PIL
import timm
import torch
from tqdm import tqdm

import lesa_core  # noqa: F401  (registers the models)
from lesa_core.data.imagenet import ImageNetDataset, create_imagenet_transforms, resolve_imagenet_data_config
from lesa_core.data.synthetic import write_imagenet_dataset

TRAIN_RANDAUGMENT = "rand-m9-mstd0.5"
CASES = ("train", "train_randaugment", "eval")


def time_dataset(dataset: ImageNetDataset, num_images: int, warmup: int) -> float:
    """Seconds per ``dataset[i]`` over ``num_images`` items (cycling), after ``warmup`` untimed ones."""
    for index in range(warmup):
        dataset[index % len(dataset)]
    start = time.perf_counter()
    for index in range(num_images):
        dataset[index % len(dataset)]
    return (time.perf_counter() - start) / num_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lesa_resnet50", help="its pretrained_cfg gives crop_pct, mean, std")
    parser.add_argument("--sizes", default="400:224,64:64", help="comma list of JPEG side:crop side")
    parser.add_argument("--num-images", type=int, default=400, help="timed items per case")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_data_cpu.json")
    args = parser.parse_args()

    torch.set_num_threads(1)
    with torch.device("meta"):
        model = timm.create_model(args.model)
    sizes = [tuple(int(side) for side in pair.split(":")) for pair in args.sizes.split(",")]
    results = []
    for jpeg_size, img_size in tqdm(sizes, desc="sizes"):
        data_config = resolve_imagenet_data_config(model, img_size)
        train_transform, eval_transform = create_imagenet_transforms(data_config)
        randaugment_transform, _ = create_imagenet_transforms(data_config, auto_augment=TRAIN_RANDAUGMENT)
        transforms = {"train": train_transform, "train_randaugment": randaugment_transform, "eval": eval_transform}
        with tempfile.TemporaryDirectory() as tmp:
            root = write_imagenet_dataset(tmp, train_per_class=10, val_per_class=0, image_size=jpeg_size)
            for case in CASES:
                dataset = ImageNetDataset(root, "train", transform=transforms[case])
                seconds = time_dataset(dataset, args.num_images, args.warmup)
                results.append({"case": case, "jpeg_size": jpeg_size, "img_size": img_size,
                                "crop_pct": data_config["crop_pct"], "images_per_sec_per_core": 1 / seconds,
                                "ms_per_image": 1000 * seconds})

    report = {
        "benchmark": "bench_data",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": "cpu",
        "device_name": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "pillow": PIL.__version__,
        "settings": {"model": args.model, "num_images": args.num_images, "warmup": args.warmup,
                     "randaugment": TRAIN_RANDAUGMENT, "jpeg_quality": "75-95"},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for result in results:
        print(json.dumps(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
