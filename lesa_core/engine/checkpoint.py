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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.convert import from_official

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


def read_weights(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state dict, extra run info) from any weights this project meets.

    ``source`` is a file or its loaded contents: a :func:`save_checkpoint` file (its ``extra`` comes back), a
    ``{"model": ...}`` or ``{"state_dict": ...}`` dict, an official LESA checkpoint (``{"net": ...}`` or official
    layer names; converted by :func:`lesa_core.models.convert.from_official`) or a bare state dict. DataParallel /
    DDP ``module.`` and ``torch.compile`` ``_orig_mod.`` prefixes are stripped.
    """
    name = str(source) if isinstance(source, str | Path) else "checkpoint"
    loaded = read_checkpoint_file(source) if isinstance(source, str | Path) else source
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{name}: not a checkpoint or state dict (a {type(loaded).__name__})")
    extra: dict[str, Any] = {}
    if loaded.get("format") == CHECKPOINT_FORMAT:
        state_dict, extra = loaded["model"], dict(loaded["extra"])
    elif isinstance(loaded.get("net"), Mapping) or any("qkv_transform" in str(key) for key in loaded):
        state_dict, extra = from_official(loaded), {"source_format": "official"}
    else:
        nested = next((loaded[key] for key in ("model", "state_dict") if isinstance(loaded.get(key), Mapping)), None)
        state_dict = dict(nested if nested is not None else loaded)
    if not state_dict or not all(torch.is_tensor(value) for value in state_dict.values()):
        raise ValueError(f"{name}: holds no state dict of tensors")
    return _strip_prefix(_strip_prefix(state_dict, "module."), "_orig_mod."), extra


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` did, by state-dict key."""

    loaded: tuple[str, ...]
    kept_init: tuple[str, ...]  # the model's own keys the weights lacked or did not fit, left as initialised
    skipped: tuple[str, ...]  # keys of the weights the model has no place for

    def summary(self) -> str:
        """``loaded N, kept initialisation M (a, b, ...), skipped K``: one log line."""
        kept = f" ({_shown(self.kept_init)})" if self.kept_init else ""
        return (f"loaded {len(self.loaded)}, kept initialisation {len(self.kept_init)}{kept}, "
                f"skipped {len(self.skipped)}")


def _shown(keys: Sequence[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(
    model: nn.Module,
    source: str | Path | Mapping[str, Any],
    *,
    keep_init: Callable[[str], bool] | None = None,
    skip_unexpected: bool = False,
    name: str | None = None,
) -> LoadReport:
    """Load weights (anything :func:`read_weights` reads) into ``model``: the one state-dict loader.

    Strict by default: every key of the model must come with the right shape and nothing else may come.

    Args:
        model: receives the weights (DDP and ``torch.compile`` wrappers are unwrapped).
        source: a file, or its loaded contents.
        keep_init: model keys for which this is true may be missing or mis-shaped and keep their initialisation
            (e.g. position tables sized for another input).
        skip_unexpected: ignore keys the model has no place for (e.g. a classifier head under a backbone).
        name: what error messages call ``source`` (default: its path, or "checkpoint").

    Raises:
        ValueError: the weights do not fit; the message names ``source`` and the first missing, unexpected and
            mis-shaped keys.
    """
    name = name or (str(source) if isinstance(source, str | Path) else "checkpoint")
    state_dict, extra = read_weights(source)
    target = unwrap_model(model)
    expected = target.state_dict()
    loadable, kept, missing, reshaped = {}, [], [], []
    for key, value in expected.items():
        given = state_dict.get(key)
        if given is not None and given.shape == value.shape:
            loadable[key] = given
        elif keep_init is not None and keep_init(key):
            kept.append(key)
        elif given is None:
            missing.append(key)
        else:
            reshaped.append(f"{key} {tuple(given.shape)} vs {tuple(value.shape)}")
    unexpected = [key for key in state_dict if key not in expected]
    problems = [f"{label} {_shown(items)}" for label, items in (
        ("missing", missing), ("unexpected", [] if skip_unexpected else unexpected),
        ("shape mismatch (checkpoint vs model)", reshaped)) if items]
    if problems:
        hint = (" (an official checkpoint: build the model with its architecture and pos_embed='flat1d', "
                "sim_norm='bn', fusion='gate')" if extra.get("source_format") == "official" else "")
        raise ValueError(f"{name}: weights do not fit {type(target).__name__}: {'; '.join(problems)}{hint}")
    target.load_state_dict(loadable, strict=not kept)
    return LoadReport(tuple(loadable), tuple(kept), tuple(unexpected))


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
    load_weights(model, checkpoint, name=str(path))
    for name, stateful in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler), ("ema", ema)):
        if stateful is not None and checkpoint[name] is not None:
            stateful.load_state_dict(checkpoint[name])
    if restore_rng:
        set_rng_states(checkpoint["rng"])
    return checkpoint
