"""The operations behind the CLI verbs; no CLI library in here, so other front ends can call them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import timm
import torch

from lesa_core.models import LESA_MODEL_NAMES


@dataclass(frozen=True)
class ModelInfo:
    """One registered LESA model as the `models` verb reports it (default options)."""

    name: str
    params: int
    input_size: tuple[int, ...]
    crop_pct: float
    description: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def list_models(name_filter: str = "") -> list[ModelInfo]:
    """Registered LESA models whose name contains ``name_filter``; built on the meta device, so instant."""
    infos = []
    for name in LESA_MODEL_NAMES:
        if name_filter not in name:
            continue
        with torch.device("meta"):
            model = timm.create_model(name)
        entrypoint_doc = timm.models.model_entrypoint(name).__doc__ or ""
        infos.append(ModelInfo(
            name=name,
            params=sum(p.numel() for p in model.parameters()),
            input_size=tuple(model.pretrained_cfg["input_size"]),
            crop_pct=model.pretrained_cfg["crop_pct"],
            description=entrypoint_doc.strip().splitlines()[0] if entrypoint_doc.strip() else "",
        ))
    return infos
