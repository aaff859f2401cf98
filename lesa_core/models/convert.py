"""Load state dicts saved by the official LESA classification code into a LesaResNet.

The official code (Chenglin-Yang/LESA_classification) saves ``{"net": state_dict, "optim": ...}``,
often with DataParallel's ``module.`` prefix. Its ResNet keys already match ours (torchvision names);
inside each LESA layer (``layerX.Y.conv2.*``) the sub-module names differ and q/k/v come from a
Conv1d. Channel layouts (q/k/v per head, the BN over logit terms, the interleaved output BN) are the
same by construction, so the converted model gives the official logits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# official sub-key inside a LESA layer -> ours
_LESA_KEY_MAP: dict[str, str] = {
    "qkv_transform.weight": "context_term.qkv.weight",
    "bn_qkv": "context_term.qkv_norm",
    "bn_similarity": "context_term.sim_bn",
    "bn_output": "context_term.out_norm",
    "relative": "context_term.rel_flat",
    "rel_height": "context_term.rel_h",
    "rel_width": "context_term.rel_w",
    "x_transform.0": "local_term.grouped_conv",
    "x_transform.1": "local_term.pointwise_conv",
    "bn_x": "local_term.norm",
    "reasoning.1": "fusion_gate.reduce.1",
    "reasoning.2": "fusion_gate.reduce.2",
    "projection.0": "fusion_gate.expand.0",
    "projection.1": "fusion_gate.expand.1",
}
# buffers the official layer saves and we rebuild from the shapes
_DROPPED_SUFFIXES = ("flatten_index",)
_LESA_KEY = re.compile(r"^(layer\d+\.\d+\.conv2)\.(.+)$")


def unwrap_official_checkpoint(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """A loaded official checkpoint (``{"net": ...}`` or a bare state dict) -> state dict without ``module.``."""
    state_dict = checkpoint.get("net", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"expected a state dict or {{'net': state_dict}}, got {type(checkpoint).__name__}")
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def _convert_lesa_key(prefix: str, rest: str) -> str:
    for official, ours in _LESA_KEY_MAP.items():
        if rest == official or rest.startswith(official + "."):
            return f"{prefix}.{ours}{rest[len(official):]}"
    raise KeyError(f"unknown key {prefix}.{rest} in an official LESA layer")


def from_official(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Maps an official checkpoint (``{"net": ...}`` or a state dict) to LesaResNet keys and shapes.

    ``model.load_state_dict(from_official(checkpoint))`` then loads strictly into a model built in the
    official configuration; :func:`lesa_core.engine.checkpoint.load_weights` does that with a readable error.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in unwrap_official_checkpoint(checkpoint).items():
        if key.endswith(_DROPPED_SUFFIXES):
            continue
        match = _LESA_KEY.match(key)
        if match and match.group(2) != "weight":  # a plain 3x3 conv2 has only .weight
            new_key = _convert_lesa_key(match.group(1), match.group(2))
            if new_key.endswith("context_term.qkv.weight"):
                value = value.unsqueeze(-1)  # Conv1d (out, in, 1) -> Conv2d (out, in, 1, 1)
            converted[new_key] = value
        else:
            converted[key] = value
    return converted
