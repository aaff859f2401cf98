"""Mask R-CNN training throughput and peak memory: LESA-ResNet-50 FPN against the conv and SA baselines.

A training step on random images of ``--height`` x ``--width`` (default 800 x 1333, the COCO setting)
with a few random boxes and masks each. Each case runs in its own subprocess; peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and the process's peak RSS on CPU. Ratios are against the
conv backbone of the same run.

    python benchmarks/bench_detection.py                                # GPU, batch 2, 800x1333
    python benchmarks/bench_detection.py --device cpu --height 320 --width 480 --steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from report import write_report
from tqdm import tqdm

from lesa_core.detection.mask_rcnn import maskrcnn_lesa_fpn

CASES: dict[str, tuple[str, dict]] = {
    "maskrcnn_lesa_r50/fast": ("lesa_resnet50", {"sim_norm": "scaled"}),
    "maskrcnn_lesa_r50/official": ("lesa_resnet50", {"sim_norm": "bn"}),
    "maskrcnn_sa_r50/fast": ("sa_resnet50", {"sim_norm": "scaled"}),
    "maskrcnn_conv_r50": ("conv_resnet50_s16", {}),
}
BASELINE = "maskrcnn_conv_r50"


def _random_targets(batch: int, height: int, width: int, device: torch.device) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(batch):
        corners = torch.rand(4, 2, generator=generator) * torch.tensor([width * 0.6, height * 0.6])
        sizes = 32 + torch.rand(4, 2, generator=generator) * torch.tensor([width * 0.3, height * 0.3])
        boxes = torch.cat([corners, corners + sizes], dim=1)
        masks = torch.zeros(4, height, width, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, 81, (4,), generator=generator).to(device),
                        "masks": masks.to(device)})
    return targets


def run_case(case: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    arch, options = CASES[case]
    model = maskrcnn_lesa_fpn(arch, num_classes=81, min_size=args.height, max_size=args.width, **options)
    model.to(device).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images = [torch.rand(3, args.height, args.width, device=device) for _ in range(args.batch_size)]
    targets = _random_targets(args.batch_size, args.height, args.width, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()

    def step() -> None:
        with autocast:
            loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    seconds = (time.perf_counter() - start) / args.steps
    return {"case": case, "images_per_sec": args.batch_size / seconds, "step_ms": 1000 * seconds,
            "peak_memory_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one-case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_case:
        print(json.dumps(run_case(args.one_case, args)))
        return

    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"--cases: unknown {unknown}; known: {list(CASES)}")
    results = []
    for case in tqdm(cases, desc="detection cases"):
        command = [sys.executable, __file__, "--one-case", case, "--device", args.device,
                   "--batch-size", str(args.batch_size), "--height", str(args.height), "--width", str(args.width),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), *(["--bf16"] if args.bf16 else [])]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            results.append({"case": case, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]})
        else:
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    baseline = next((r for r in results if r["case"] == BASELINE and "error" not in r), None)
    for result in results:
        if baseline and "images_per_sec" in result:
            result["throughput_vs_conv"] = result["images_per_sec"] / baseline["images_per_sec"]
            result["memory_vs_conv"] = result["peak_memory_gib"] / baseline["peak_memory_gib"]
    settings = {"batch_size": args.batch_size, "image": [args.height, args.width], "steps": args.steps,
                "warmup": args.warmup, "bf16": args.bf16}
    write_report("bench_detection", args.device, settings, results, args.out)

if __name__ == "__main__":
    main()
