"""Training-step throughput and peak memory of LESA models and baselines, and of the LESA layer alone.

Each case runs in its own subprocess so peak memory is its own: ``torch.cuda.max_memory_allocated`` on
CUDA, peak resident set size (including the interpreter) on CPU. Results go to a JSON file with
ratios against ``conv_resnet50_s16`` from the same run; absolute numbers mean something only on a GPU.

    python benchmarks/bench_models.py                       # the reference setting: batch 128, 224x224
    python benchmarks/bench_models.py --device cpu --batch-size 4 --steps 3 --warmup 1
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

import timm
import torch
from report import write_report
from tqdm import tqdm

import lesa_core  # noqa: F401  (registers the models)
from lesa_core.layers import LesaAttention

MODEL_CASES: dict[str, tuple[str, dict]] = {
    "lesa_resnet50/official": ("lesa_resnet50", {"pos_embed": "flat1d", "sim_norm": "bn"}),
    "lesa_resnet50/fast": ("lesa_resnet50", {"pos_embed": "rel2d", "sim_norm": "scaled"}),
    "sa_resnet50/fast": ("sa_resnet50", {"pos_embed": "rel2d", "sim_norm": "scaled"}),
    "conv_resnet50_s16": ("conv_resnet50_s16", {}),
    "timm/resnet50": ("resnet50", {}),
}
LAYER_CASES: dict[str, dict] = {
    "lesa_layer_det/official": {"pos_embed": "rel2d", "sim_norm": "bn"},
    "lesa_layer_det/fast": {"pos_embed": "rel2d", "sim_norm": "scaled"},
}
BASELINE = "conv_resnet50_s16"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _time_steps(step, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per call of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def run_model_case(case: str, args: argparse.Namespace, bf16: bool) -> dict:
    """One training step: forward, cross-entropy, backward, SGD step (batch, 3, S, S) random images."""
    device = torch.device(args.device)
    name, options = MODEL_CASES[case]
    model = timm.create_model(name, img_size=args.img_size, **options) if options else timm.create_model(name)
    model.to(device).train()
    memory_format = torch.channels_last if bf16 else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    images = images.to(memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step() -> None:
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = _time_steps(step, device, args.warmup, args.steps)
    return {"images_per_sec": args.batch_size / seconds, "step_ms": 1000 * seconds}


def run_layer_case(case: str, args: argparse.Namespace, bf16: bool) -> dict:
    """LESA layer alone at detection scale: (2, 256, 64, 64) forward + backward."""
    device = torch.device(args.device)
    layer = LesaAttention(256, num_heads=8, feat_size=64, **LAYER_CASES[case]).to(device).train()
    x = torch.randn(2, 256, 64, 64, device=device, requires_grad=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step() -> None:
        with autocast:
            out = layer(x)
        out.float().square().mean().backward()

    seconds = _time_steps(step, device, args.warmup, args.steps)
    return {"step_ms": 1000 * seconds}


def run_case(case: str, precision: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    bf16 = precision == "bf16"
    runner = run_layer_case if case in LAYER_CASES else run_model_case
    result = runner(case, args, bf16)
    return {"case": case, "precision": precision, **result, "peak_memory_gib": _peak_memory_gib(device)}


def _in_subprocess(case: str, precision: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--one-case", case, "--precisions", precision, "--device", args.device,
               "--batch-size", str(args.batch_size), "--img-size", str(args.img_size),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"case": case, "precision": precision, "error": last_line}
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_ratios(results: list[dict]) -> None:
    """Throughput relative to the conv baseline of the same precision, measured in this run."""
    baseline = {r["precision"]: r["images_per_sec"] for r in results if r["case"] == BASELINE and "error" not in r}
    for result in results:
        if "images_per_sec" in result and result["precision"] in baseline:
            result["throughput_vs_conv"] = result["images_per_sec"] / baseline[result["precision"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16 (+ channels_last)")
    parser.add_argument("--cases", default=",".join([*MODEL_CASES, *LAYER_CASES]), help="comma list of cases")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument("--one-case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one_case:
        print(json.dumps(run_case(args.one_case, args.precisions, args)))
        return

    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(MODEL_CASES) - set(LAYER_CASES))
    if unknown:
        parser.error(f"--cases: unknown {unknown}; known: {[*MODEL_CASES, *LAYER_CASES]}")
    jobs = [(case, precision) for precision in args.precisions.split(",") for case in cases]
    results = [_in_subprocess(case, precision, args) for case, precision in tqdm(jobs, desc="benchmark cases")]
    add_ratios(results)
    settings = {"batch_size": args.batch_size, "img_size": args.img_size, "steps": args.steps, "warmup": args.warmup,
                "layer_case": "LesaAttention(256, heads=8), input (2, 256, 64, 64)"}
    write_report("bench_models", args.device, settings, results, args.out, timm=timm.__version__)

if __name__ == "__main__":
    main()
