"""A task as a plain config: model, data, optimizer + schedule, evaluation cadence; and named presets.

The job spec of the orchestrator and the standalone trainer's command line both become a :class:`TaskConfig`;
:func:`lesa_core.tasks.build_task` turns one into the model, loaders and engine calls. Presets are data: the
official LESA ImageNet recipe, the paper's COCO schedule, and the two CPU quickstarts (the same values as
``jobs/quickstart_*.yaml`` with one worker).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..engine.optim import OPTIM_PRESETS, OptimConfig

# torchvision MaskRCNN sampling sizes a detector config may set; None keeps torchvision's default
MASKRCNN_SAMPLING = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                     "rpn_post_nms_top_n_test", "box_batch_size_per_image", "box_detections_per_img")


@dataclass(frozen=True)
class DetectorConfig:
    """Mask R-CNN around the backbone (detection only).

    Attributes:
        min_size, max_size: torchvision's resize of the shorter / longer image side.
        fpn_channels: FPN width.
        light_heads: smaller box and mask heads (:func:`lesa_core.detection.light_heads`), widths below.
        box_head_width, mask_head_channels: the light heads' box FC width and mask conv channels.
        trainable_backbone_layers: with pretrained weights, how many backbone stages train.
        rpn_* / box_*: torchvision MaskRCNN sampling sizes (:data:`MASKRCNN_SAMPLING`).
    """

    min_size: int = 800
    max_size: int = 1333
    fpn_channels: int = 256
    light_heads: bool = False
    box_head_width: int | None = None
    mask_head_channels: int | None = None
    trainable_backbone_layers: int = 3
    rpn_pre_nms_top_n_train: int | None = None
    rpn_post_nms_top_n_train: int | None = None
    rpn_pre_nms_top_n_test: int | None = None
    rpn_post_nms_top_n_test: int | None = None
    box_batch_size_per_image: int | None = None
    box_detections_per_img: int | None = None

    def maskrcnn_kwargs(self) -> dict[str, int]:
        """The sampling sizes that are set, as torchvision MaskRCNN keywords."""
        return {name: getattr(self, name) for name in MASKRCNN_SAMPLING if getattr(self, name) is not None}

    def light_head_widths(self) -> dict[str, int]:
        """The light heads' widths that are set, as :func:`lesa_core.detection.light_heads` keywords."""
        widths = {"representation_size": self.box_head_width, "mask_channels": self.mask_head_channels}
        return {name: value for name, value in widths.items() if value is not None}


@dataclass(frozen=True)
class ModelConfig:
    """The network: a registered arch (LESA, SA or conv placement), its LESA options, the detector around it.

    Attributes:
        arch: a timm name registered by ``lesa_core`` (``lesa_resnet50``, ``test_lesa_resnet``, ...).
        img_size: construction input size (sizes the position tables).
        pretrained: a checkpoint to start from (detection: the backbone's ImageNet weights).
        lesa: :class:`lesa_core.layers.LesaAttention` options (``num_heads``, ``sim_norm``, ...).
        detector: Mask R-CNN settings.
    """

    arch: str = "lesa_resnet50"
    img_size: int = 224
    pretrained: str | None = None
    lesa: Mapping[str, Any] = field(default_factory=dict)
    detector: DetectorConfig = DetectorConfig()


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they are batched and augmented.

    Attributes:
        root: an ImageNet-layout folder (classification) or a COCO-2017-layout one (detection).
        batch_size: images per process per step.
        workers: DataLoader processes.
        train_split, val_split: COCO split names (default ``train`` / ``val``).
        img_size: classification crop side.
        crop_scale: classification random-resized-crop area range.
        auto_augment: timm RandAugment string, e.g. ``rand-m9-mstd0.5``.
        color_jitter: colour jitter strength.
        mixup_alpha, cutmix_alpha: 0 turns each off.
        label_smoothing: 0 for plain cross-entropy.
        val_labels: labels file of a flat ImageNet val folder.
    """

    root: str
    batch_size: int = 32
    workers: int = 2
    train_split: str | None = None
    val_split: str | None = None
    img_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    auto_augment: str | None = None
    color_jitter: float | None = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0
    val_labels: str | None = None


@dataclass(frozen=True)
class TaskConfig:
    """Everything a training run of one task needs, with no Ray or MLflow in it.

    Attributes:
        task: ``classification`` or ``detection``.
        model, data, optim: the three parts.
        eval_every: evaluate after every this many epochs, and after the last.
        amp: bf16 autocast + channels_last on CUDA (no effect on CPU).
        seed: seeds Python, NumPy and torch before anything is built, and the data order.
        ema_decay: keep a ``timm.utils.ModelEmaV3`` with this decay (classification), or None.
    """

    task: Literal["classification", "detection"]
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    eval_every: int = 1
    amp: bool = True
    seed: int = 0
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        if self.task not in ("classification", "detection"):
            raise ValueError(f"task={self.task!r} is not 'classification' or 'detection'")
        if self.eval_every < 1:
            raise ValueError(f"eval_every={self.eval_every} must be at least 1")

    def evaluates_after(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` ends with an evaluation."""
        return (epoch + 1) % self.eval_every == 0 or epoch + 1 == self.optim.epochs


