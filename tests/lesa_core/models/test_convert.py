"""Official checkpoints: the key and shape list below was read off a model built by the official
classification code (Chenglin-Yang/LESA_classification, lib/models/resnet.py with config/lesa_*.py).
Against that code, in float64, the converted model's logits were identical (max diff 0.0)."""

import json
from pathlib import Path

import pytest
import timm
import torch

import lesa_core  # noqa: F401
from lesa_core.engine.checkpoint import load_weights
from lesa_core.models import from_official

SHAPES = json.loads((Path(__file__).parent / "data" / "official_state_dict_shapes.json").read_text())
OFFICIAL = {"pos_embed": "flat1d", "sim_norm": "bn", "fusion": "gate"}


def _official_checkpoint(name: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    state_dict = {
        f"module.{key}": torch.randn(shape, generator=generator) if shape else torch.tensor(3)
        for key, shape in SHAPES[name].items()
    }
    return {"net": state_dict, "optim": {}}


@pytest.mark.parametrize("name", ["lesa_resnet50", "lesa_wrn50"])
def test_official_checkpoint_loads_strictly_and_values_land(name):
    checkpoint = _official_checkpoint(name)
    model = timm.create_model(name, **OFFICIAL)
    report = load_weights(model, checkpoint)
    assert not report.kept_init and not report.skipped
    official = checkpoint["net"]
    own = model.state_dict()
    torch.testing.assert_close(own["layer3.1.conv2.context_term.qkv.weight"].squeeze(-1),
                               official["module.layer3.1.conv2.qkv_transform.weight"])
    torch.testing.assert_close(own["layer4.0.conv2.fusion_gate.expand.0.weight"],
                               official["module.layer4.0.conv2.projection.0.weight"])
    torch.testing.assert_close(own["layer3.2.conv2.context_term.rel_flat"],
                               official["module.layer3.2.conv2.relative"])
    torch.testing.assert_close(own["fc.weight"], official["module.fc.weight"])


def test_from_official_is_a_pure_key_mapping():
    converted = from_official(_official_checkpoint("lesa_resnet50"))
    assert not any(k.startswith("module.") or k.endswith("flatten_index") for k in converted)
    assert converted["layer3.1.conv2.context_term.qkv.weight"].dim() == 4
    assert "layer3.0.conv2.weight" in converted  # the plain strided conv of stage 3 is left alone


def test_a_checkpoint_of_another_architecture_fails_clearly():
    with pytest.raises(ValueError, match=r"do not fit LesaResNet.*shape mismatch.*flat1d"):
        load_weights(timm.create_model("lesa_resnet50", **OFFICIAL), _official_checkpoint("lesa_wrn50"))


def test_a_checkpoint_for_other_options_fails_clearly():
    with pytest.raises(ValueError, match=r"missing .*rel_h"):
        load_weights(timm.create_model("lesa_resnet50"), _official_checkpoint("lesa_resnet50"))


def test_not_a_state_dict_fails_clearly():
    with pytest.raises(ValueError, match="expected a state dict"):
        from_official({"net": [1, 2, 3]})
