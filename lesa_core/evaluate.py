"""Evaluate a classifier on an ImageNet-layout val split: ``python -m lesa_core.evaluate``.

    python -m lesa_core.evaluate --model lesa_resnet50 --checkpoint runs/x/best.pth --data /data/imagenet

Accepts checkpoints written by :mod:`lesa_core.engine.checkpoint` (their class list and image size are used)
and bare state dicts (classes from ``DATA/train``). Prints top-1 / top-5 in percent; a missing file or
weights of another architecture end with a one-line error and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data.imagenet import ImageNetDataset, create_imagenet_transforms, find_classes, resolve_imagenet_data_config
from .engine.checkpoint import load_weights, read_weights
from .engine.classification import create_classification_model, evaluate


def evaluate_checkpoint(
    *, model_name: str, checkpoint: Path, data: Path, batch_size: int = 128, workers: int = 4,
    img_size: int | None = None, device: str = "cpu", amp: bool = False, val_labels: Path | None = None,
) -> dict[str, float]:
    """``val/acc1``, ``val/acc5`` (0..1) and ``val/loss`` of the weights in ``checkpoint`` on ``data/val``.

    The image size is ``img_size``, else the one the checkpoint was trained at, else the model's default.
    """
    state_dict, extra = read_weights(checkpoint)
    classes = extra.get("classes") or find_classes(data)
    img_size = img_size or extra.get("img_size")
    model = create_classification_model(model_name, num_classes=len(classes), device=device, img_size=img_size,
                                        amp=amp)
    load_weights(model, state_dict, name=str(checkpoint))
    _, eval_transform = create_imagenet_transforms(resolve_imagenet_data_config(model, img_size))
    dataset = ImageNetDataset(data, "val", transform=eval_transform, classes=classes, val_labels=val_labels)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.startswith("cuda"))
    return evaluate(model, tqdm(loader, desc="val"), device=device, amp=amp)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lesa_core.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="timm model name, e.g. lesa_resnet50")
    parser.add_argument("--checkpoint", type=Path, required=True, help="last.pth / best.pth or a bare state dict")
    parser.add_argument("--data", type=Path, required=True, help="folder with val/ (and train/ for class names)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--img-size", type=int, help="default: the checkpoint's training size, else the model's")
    parser.add_argument("--val-labels", type=Path, help="labels file of a flat val/ folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast + channels_last (CUDA)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = evaluate_checkpoint(
            model_name=args.model, checkpoint=args.checkpoint, data=args.data, batch_size=args.batch_size,
            workers=args.workers, img_size=args.img_size, device=args.device, amp=args.amp,
            val_labels=args.val_labels,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"top-1 {100 * metrics['val/acc1']:.2f}%  top-5 {100 * metrics['val/acc5']:.2f}%  "
          f"loss {metrics['val/loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