# one worker's share of jobs/quickstart_coco.yaml (whose 2 workers scale lr to the global batch of 8)
_QUICKSTART_DETECTOR = DetectorConfig(
    min_size=128, max_size=128, fpn_channels=32, light_heads=True, mask_head_channels=64,
    rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150, rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_test=100, box_batch_size_per_image=16, box_detections_per_img=20,
)

PRESETS: dict[str, TaskConfig] = {
    "lesa_imagenet": TaskConfig(
        task="classification", model=ModelConfig(arch="lesa_resnet50"),
        data=DataConfig(root="data/imagenet", batch_size=32, workers=8),  # 4 devices: the official batch of 128
        optim=OPTIM_PRESETS["lesa_imagenet"],
    ),
    "quickstart_imagenet": TaskConfig(
        # generated shape classes on a CPU: test_lesa_resnet at 64 px reaches >= 90% top-1 within minutes
        task="classification", model=ModelConfig(arch="test_lesa_resnet", img_size=64, lesa={"sim_norm": "scaled"}),
        data=DataConfig(root="data/quickstart_imagenet", batch_size=32, workers=1, img_size=64,
                        crop_scale=(0.5, 1.0)),
        optim=OptimConfig(epochs=8, optimizer="adamw", lr=2e-3, lr_reference_batch=32, weight_decay=0.05,
                          warmup_epochs=1, warmup_factor=0.0),
    ),
    "lesa_coco_20e": TaskConfig(
        task="detection", model=ModelConfig(arch="lesa_resnet50", lesa={"pos_embed": "rel2d"}),
        data=DataConfig(root="data/coco", batch_size=1, workers=4), optim=OPTIM_PRESETS["lesa_coco_20e"],
    ),
    "quickstart_coco": TaskConfig(
        task="detection",
        model=ModelConfig(arch="test_lesa_resnet", img_size=128, lesa={"sim_norm": "scaled"},
                          detector=_QUICKSTART_DETECTOR),
        data=DataConfig(root="data/quickstart_coco", batch_size=4, workers=0),
        optim=OptimConfig(epochs=38, optimizer="sgd", lr=0.02, lr_reference_batch=4, momentum=0.9,
                          weight_decay=1e-4, warmup_epochs=0.5, decay="cosine", grad_clip=5.0),
        eval_every=10,
    ),
}
# the generated datasets the quickstarts train on: (task, sizes) for lesa_core.data.synthetic
QUICKSTART_DATA = {"quickstart_coco": {"num_train": 800, "num_val": 100, "image_size": 128, "seed": 0},
                   "quickstart_imagenet": {"train_per_class": 80, "val_per_class": 20, "image_size": 64, "seed": 0}}
