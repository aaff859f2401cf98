"""Mask R-CNN (torchvision) with a LESA-ResNet FPN backbone, and the conv and SA baselines.

The backbone uses the detection geometry (stage 4 at stride 2, so FPN levels at strides 4..32) and
``rel2d`` positions, so any image size and aspect ratio works. A pretrained backbone gets frozen
BatchNorm and torchvision's ``trainable_backbone_layers`` semantics; an ImageNet classification
checkpoint (ours, a bare state dict, or the official code's) loads into it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..engine.checkpoint import load_weights
from ..layers import LesaAttention
from ..models import MODEL_CFGS, LesaResNet, with_detection_strides

logger = logging.getLogger(__name__)

_LAYER_GEOMETRY = ("dim", "dim_out", "stride", "feat_size")
LESA_OPTION_NAMES = frozenset(p for p in inspect.signature(LesaAttention).parameters if p not in _LAYER_GEOMETRY)
# parts of a LESA layer whose shape depends on the position encoding, not the architecture
_POSITION_DEPENDENT = ("context_term.rel_", "context_term.sim_bn.", "context_term.out_norm.")
_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


def load_backbone_weights(backbone: LesaResNet, checkpoint: Mapping[str, Any] | str | Path) -> None:
    """Loads an ImageNet classification checkpoint into ``backbone`` (the classifier is dropped).

    Position tables and the logit/output norms of the context term that do not fit (another
    ``pos_embed`` or size) keep their fresh initialisation, and a log line names them. Any other
    missing or mis-shaped weight means another architecture: ValueError naming the keys.
    """
    if isinstance(checkpoint, str | Path) and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"backbone_weights: no checkpoint file at {checkpoint}")
    report = load_weights(backbone, checkpoint, keep_init=lambda key: any(part in key for part in _POSITION_DEPENDENT),
                          skip_unexpected=True)
    logger.info("backbone_weights %s: %s", checkpoint if isinstance(checkpoint, str | Path) else "checkpoint",
                report.summary())


def lesa_resnet_fpn_backbone(
    arch: str = "lesa_resnet50",
    *,
    backbone_weights: Mapping[str, Any] | str | Path | None = None,
    trainable_layers: int = 3,
    fpn_channels: int = 256,
    img_size: int = 224,
    **lesa_options: Any,
) -> BackboneWithFPN:
    """A LesaResNet (detection strides) + FPN over layer1..layer4 with a max-pool P6.

    Args:
        arch: a model of :data:`lesa_core.models.MODEL_CFGS` (LESA, SA or conv placement).
        backbone_weights: ImageNet checkpoint (path or loaded); BN is then frozen.
        trainable_layers: with weights, how many of layer4, layer3, layer2, layer1, conv1 train.
        fpn_channels: FPN output channels.
        img_size: sizes the rel2d position tables (any input size works; 224 matches ImageNet ones).
        **lesa_options: LESA options; ``pos_embed`` must stay ``rel2d``.
    """
    if arch not in MODEL_CFGS:
        raise ValueError(f"arch={arch!r} is not one of {sorted(MODEL_CFGS)}")
    if lesa_options.get("pos_embed", "rel2d") != "rel2d":
        raise ValueError("detection needs any input size: pos_embed must be 'rel2d'")
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_backbone_layers={trainable_layers} must be in 0..5")
    backbone = LesaResNet(with_detection_strides(MODEL_CFGS[arch]), num_classes=0, img_size=img_size, **lesa_options)
    if backbone_weights is not None:
        load_backbone_weights(backbone, backbone_weights)
        backbone = freeze_batch_norm_2d(backbone)
        train_prefixes = _TRAINABLE_ORDER[:trainable_layers] + (("bn1",) if trainable_layers == 5 else ())
        for name, parameter in backbone.named_parameters():
            parameter.requires_grad_(name.startswith(train_prefixes))
    stages = backbone.feature_info[1:]  # layer1..layer4
    return BackboneWithFPN(
        backbone,
        return_layers={info["module"]: str(i) for i, info in enumerate(stages)},
        in_channels_list=[info["num_chs"] for info in stages],
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def light_heads(
    fpn_channels: int, num_classes: int, *, representation_size: int = 256, mask_channels: int = 128
) -> dict[str, nn.Module]:
    """Smaller box and mask heads with their predictors, as builder kwargs (small images, CPU training)."""
    return {
        "box_head": TwoMLPHead(fpn_channels * 7 * 7, representation_size),
        "box_predictor": FastRCNNPredictor(representation_size, num_classes),
        "mask_head": MaskRCNNHeads(fpn_channels, [mask_channels] * 4, 1),
        "mask_predictor": MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
    }


def maskrcnn_lesa_fpn(
    arch: str = "lesa_resnet50",
    *,
    num_classes: int,
    backbone_weights: Mapping[str, Any] | str | Path | None = None,
    trainable_backbone_layers: int = 3,
    min_size: int = 800,
    max_size: int = 1333,
    fpn_channels: int = 256,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN on ``arch`` (LESA, SA or conv placement).

    Args:
        arch: backbone placement, a name of :data:`lesa_core.models.MODEL_CFGS`.
        num_classes: object classes + 1 for the background.
        backbone_weights: ImageNet checkpoint for the backbone; without it everything trains.
        trainable_backbone_layers: with weights, how many backbone stages train (torchvision's meaning).
        min_size, max_size: torchvision's resize of the shorter / longer image side.
        fpn_channels: FPN width.
        **kwargs: LESA options (``num_heads``, ``fusion``, ...; ``img_size`` sizes the position tables)
            and MaskRCNN keywords (``rpn_*``, ``box_*``, heads from :func:`light_heads`, ...).
    """
    lesa_options = {k: kwargs.pop(k) for k in list(kwargs) if k in LESA_OPTION_NAMES or k == "img_size"}
    if backbone_weights is None:
        trainable_backbone_layers = 5  # nothing pretrained: everything trains, as in torchvision
    backbone = lesa_resnet_fpn_backbone(
        arch, backbone_weights=backbone_weights, trainable_layers=trainable_backbone_layers,
        fpn_channels=fpn_channels, **lesa_options,
    )
    # torchvision wants num_classes=None when the predictors are given
    head_classes = None if "box_predictor" in kwargs else num_classes
    return MaskRCNN(backbone, num_classes=head_classes, min_size=min_size, max_size=max_size, **kwargs)


def maskrcnn_lesa_resnet50_fpn(*, num_classes: int, **kwargs: Any) -> MaskRCNN:
    """Mask R-CNN + LESA-ResNet-50 FPN (the paper's 44.2 box / 39.6 mask AP model)."""
    return maskrcnn_lesa_fpn("lesa_resnet50", num_classes=num_classes, **kwargs)


def maskrcnn_sa_resnet50_fpn(*, num_classes: int, **kwargs: Any) -> MaskRCNN:
    """Mask R-CNN + SA-ResNet-50 FPN: the self-attention baseline."""
    return maskrcnn_lesa_fpn("sa_resnet50", num_classes=num_classes, **kwargs)


def maskrcnn_conv_resnet50_fpn(*, num_classes: int, **kwargs: Any) -> MaskRCNN:
    """Mask R-CNN + ResNet-50 FPN built by the same code: the convolution baseline."""
    return maskrcnn_lesa_fpn("conv_resnet50_s16", num_classes=num_classes, **kwargs)
