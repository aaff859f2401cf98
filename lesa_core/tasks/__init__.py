"""Tasks: a plain config (model, data, optimizer + schedule) -> model, loaders and engine calls.

``build_task(config)`` is what ``python -m lesa_core.train`` and the orchestrator's per-worker loop both run.
"""

from .build import Task, build_model, build_task, seed_everything
from .config import PRESETS, QUICKSTART_DATA, DataConfig, DetectorConfig, ModelConfig, TaskConfig

__all__ = [
    "PRESETS",
    "QUICKSTART_DATA",
    "DataConfig",
    "DetectorConfig",
    "ModelConfig",
    "Task",
    "TaskConfig",
    "build_model",
    "build_task",
    "seed_everything",
]
