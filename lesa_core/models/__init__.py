"""LESA-ResNet models; importing this registers them with timm."""

from .convert import from_official
from .registry import LESA_MODEL_NAMES, MODEL_CFGS
from .resnet import Bottleneck, LesaResNet, LesaResNetCfg, with_detection_strides

__all__ = [
    "LESA_MODEL_NAMES",
    "MODEL_CFGS",
    "Bottleneck",
    "LesaResNet",
    "LesaResNetCfg",
    "from_official",
    "with_detection_strides",
]
