"""The JSON report every benchmark writes: what ran where, its settings, and one entry per case."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).parent / "results"


def write_report(name: str, device: str, settings: dict, results: list[dict], out: Path | None = None,
                 **extra: object) -> Path:
    """Writes ``results/<name>_<device type>.json`` (or ``out``), prints each result, returns the path."""
    on_cuda = device.startswith("cuda")
    report = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if on_cuda else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "memory": "torch.cuda.max_memory_allocated" if on_cuda else "peak RSS of the process",
        "settings": settings,
        **extra,
        "results": results,
    }
    out = out or RESULTS_DIR / f"{name}_{device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for result in results:
        print(json.dumps(result))
    print(f"wrote {out}")
    return out
