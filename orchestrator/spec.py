"""The job spec: one YAML file per job, validated by pydantic, with ``--set a.b=c`` overrides.

``load_spec(path, overrides)`` is the one place a job file is parsed: safe YAML load, ``${VAR}`` and
``${VAR:-default}`` interpolation, overrides on dotted paths checked against the schema, validation
with unknown keys rejected. Every failure is a :class:`SpecError` whose message is one line naming the
file and the field path (with the closest valid key for a typo).
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CLASSIFICATION_METRICS = ("val/acc1", "val/acc5", "val/loss", "train/loss")
COCO_METRICS = tuple(
    f"coco/{kind}_mAP{suffix}" for kind in ("bbox", "segm") for suffix in ("", "_50", "_75", "_s", "_m", "_l")
)
TASK_METRICS = {"classification": CLASSIFICATION_METRICS, "detection": (*COCO_METRICS, "train/loss")}
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|credential|api_?key|access_?key", re.IGNORECASE)
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SpecError(ValueError):
    """A job spec problem; the message is one line naming the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LesaOptions(_Section):
    """LESA layer options (see lesa_core.layers.LesaAttention); every one is an HPO dimension."""

    num_heads: int = Field(8, ge=1)
    qk_ratio: float = Field(0.5, gt=0)
    unary_kernel: int = Field(3, ge=1)
    unary_dilation: int = Field(1, ge=1)
    pos_embed: Literal["rel2d", "flat1d"] = "rel2d"
    sim_norm: Literal["bn", "scaled"] = "bn"
    fusion: Literal["gate", "add", "gate_both", "none"] = "gate"
    fusion_shrink: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _odd_kernel(self) -> LesaOptions:
        if self.unary_kernel % 2 == 0:
            raise ValueError(f"unary_kernel={self.unary_kernel} must be odd")
        return self


class DetectorOptions(_Section):
    """Mask R-CNN settings (detection only)."""

    min_size: int = Field(800, ge=32)
    max_size: int = Field(1333, ge=32)
    fpn_channels: int = Field(256, ge=8)
    light_heads: bool = False
    trainable_backbone_layers: int = Field(3, ge=0, le=5)
    # torchvision MaskRCNN sampling sizes; None keeps torchvision's default
    rpn_pre_nms_top_n_train: int | None = Field(None, ge=1)
    rpn_post_nms_top_n_train: int | None = Field(None, ge=1)
    rpn_pre_nms_top_n_test: int | None = Field(None, ge=1)
    rpn_post_nms_top_n_test: int | None = Field(None, ge=1)
    box_batch_size_per_image: int | None = Field(None, ge=1)
    box_detections_per_img: int | None = Field(None, ge=1)

    def maskrcnn_kwargs(self) -> dict[str, int]:
        """The sampling sizes that are set, as torchvision MaskRCNN keywords."""
        names = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                 "rpn_post_nms_top_n_test", "box_batch_size_per_image", "box_detections_per_img")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class ModelSection(_Section):
    arch: str = "lesa_resnet50"
    img_size: int = Field(224, ge=32, description="construction input size (sizes position tables)")
    pretrained: str | None = Field(None, description="checkpoint to start from (detection: backbone weights)")
    lesa: LesaOptions = LesaOptions()
    detector: DetectorOptions = DetectorOptions()


class SyntheticData(_Section):
    """Size of the dataset generated on first use when ``data.generate`` is set."""

    num_train: int = Field(800, ge=1)
    num_val: int = Field(100, ge=1)
    image_size: int = Field(128, ge=32)
    seed: int = 0


class DataSection(_Section):
    root: str
    format: Literal["coco", "imagenet"]
    train_split: str | None = None
    val_split: str | None = None
    generate: bool = Field(False, description="write the generated quickstart dataset at root if it is missing")
    synthetic: SyntheticData = SyntheticData()
    workers: int = Field(2, ge=0)
    img_size: int = Field(224, ge=16, description="classification crop size")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="classification random-resized-crop area range")
    auto_augment: str | None = Field(None, description="timm RandAugment string, e.g. rand-m9-mstd0.5")


