"""The local (unary) term of LESA.

LESA (Yang et al., "Locally Enhanced Self-Attention", arXiv 2107.05637) replaces the unary term of
self-attention, a 1x1 projection of each query position, with a locally enhanced one: a grouped kxk
convolution (one group per attention head), a 1x1 convolution mixing the groups, then BatchNorm. There
is no activation: the fusion gate and the bottleneck's ReLU follow.
"""

from __future__ import annotations

import torch
from torch import nn

from .weight_init import init_conv_bn_


class LocalTerm(nn.Module):
    """Grouped kxk conv -> 1x1 conv -> BN.

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C.
        num_heads: groups of the kxk conv; the 1x1 conv is dropped when this is 1, as officially.
        kernel_size: odd spatial size k of the grouped conv.
        dilation: dilation of the grouped conv; padding keeps the spatial size.
    """

    def __init__(self, in_channels: int, out_channels: int, *, num_heads: int = 8, kernel_size: int = 3,
                 dilation: int = 1) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.grouped_conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
            groups=num_heads, bias=False,
        )
        self.pointwise_conv = (
            nn.Conv2d(out_channels, out_channels, 1, bias=False) if num_heads > 1 else nn.Identity()
        )
        self.norm = nn.BatchNorm2d(out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He normal (fan_out) convs and an identity BN, as the official code initialises them."""
        init_conv_bn_(self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C, H, W)."""
        return self.norm(self.pointwise_conv(self.grouped_conv(x)))
