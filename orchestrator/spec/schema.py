"""The job spec schema: one frozen pydantic section per top-level key, unknown keys rejected, and JobSpec.

Rules within the spec live in the validators; that every trial of a search makes a valid job is checked by
:mod:`orchestrator.spec.search` when a spec is loaded.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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
    # widths of the light heads: the box head's two FC layers and the mask head's four 3x3 convs
    box_head_width: int | None = Field(None, ge=8)
    mask_head_channels: int | None = Field(None, ge=8)
    trainable_backbone_layers: int = Field(3, ge=0, le=5)
    # torchvision MaskRCNN sampling sizes; None keeps torchvision's default
    rpn_pre_nms_top_n_train: int | None = Field(None, ge=1)
    rpn_post_nms_top_n_train: int | None = Field(None, ge=1)
    rpn_pre_nms_top_n_test: int | None = Field(None, ge=1)
    rpn_post_nms_top_n_test: int | None = Field(None, ge=1)
    box_batch_size_per_image: int | None = Field(None, ge=1)
    box_detections_per_img: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _sizes_and_widths_fit(self) -> DetectorOptions:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size={self.min_size} exceeds max_size={self.max_size} (the shorter image side "
                             "is resized to min_size unless the longer one would pass max_size)")
        given = [name for name in ("box_head_width", "mask_head_channels") if getattr(self, name) is not None]
        if given and not self.light_heads:
            raise ValueError(f"{given[0]} sizes the light heads; set light_heads: true or drop it")
        return self


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

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_is_an_area_range(cls, scale: tuple[float, float]) -> tuple[float, float]:
        low, high = scale
        if not 0 < low <= 1 or not 0 < high <= 1:
            raise ValueError(f"[{low:g}, {high:g}]: both ends are fractions of the image area, in (0, 1]")
        if low > high:
            raise ValueError(f"[{low:g}, {high:g}] must be ordered [low, high]")
        return scale


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
        description="best checkpoints kept by their score (the primary metric at evaluated epochs) besides the "
        "latest; None keeps all. Pruning is opt-in because Ray Train 2.60 cannot restore a run whose driver died just "
        "after it pruned a checkpoint",
    )


class TrackingSection(_Section):
    experiment: str | None = Field(None, description="default lesa/<dataset>/<task>")
    register_model: bool = True
    model_name: str | None = Field(None, description="default lesa-<task>-<arch>")
    tags: dict[str, str] = {}


class SearchDimension(_Section):
    """One searched field: ``choice`` of ``values``, or a ``uniform`` / ``loguniform`` / ``int`` / ``quantized``
    range from ``low`` to ``high`` (inclusive; ``q`` is the step of ``quantized`` and, optionally, of ``int``)."""

    type: Literal["choice", "uniform", "loguniform", "int", "quantized"]
    values: list[str | int | float | bool | None] | None = None
    low: float | None = None
    high: float | None = None
    q: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _well_formed(self) -> SearchDimension:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty list of values")
            if self.low is not None or self.high is not None or self.q is not None:
                raise ValueError("a choice takes values, not low/high/q")
            if len(set(map(repr, self.values))) != len(self.values):
                raise ValueError(f"choice values {self.values} repeat")
            return self
        if self.values is not None:
            raise ValueError(f"a {self.type} range takes low and high, not values")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} range needs both low and high")
        if self.low >= self.high:
            raise ValueError(f"low={self.low:g} must be below high={self.high:g}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"a loguniform range needs low > 0, got {self.low:g}")
        if self.type == "quantized" and self.q is None:
            raise ValueError("a quantized range needs its step q")
        if self.type == "int" and not (self.low.is_integer() and self.high.is_integer()
                                       and (self.q is None or self.q.is_integer())):
            raise ValueError("an int range needs whole numbers for low, high and q")
        if self.type == "uniform" and self.q is not None:
            raise ValueError("q belongs to quantized or int ranges; use type: quantized")
        if self.q is not None and self.q > self.high - self.low:
            raise ValueError(f"step q={self.q:g} is wider than the range {self.low:g}..{self.high:g}")
        return self

    def grid_points(self) -> list[Any] | None:
        """Every value, for a grid search; None for a continuous range."""
        if self.type == "choice":
            return list(self.values or [])
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.q or 1)))
        return None


class Objective(_Section):
    metric: str
    mode: Literal["max", "min"] = "max"


class SamplerOptions(_Section):
    type: Literal["tpe", "cmaes", "random", "grid"] = "tpe"
    seed: int = 0


class SchedulerOptions(_Section):
    """ASHA early stopping, counted in epochs (``fifo`` runs every trial to the end)."""

    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1)
    max_epochs: int | None = Field(None, ge=1, description="default schedule.epochs")


class HpoSection(_Section):
    """A search over spec fields by dotted path, with Ray Tune + Optuna."""

    space: dict[str, SearchDimension]
    objectives: list[Objective] = Field(
        default_factory=list, max_length=2,
        description="one or two; default the primary eval metric. With two, the study keeps a Pareto front and "
        "ASHA stops on the first",
    )
    sampler: SamplerOptions = SamplerOptions()
    scheduler: SchedulerOptions = SchedulerOptions()
    num_samples: int = Field(10, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: what the cluster fits")
    storage: str | None = Field(None, description="Optuna storage URL; default LESA_ORCH_OPTUNA_URL or "
                                "sqlite:///<home>/optuna.db")

    @model_validator(mode="after")
    def _sampler_fits_space(self) -> HpoSection:
        if not self.space:
            raise ValueError("space is empty: name at least one field to search, e.g. model.lesa.fusion")
        if self.sampler.type == "grid":
            continuous = [path for path, dim in self.space.items() if dim.grid_points() is None]
            if continuous:
                raise ValueError(f"sampler 'grid' needs choice or int dimensions; {', '.join(continuous)} "
                                 "are continuous")
        if self.sampler.type == "cmaes" and len(self.objectives) > 1:
            raise ValueError("sampler 'cmaes' optimises one objective; use 'tpe' or 'random' for two")
        return self

    def grid_size(self) -> int:
        size = 1
        for dimension in self.space.values():
            size *= len(dimension.grid_points() or [])
        return size


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
    hpo: HpoSection | None = None

    @model_validator(mode="after")
    def _consistent_with_task(self) -> JobSpec:
        expected_format = "coco" if self.task == "detection" else "imagenet"
        if self.data.format != expected_format:
            raise ValueError(
                f"data.format={self.data.format!r} does not fit task={self.task!r} (use {expected_format!r})"
            )
        if self.task == "detection" and self.model.lesa.pos_embed != "rel2d":
            raise ValueError("model.lesa.pos_embed must be 'rel2d' for detection (images of any size)")
        split = next((name for name in ("train_split", "val_split") if getattr(self.data, name)), None)
        if self.task == "classification" and split:
            raise ValueError(f"data.{split} names a COCO split; a classification job reads <data.root>/train and "
                             "<data.root>/val")
        return self

    @property
    def objectives(self) -> list[Objective]:
        """What a search optimises: ``hpo.objectives``, or the primary metric."""
        if self.hpo is not None and self.hpo.objectives:
            return list(self.hpo.objectives)
        return [Objective(metric=self.primary_metric, mode=self.eval.mode)]

    @property
    def primary_metric(self) -> str:
        """``eval.metric``, which :func:`~.loading.parse_spec` resolves to the task's default."""
        if self.eval.metric is None:
            raise ValueError("the spec was validated without its checks: load it with parse_spec or load_spec")
        return self.eval.metric

    @property
    def dataset_name(self) -> str:
        return self.data.format if not self.data.generate else f"synthetic_{self.data.format}"

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or f"lesa/{self.dataset_name}/{self.task}"

    @property
    def registered_model_name(self) -> str:
        return self.tracking.model_name or f"lesa-{self.task}-{self.model.arch}"


def spec_json_schema() -> dict[str, Any]:
    """JSON schema of the job spec (editor completion and `lesa-orch schema`)."""
    return JobSpec.model_json_schema()
