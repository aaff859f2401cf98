"""Training checkpoints for any task: model, optimizer, scheduler, grad scaler, EMA, epoch and every RNG state.

A checkpoint is one ``torch.save`` dict of plain tensors and Python values (it loads with
``weights_only=True``), written to a temporary file and moved into place with ``os.replace`` so a crash
mid-write never leaves a truncated file under the final name. Restoring the RNG states (Python ``random``,
NumPy's global generator, torch CPU and CUDA) makes a resumed run replay exactly what an uninterrupted run
would have done.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CHECKPOINT_FORMAT = "lesa_core.checkpoint/1"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def rng_states() -> dict[str, Any]:
    """The state of every random generator a training step draws from."""
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        # NumPy's state as a tensor and plain numbers, so the file stays loadable with weights_only=True
        "numpy": {"bit_generator": bit_generator, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned; CUDA states only when this process sees as many devices."""
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["bit_generator"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    cuda_states = states.get("cuda")
    if cuda_states is not None and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    ema: nn.Module | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a resumable checkpoint atomically.

    Args:
        path: destination file; its folder is created.
        model: the trained model (DDP and ``torch.compile`` wrappers are unwrapped).
        optimizer, scheduler, scaler: saved through their ``state_dict()`` when given (a timm scheduler, a
            torch LR scheduler, a ``torch.amp.GradScaler``).
        epoch: the number of finished epochs, i.e. the epoch a resumed run starts at.
        ema: an EMA wrapper such as ``timm.utils.ModelEmaV3``.
        extra: plain Python values the caller wants back (class names, best metric, run arguments).

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng_states(),
        "extra": extra or {},
    }
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp_path, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def load_model_state(model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str | Path) -> None:
    """Load ``state_dict`` into ``model`` strictly, after stripping a DDP ``module.`` or compile prefix.

    Raises:
        ValueError: the keys or shapes differ (another architecture or class count); the message names
            ``source`` and the first mismatched keys.
    """
    state_dict = _strip_prefix(_strip_prefix(state_dict, "module."), "_orig_mod.")
    target = unwrap_model(model)
    expected = target.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    reshaped = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}" for key, value in expected.items()
                if key in state_dict and state_dict[key].shape != value.shape]
    if missing or unexpected or reshaped:
        problems = [f"{label} {items[:3]}{' ...' if len(items) > 3 else ''} ({len(items)})"
                    for label, items in (("missing", missing), ("unexpected", unexpected),
                                         ("shape mismatch (checkpoint vs model)", reshaped)) if items]
        raise ValueError(f"{source}: weights do not fit {type(target).__name__}: {'; '.join(problems)}")
    target.load_state_dict(state_dict)


def read_checkpoint_file(path: str | Path) -> Any:
    """``torch.load`` of ``path`` on the CPU with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a torch file of tensors and plain values; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises many types on a foreign file; all mean "not a checkpoint"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: not a readable torch checkpoint ({first_line})") from error


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    ema: nn.Module | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into the given objects (on their devices).

    Args:
        path: a checkpoint file.
        model: receives the weights (wrappers are unwrapped).
        optimizer, scheduler, scaler, ema: restored when given and present in the file.
        restore_rng: also restore the RNG states, for an exact resume.

    Returns:
        The checkpoint dict: ``epoch`` (finished epochs), ``extra`` and the raw states.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a checkpoint written by :func:`save_checkpoint`, or weights of another architecture.
    """
    checkpoint = read_checkpoint_file(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (written by lesa_core.engine.checkpoint)")
    load_model_state(model, checkpoint["model"], source=path)
    for name, stateful in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler), ("ema", ema)):
        if stateful is not None and checkpoint[name] is not None:
            stateful.load_state_dict(checkpoint[name])
    if restore_rng:
        set_rng_states(checkpoint["rng"])
    return checkpoint
