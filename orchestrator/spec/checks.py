"""The checks of a job spec that consult ``lesa_core``, run once its schema has validated.

``loading.parse_spec`` runs them wherever a spec enters the system (``validate`` and ``submit``, the driver, the
workers), before anything is recorded: the metrics fit the task, the arch is a registered model, the model builds
on the meta device from the config the workers build it from (and a classifier takes the data's crop size), a local
data root holds the task's layout, and every value a search can give a trial passes the same checks. ``eval.metric``
is resolved here. A search's trial actor re-reads a spec that passed them and skips them, so it never imports
``lesa_core`` (which loads timm: seconds of every trial's start-up).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path

import torch
from torch import nn

from lesa_core import tasks
from lesa_core.engine.optim import OptimConfig
from lesa_core.metrics import names
from lesa_core.models import LESA_MODEL_NAMES

from .schema import DetectorOptions, JobSpec, LesaOptions
from .search import check_search

# what lesa_core, timm and torchvision raise for options that do not fit the architecture
BUILD_ERRORS = (ValueError, AssertionError, RuntimeError, TypeError)
# the class count comes from the data and sizes only the heads; any count builds the same network
_PROBE_CLASSES = 2
_NAMED_OPTION = re.compile(r"\b([a-z_][a-z0-9_]*)=")


def task_config(spec: JobSpec) -> tasks.TaskConfig:
    """The spec as lesa_core's plain task config: what the workers train and what validation builds."""
    model, data, schedule = spec.model, spec.data, spec.schedule
    optim = OptimConfig(
        epochs=schedule.epochs, optimizer=schedule.optimizer, lr=schedule.lr,
        lr_reference_batch=schedule.lr_reference_batch, momentum=schedule.momentum, nesterov=schedule.nesterov,
        weight_decay=schedule.weight_decay, warmup_epochs=schedule.warmup_epochs, decay=schedule.decay,
        milestones=tuple(schedule.milestones), gamma=schedule.gamma, grad_clip=schedule.grad_clip,
    )
    return tasks.TaskConfig(
        task=spec.task,
        model=tasks.ModelConfig(arch=model.arch, img_size=model.img_size, pretrained=model.pretrained,
                                lesa=model.lesa.model_dump(),
                                detector=tasks.DetectorConfig(**model.detector.model_dump())),
        data=tasks.DataConfig(root=data.root, batch_size=schedule.batch_size_per_worker, workers=data.workers,
                              train_split=data.train_split, val_split=data.val_split, img_size=data.img_size,
                              crop_scale=tuple(data.crop_scale), auto_augment=data.auto_augment),
        optim=optim, eval_every=spec.eval.every_epochs, amp=schedule.amp, seed=schedule.seed,
    )


def check_spec(spec: JobSpec) -> JobSpec:
    """The spec with ``eval.metric`` resolved, once its metrics, model, data and search are known to fit its task.

    Raises:
        ValueError: one line that starts with the field at fault (``model: ...`` for what the model builder says).
    """
    reported = names.REPORTED_METRICS[spec.task]
    if spec.eval.metric is not None and spec.eval.metric not in reported:
        raise ValueError(f"eval.metric={spec.eval.metric!r} is never reported by a {spec.task} job; "
                         f"choose one of {', '.join(reported)}")
    check_job = JobChecks()
    check_job(spec)
    check_search(spec, check_job)
    if spec.eval.metric is None:
        resolved = spec.eval.model_copy(update={"metric": names.primary_metric(spec.task)})
        spec = spec.model_copy(update={"eval": resolved})
    return spec


class JobChecks:
    """The checks a job passes beyond its schema and metrics: its arch is registered, its model builds on the meta
    device from the workers' config (and a classifier runs on the data's crops), its local data root fits the task.

    Called on a job and on every probed trial of its search, it builds each distinct model config once and runs each
    distinct geometry once. Raises ValueError naming the field at fault.
    """

    def __init__(self) -> None:
        self._built: dict[str, nn.Module | str] = {}
        self._ran: dict[tuple[str, int, str, int], str | None] = {}

    def __call__(self, spec: JobSpec) -> None:
        arch = spec.model.arch
        if arch not in LESA_MODEL_NAMES:
            match = difflib.get_close_matches(arch, LESA_MODEL_NAMES, n=1, cutoff=0.6)
            hint = f"did you mean {match[0]!r}?" if match else f"choose one of {', '.join(LESA_MODEL_NAMES)}"
            raise ValueError(f"model.arch={arch!r} is not a registered model; {hint}")
        model = self._build(spec)
        if spec.task == "classification":  # detection takes images of any size (rel2d only, as the schema says)
            self._run(spec, model)
        _check_data_layout(spec)

    def _build(self, spec: JobSpec) -> nn.Module:
        config = task_config(spec)
        # the workers load the pretrained weights; which checkpoint it is changes nothing that is built
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, pretrained=None))
        key = f"{spec.task} {config.model!r}"
        if key not in self._built:
            try:
                with torch.device("meta"):
                    self._built[key] = tasks.build_model(config, _PROBE_CLASSES)
            except BUILD_ERRORS as error:
                self._built[key] = (f"model: {_named_field(spec, str(error))}does not build {spec.model.arch}: "
                                    f"{_first_line(error)}")
        built = self._built[key]
        if isinstance(built, str):
            raise ValueError(built)
        return built

    def _run(self, spec: JobSpec, model: nn.Module) -> None:
        """A forward pass on a meta image of the train and eval crop size, ``data.img_size``."""
        # every LESA option but the position encoding keeps the map sizes, so one run per geometry tells
        key = (spec.model.arch, spec.model.img_size, spec.model.lesa.pos_embed, spec.data.img_size)
        if key not in self._ran:
            self._ran[key] = None
            try:
                with torch.no_grad():
                    model.eval()(torch.empty(1, 3, spec.data.img_size, spec.data.img_size, device="meta"))
            except BUILD_ERRORS as error:
                self._ran[key] = (f"model: {spec.model.arch} built for model.img_size={spec.model.img_size} does "
                                  f"not run on data.img_size={spec.data.img_size} crops: {_first_line(error)}")
        if self._ran[key] is not None:
            raise ValueError(self._ran[key])


def _named_field(spec: JobSpec, message: str) -> str:
    """``model.lesa.num_heads=3 `` for the first LESA or detector option the builder's message names, else ``""``."""
    for option in _NAMED_OPTION.findall(message):
        for section, fields in (("lesa", LesaOptions.model_fields), ("detector", DetectorOptions.model_fields)):
            if option in fields:
                value = getattr(getattr(spec.model, section), option)
                return f"model.{section}.{option}={value!r} "
    return ""


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _check_data_layout(spec: JobSpec) -> None:
    """A data root on this machine holds the folders the task reads (elsewhere, or not yet generated: nothing to
    look at here; ``service.validate`` checks that a local one exists)."""
    data = spec.data
    root = Path(data.root).expanduser()
    if "://" in data.root or not root.exists():
        return
    if data.format == "imagenet":
        needed = ["train", "val"]
    else:
        splits = (data.train_split or "train", data.val_split or "val")
        needed = [path for split in splits for path in (f"annotations/instances_{split}2017.json", f"{split}2017")]
    missing = [path for path in needed if not (root / path).exists()]
    if missing:
        raise ValueError(f"data.root: {data.root} has no {', '.join(missing)}; a {data.format} root holds "
                         f"{', '.join(needed)}")
