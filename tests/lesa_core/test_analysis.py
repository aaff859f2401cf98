"""Local vs context contribution analysis on the tiny LESA-ResNet and on a model without LESA layers."""

from __future__ import annotations

import pytest
import timm
import torch

import lesa_core  # noqa: F401  (registers the models)
from lesa_core.analysis import LayerContribution, measure_contributions
from lesa_core.layers import LesaAttention


def test_every_lesa_layer_reports_both_terms_averaged_over_the_inputs():
    torch.manual_seed(0)
    model = timm.create_model("test_lesa_resnet", num_classes=3).eval()
    inputs = [torch.randn(1, 3, 64, 64) for _ in range(2)]

    layers = measure_contributions(model, inputs)

    lesa_names = [name for name, module in model.named_modules() if isinstance(module, LesaAttention)]
    assert [layer.name for layer in layers] == lesa_names and lesa_names
    assert all(layer.local > 0 and layer.context > 0 and 0 < layer.context_share < 1 for layer in layers)
    one = measure_contributions(model, inputs[:1])
    two = measure_contributions(model, inputs[1:])
    for mean, first, second in zip(layers, one, two, strict=True):
        assert mean.local == pytest.approx((first.local + second.local) / 2)
    assert all(not module.track_contribution for module in model.modules() if isinstance(module, LesaAttention))


def test_a_model_without_lesa_layers_has_nothing_to_report():
    assert measure_contributions(torch.nn.Conv2d(3, 4, 3), [torch.randn(1, 3, 8, 8)]) == ()


def test_recording_stops_when_the_model_raises():
    model = timm.create_model("test_lesa_resnet", num_classes=3).eval()
    with pytest.raises(RuntimeError):
        measure_contributions(model, [torch.randn(1, 5, 64, 64)])  # wrong channel count
    assert all(not module.track_contribution for module in model.modules() if isinstance(module, LesaAttention))


def test_context_share_is_the_context_fraction():
    assert LayerContribution("layer4.0.conv2", 0.75, 0.25).context_share == pytest.approx(0.25)
