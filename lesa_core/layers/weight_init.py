"""The ResNet initialisation that LESA's convolutional parts share with the backbone around them."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def init_conv_bn_(modules: Iterable[nn.Module]) -> None:
    """He normal (fan_out, ReLU) for every Conv2d weight, zero conv biases; every BatchNorm2d to identity
    with fresh running statistics. Other modules are left alone."""
    for module in modules:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
