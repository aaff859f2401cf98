"""Local vs context contribution of every LESA layer: the paper's unary/binary analysis on a few images.

:func:`measure_contributions` runs a model on some inputs with contribution recording on
(:func:`lesa_core.layers.record_contributions`) and averages, per LESA layer, the mean |local term| and the
mean |gate * context term| that enter the layer's output; :func:`validation_inputs` reads the first images of
a dataset split as those inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .layers import TermContribution, collect_contributions, record_contributions


@dataclass(frozen=True)
class LayerContribution:
    """Mean |local| and mean |gate * context| of one LESA layer, averaged over the measured inputs."""

    name: str
    local: float
    context: float

    @property
    def context_share(self) -> float:
        return TermContribution(self.local, self.context).context_share


def measure_contributions(model: nn.Module, inputs: Sequence[Any]) -> tuple[LayerContribution, ...]:
    """Calls ``model(batch)`` for each of ``inputs`` without gradients and averages each LESA layer's terms over
    them (a layer that did not run on some input counts 0 for it); empty for a model without LESA layers.

    Recording is switched off again afterwards, also when the model raises.
    """
    totals: dict[str, list[float]] = {}
    record_contributions(model)
    try:
        with torch.no_grad():
            for batch in inputs:
                model(batch)
                for name, term in collect_contributions(model).items():
                    total = totals.setdefault(name, [0.0, 0.0])
                    total[0] += term.local
                    total[1] += term.context
    finally:
        record_contributions(model, enabled=False)
    return tuple(LayerContribution(name, local / len(inputs), context / len(inputs))
                 for name, (local, context) in totals.items())


def validation_inputs(
    task: str, root: str | Path, split: str, model: nn.Module, *, num_images: int, img_size: int
) -> list[Any]:
    """The first ``num_images`` images of ``split`` at ``root`` as model inputs, one image each: a list of one
    (C, H, W) tensor for detection, a (1, C, H, W) batch in the model's eval transform (``img_size`` crop) for
    classification."""
    if task == "detection":
        from .data.coco import CocoInstances

        dataset = CocoInstances(root, split, train=False)
        samples = [dataset[index] for index in range(min(num_images, len(dataset)))]
        return [[image] for image, _ in filter(None, samples)]
    from .data.imagenet import ImageNetDataset, create_imagenet_transforms, resolve_imagenet_data_config

    _, eval_transform = create_imagenet_transforms(resolve_imagenet_data_config(model, img_size))
    dataset = ImageNetDataset(root, split, transform=eval_transform)
    return [torch.unsqueeze(dataset[index][0], 0) for index in range(min(num_images, len(dataset)))]
