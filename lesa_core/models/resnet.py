"""LesaResNet: ResNet / Wide-ResNet bottleneck networks with LESA, SA or 3x3 conv in chosen stages.

One builder for LESA and its baselines. The official LESA geometry (Yang et al., arXiv 2107.05637):
stages 1-2 plain, stage 3 LESA from block 2 (block 1 keeps the strided 3x3 conv), stage 4 all LESA;
stage strides (1, 2, 2, 1) for classification (output stride 16) and (1, 2, 2, 2) for detection.
Child names follow torchvision's ResNet (``conv1, bn1, relu, maxpool, layer1..layer4, fc``) so its
FPN helpers plug in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from timm.layers import create_classifier
from timm.models import checkpoint_seq
from torch import nn

from ..layers import LesaAttention, init_conv_bn_

BLOCK_TYPES = ("conv", "lesa", "sa")


@dataclass(frozen=True)
class LesaResNetCfg:
    """Architecture of a LesaResNet.

    Attributes:
        depths: bottleneck blocks per stage.
        widths: bottleneck width of each stage at width_factor 1 (output is 4x that).
        width_factor: 2 for Wide-ResNet.
        stem_width: channels of the 7x7 stem.
        strides: stride of each stage's first block.
        stage_blocks: block type per stage: ``conv``, ``lesa`` or ``sa`` (context term only).
        first_block_conv: keep a 3x3 conv in the stage's first block even if the stage is LESA/SA.
    """

    depths: tuple[int, int, int, int] = (3, 4, 6, 3)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    width_factor: int = 1
    stem_width: int = 64
    strides: tuple[int, int, int, int] = (1, 2, 2, 1)
    stage_blocks: tuple[str, str, str, str] = ("conv", "conv", "lesa", "lesa")
    first_block_conv: tuple[bool, bool, bool, bool] = (True, True, True, False)


class Bottleneck(nn.Module):
    """1x1 -> (3x3 conv + BN | LESA) -> 1x1, stride on the middle op (ResNet v1.5).

    Args:
        in_chs: input channels.
        width: bottleneck width.
        out_chs: output channels (4x the base width; Wide-ResNet widens only ``width``).
        stride: stride of the middle op.
        attn: a LESA layer replacing the 3x3 conv (it has no BN after it, as officially), or None.
    """

    expansion = 4

    def __init__(
        self, in_chs: int, width: int, out_chs: int, *, stride: int = 1, attn: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if attn is None:
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
        else:
            self.conv2 = attn
            self.bn2 = nn.Identity()
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
            )

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def _to_size(img_size: int | tuple[int, int]) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


class LesaResNet(nn.Module):
    """ResNet with LESA (or SA, or conv) blocks, following timm's model API.

    Args:
        cfg: the architecture.
        num_classes: classifier outputs; 0 for a feature extractor.
        in_chans: input image channels.
        img_size: input size at construction. It sizes the ``flat1d`` position tables (the only size
            they accept) and the extent of the ``rel2d`` tables (any size works).
        global_pool: timm pool type for the head.
        drop_rate: dropout before the classifier.
        zero_init_last: zero the last BN of each block so blocks start as identities.
        **lesa_options: passed to every :class:`~lesa_core.layers.LesaAttention` (num_heads, qk_ratio,
            unary_kernel, unary_dilation, pos_embed, sim_norm, fusion, fusion_shrink).
    """

    def __init__(
        self,
        cfg: LesaResNetCfg,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        zero_init_last: bool = False,
        **lesa_options: Any,
    ) -> None:
        super().__init__()
        for stage_block in cfg.stage_blocks:
            if stage_block not in BLOCK_TYPES:
                raise ValueError(f"stage block type {stage_block!r} is not one of {BLOCK_TYPES}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        height, width = _to_size(img_size)
        # sizes of the map entering each LESA layer, at the construction-time input size
        height, width = -(-height // 4), -(-width // 4)

        self.conv1 = nn.Conv2d(in_chans, cfg.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info = [dict(num_chs=cfg.stem_width, reduction=2, module="relu")]

        in_chs, reduction = cfg.stem_width, 4
        for stage_idx in range(4):
            width_chs = cfg.widths[stage_idx] * cfg.width_factor
            out_chs = cfg.widths[stage_idx] * Bottleneck.expansion
            blocks = []
            for block_idx in range(cfg.depths[stage_idx]):
                stride = cfg.strides[stage_idx] if block_idx == 0 else 1
                block_type = cfg.stage_blocks[stage_idx]
                if block_idx == 0 and cfg.first_block_conv[stage_idx]:
                    block_type = "conv"
                attn = None
                if block_type != "conv":
                    options = dict(lesa_options, fusion="none") if block_type == "sa" else lesa_options
                    attn = LesaAttention(width_chs, stride=stride, feat_size=(height, width), **options)
                blocks.append(Bottleneck(in_chs, width_chs, out_chs, stride=stride, attn=attn))
                in_chs = out_chs
                height, width = -(-height // stride), -(-width // stride)
            reduction *= cfg.strides[stage_idx]
            self.add_module(f"layer{stage_idx + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f"layer{stage_idx + 1}"))

        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        # LESA layers keep the init of their own reset_parameters(); everything else gets the ResNet init
        lesa_parts = {part for layer in self.modules() if isinstance(layer, LesaAttention) for part in layer.modules()}
        init_conv_bn_(module for module in self.modules() if module not in lesa_parts)
        if zero_init_last:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    module.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^conv1|bn1|maxpool", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_features, H / 16, W / 16) in the classification geometry."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        checkpointing = self.grad_checkpointing and not torch.jit.is_scripting()
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = checkpoint_seq(stage, x) if checkpointing else stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_features, h, w) -> (B, num_classes), or pooled (B, num_features) with pre_logits."""
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes)."""
        return self.forward_head(self.forward_features(x))


def with_detection_strides(cfg: LesaResNetCfg) -> LesaResNetCfg:
    """The same architecture with stage 4 at stride 2 (output stride 32), the detection geometry."""
    return replace(cfg, strides=(*cfg.strides[:3], 2))