class ScheduleSection(_Section):
    epochs: int = Field(ge=1)
    batch_size_per_worker: int = Field(ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(gt=0, description="learning rate at lr_reference_batch images per step")
    lr_reference_batch: int = Field(ge=1, description="lr scales linearly with the global batch over this")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    decay: Literal["cosine", "step"] = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(None, gt=0)
    amp: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _milestones_inside_schedule(self) -> ScheduleSection:
        if self.decay == "step" and not self.milestones:
            raise ValueError("decay='step' needs milestones (epochs at which lr is multiplied by gamma)")
        outside = [m for m in self.milestones if not 0 < m <= self.epochs]
        if outside:
            raise ValueError(f"milestones {outside} are outside 1..{self.epochs} epochs")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} exceeds epochs={self.epochs}")
        return self


class EvalSection(_Section):
    every_epochs: int = Field(1, ge=1)
    metric: str | None = Field(None, description="primary metric; default val/acc1 or coco/bbox_mAP")
    mode: Literal["max", "min"] = "max"


class ResourcesSection(_Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float | None = Field(None, ge=0, description="default 1 when use_gpu")


class FaultToleranceSection(_Section):
    max_failures: int = Field(1, ge=-1, description="worker-group restarts from the last checkpoint; -1 = forever")


class StorageSection(_Section):
    path: str | None = Field(None, description="Ray Train storage, local or s3://; default <home>/ray_results")
    keep_checkpoints: int | None = Field(
        None, ge=1,
        description="best checkpoints kept by the primary metric; None keeps all. Pruning is opt-in because Ray "
        "Train 2.60 cannot restore a run whose driver died just after it pruned a checkpoint",
    )


class TrackingSection(_Section):
    experiment: str | None = Field(None, description="default lesa/<dataset>/<task>")
    register_model: bool = True
    model_name: str | None = Field(None, description="default lesa-<task>-<arch>")
    tags: dict[str, str] = {}


class JobSpec(_Section):
    """A LESA training job."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    task: Literal["classification", "detection"]
    model: ModelSection = ModelSection()
    data: DataSection
    schedule: ScheduleSection
    eval: EvalSection = EvalSection()
    resources: ResourcesSection = ResourcesSection()
    fault_tolerance: FaultToleranceSection = FaultToleranceSection()
    storage: StorageSection = StorageSection()
    tracking: TrackingSection = TrackingSection()

    @model_validator(mode="after")
    def _consistent_with_task(self) -> JobSpec:
        expected_format = "coco" if self.task == "detection" else "imagenet"
        if self.data.format != expected_format:
            raise ValueError(
                f"data.format={self.data.format!r} does not fit task={self.task!r} (use {expected_format!r})"
            )
        if self.task == "detection" and self.model.lesa.pos_embed != "rel2d":
            raise ValueError("model.lesa.pos_embed must be 'rel2d' for detection (images of any size)")
        if self.eval.metric is not None and self.eval.metric not in TASK_METRICS[self.task]:
            raise ValueError(
                f"eval.metric={self.eval.metric!r} is never reported by a {self.task} job; "
                f"choose one of {', '.join(TASK_METRICS[self.task])}"
            )
        return self

    @property
    def primary_metric(self) -> str:
        return self.eval.metric or ("coco/bbox_mAP" if self.task == "detection" else "val/acc1")

    @property
    def dataset_name(self) -> str:
        return self.data.format if not self.data.generate else f"synthetic_{self.data.format}"

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or f"lesa/{self.dataset_name}/{self.task}"

    @property
    def registered_model_name(self) -> str:
        return self.tracking.model_name or f"lesa-{self.task}-{self.model.arch}"

    @property
    def global_batch_size(self) -> int:
        return self.schedule.batch_size_per_worker * self.resources.num_workers

    @property
    def scaled_lr(self) -> float:
        """lr after linear scaling to the global batch."""
        return self.schedule.lr * self.global_batch_size / self.schedule.lr_reference_batch


def _interpolate(value: Any, path: str, source: str) -> Any:
    """Replaces ``${VAR}`` / ``${VAR:-default}`` in every string of ``value``, recursively."""
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), source) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise SpecError(f"{source}: {path}: environment variable {name} is not set and has no default")

    return _ENV_REFERENCE.sub(substitute, value)


def _section_fields(model: type[BaseModel]) -> dict[str, Any]:
    return dict(model.model_fields)


def _field_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(options)}"


def apply_override(raw: dict[str, Any], override: str, source: str = "job spec") -> None:
    """Sets ``a.b=c`` in the raw spec dict; the path must exist in the schema; ``c`` is parsed as YAML."""
    try:
        _apply_override(raw, override)
    except SpecError as error:
        raise SpecError(f"{source}: {error}") from None


def _apply_override(raw: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise SpecError(f"--set {override}: expected KEY=VALUE with a dotted KEY such as schedule.epochs=3")
    path, text = override.split("=", 1)
    parts = path.strip().split(".")
    model: type[BaseModel] | None = JobSpec
    node = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if model is None:  # inside a free-form mapping (tracking.tags)
            if not last:
                raise SpecError(f"--set {override}: {'.'.join(parts[:depth])} holds plain values")
        else:
            fields = _section_fields(model)
            if part not in fields:
                where = ".".join(parts[:depth]) or "the job spec"
                raise SpecError(f"--set {override}: no field '{part}' in {where}{_closest(part, list(fields))}")
            annotation = fields[part].annotation
            model = _field_model(annotation)
            if model is None and not last and typing.get_origin(annotation) is not dict:
                raise SpecError(f"--set {override}: {'.'.join(parts[:depth + 1])} is a value, not a section")
        if last:
            try:
                node[part] = yaml.safe_load(text)
            except yaml.YAMLError as error:
                raise SpecError(f"--set {override}: the value is not valid YAML ({error.problem})") from None
            return
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"--set {override}: {'.'.join(parts[:depth + 1])} is not a section in the file")
        node = child


def _format_validation_error(error: ValidationError, source: str) -> str:
    # a typo makes both an unknown key and a missing field; the unknown key (with its suggestion) says more
    problems = error.errors()
    first = next((problem for problem in problems if problem["type"] == "extra_forbidden"), problems[0])
    location = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        model: type[BaseModel] | None = JobSpec
        for part in first["loc"][:-1]:
            model = _field_model(_section_fields(model)[part].annotation) if model else None
        options = list(_section_fields(model)) if model else []
        return f"{source}: {location}: unknown key{_closest(str(first['loc'][-1]), options)}"
    message = first["msg"].removeprefix("Value error, ")
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source}: {location or 'spec'}: {message}{more}"


def parse_spec(raw: Any, *, source: str = "job spec", overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Validates an already-loaded mapping (with overrides and interpolation) into a JobSpec."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a job spec must be a mapping of sections, got {type(raw).__name__}")
    raw = dict(raw)
    for override in overrides:
        apply_override(raw, override, source)
    raw = _interpolate(raw, "", source)
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(_format_validation_error(error, source)) from None


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Reads, interpolates, overrides and validates a job YAML file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such job file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: invalid YAML{where}: {getattr(error, 'problem', error)}") from None
    return parse_spec(raw, source=str(path), overrides=overrides)


def flatten_params(spec: JobSpec) -> dict[str, str]:
    """The spec as dotted ``section.key`` -> string, with values of secret-looking keys redacted."""
    flat: dict[str, str] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        elif _SECRET_KEY.search(prefix.rsplit(".", 1)[-1]):
            flat[prefix] = "***"
        else:
            flat[prefix] = "" if value is None else str(value)

    walk(spec.model_dump(mode="json"), "")
    return flat


def spec_json_schema() -> dict[str, Any]:
    """JSON schema of the job spec (editor completion and `lesa-orch schema`)."""
    return JobSpec.model_json_schema()
