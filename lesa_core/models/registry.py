"""timm entry points for LESA models and baselines: ``timm.create_model("lesa_resnet50")``.

LESA options pass through as keyword arguments, e.g.
``timm.create_model("lesa_resnet50", sim_norm="scaled", fusion="add")``. The official classification
configuration is ``pos_embed="flat1d", sim_norm="bn", fusion="gate"`` at 224x224.
"""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .resnet import LesaResNet, LesaResNetCfg

MODEL_CFGS: dict[str, LesaResNetCfg] = {
    "lesa_resnet50": LesaResNetCfg(),
    "lesa_resnet101": LesaResNetCfg(depths=(3, 4, 23, 3)),
    "lesa_wrn50": LesaResNetCfg(width_factor=2),
    "sa_resnet50": LesaResNetCfg(stage_blocks=("conv", "conv", "sa", "sa")),
    "conv_resnet50_s16": LesaResNetCfg(stage_blocks=("conv", "conv", "conv", "conv")),
    "test_lesa_resnet": LesaResNetCfg(depths=(1, 1, 2, 2), widths=(8, 16, 32, 64), stem_width=16),
}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (14, 14),
        "crop_pct": 0.875, "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1", "classifier": "fc",
        "paper_ids": "arXiv:2107.05637", "paper_name": "Locally Enhanced Self-Attention",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "lesa_resnet50.untrained": _cfg(),
    "lesa_resnet101.untrained": _cfg(),
    "lesa_wrn50.untrained": _cfg(),
    "sa_resnet50.untrained": _cfg(),
    "conv_resnet50_s16.untrained": _cfg(),
    "test_lesa_resnet.untrained": _cfg(input_size=(3, 128, 128), pool_size=(8, 8), crop_pct=0.95),
})


# one-line description of each variant: its entry point's docstring
DESCRIPTIONS: dict[str, str] = {
    "lesa_resnet50": "LESA-ResNet-50: LESA in stage 3 from block 2 and all of stage 4 (79.55 top-1 in the paper).",
    "lesa_resnet101": "LESA-ResNet-101: the ResNet-101 depths with the LESA-ResNet-50 placement.",
    "lesa_wrn50": "LESA-WRN-50: Wide-ResNet-50-2 widths with LESA (80.18 top-1 in the paper).",
    "sa_resnet50": "SA baseline: the context term alone in the places LESA takes.",
    "conv_resnet50_s16": "Conv baseline: plain ResNet-50 with LESA's stage strides (stage 4 at stride 1).",
    "test_lesa_resnet": "Tiny LESA-ResNet for tests: the full placement at 1/8 width.",
}


def _register(variant: str) -> None:
    """Registers ``timm.create_model(variant, pretrained=False, **kwargs)``, also this module's ``variant``."""

    def entry_point(pretrained: bool = False, **kwargs: Any) -> LesaResNet:
        return build_model_with_cfg(LesaResNet, variant, pretrained, model_cfg=MODEL_CFGS[variant], **kwargs)

    entry_point.__name__ = entry_point.__qualname__ = variant
    entry_point.__doc__ = DESCRIPTIONS[variant]
    globals()[variant] = register_model(entry_point)


for _variant in MODEL_CFGS:
    _register(_variant)

LESA_MODEL_NAMES: tuple[str, ...] = tuple(MODEL_CFGS)
