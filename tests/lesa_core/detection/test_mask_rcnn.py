import logging

import pytest
import timm
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

import lesa_core  # noqa: F401
from lesa_core.detection.mask_rcnn import light_heads, maskrcnn_lesa_fpn
from lesa_core.layers import LesaAttention

SMALL = {"min_size": 96, "max_size": 160, "fpn_channels": 32}


def _detector(arch: str = "test_lesa_resnet", **kwargs):
    return maskrcnn_lesa_fpn(arch, num_classes=4, **SMALL, **light_heads(32, 4, representation_size=64,
                                                                          mask_channels=16), **kwargs)


def _targets():
    first = {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([1]),
             "masks": torch.zeros(1, 96, 128, dtype=torch.uint8)}
    first["masks"][0, 12:60, 10:50] = 1
    second = {"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0], [40.0, 50.0, 70.0, 100.0]]),
              "labels": torch.tensor([2, 3]), "masks": torch.zeros(2, 120, 80, dtype=torch.uint8)}
    second["masks"][0, 5:40, 5:30] = 1
    second["masks"][1, 50:100, 40:70] = 1
    return [first, second]


def test_trains_and_predicts_on_two_images_of_different_sizes():
    torch.manual_seed(0)
    model = _detector()
    images = [torch.rand(3, 96, 128), torch.rand(3, 120, 80)]
    losses = model(images, _targets())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    backbone_grads = [p.grad for p in model.backbone.body.parameters() if p.requires_grad]
    assert backbone_grads and all(g is not None for g in backbone_grads)
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert [o["masks"].shape[-2:] for o in outputs] == [(96, 128), (120, 80)]
    assert all(o["boxes"].shape[1] == 4 and len(o["scores"]) == len(o["labels"]) for o in outputs)


def test_backbone_uses_the_detection_geometry_and_rel2d():
    model = _detector()
    body = model.backbone.body
    assert isinstance(body.layer4[0].conv2, LesaAttention) and body.layer4[0].conv2.pool.kernel_size == 2
    features = model.backbone(torch.rand(1, 3, 96, 160))
    assert {k: tuple(v.shape[-2:]) for k, v in features.items()} == {
        "0": (24, 40), "1": (12, 20), "2": (6, 10), "3": (3, 5), "pool": (2, 3)}
    with pytest.raises(ValueError, match="pos_embed must be 'rel2d'"):
        _detector(pos_embed="flat1d")


def test_lesa_options_and_baselines_share_the_builder():
    model = _detector(fusion="add", num_heads=4)
    layers = [m for m in model.backbone.body.modules() if isinstance(m, LesaAttention)]
    assert layers and all(m.fusion == "add" and m.context_term.num_heads == 4 for m in layers)
    sa = maskrcnn_lesa_fpn("sa_resnet50", num_classes=3, **SMALL)
    assert all(m.local_term is None for m in sa.backbone.body.modules() if isinstance(m, LesaAttention))
    conv = maskrcnn_lesa_fpn("conv_resnet50_s16", num_classes=3, **SMALL)
    assert not any(isinstance(m, LesaAttention) for m in conv.modules())


def test_classification_checkpoint_loads_into_the_backbone_with_frozen_bn(tmp_path):
    classifier = timm.create_model("test_lesa_resnet", num_classes=10)
    path = tmp_path / "classifier.pth"
    torch.save({"model": classifier.state_dict(), "epoch": 3}, path)
    model = _detector(backbone_weights=path, trainable_backbone_layers=2)
    body = model.backbone.body
    torch.testing.assert_close(body.layer3[1].conv2.context_term.qkv.weight,
                               classifier.layer3[1].conv2.context_term.qkv.weight)
    torch.testing.assert_close(body.layer4[0].conv2.context_term.rel_h, classifier.layer4[0].conv2.context_term.rel_h)
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    trainable = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}


def test_position_tables_that_do_not_fit_are_reinitialised_with_a_log_line(tmp_path, caplog):
    official_form = timm.create_model("test_lesa_resnet", pos_embed="flat1d", img_size=64)
    path = tmp_path / "flat1d.pth"
    torch.save(official_form.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="lesa_core.detection.mask_rcnn"):
        model = _detector(backbone_weights=path)
    assert "kept initialisation" in caplog.text and "rel_h" in caplog.text
    torch.testing.assert_close(model.backbone.body.conv1.weight, official_form.conv1.weight)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "conv.pth"
    torch.save(timm.create_model("conv_resnet50_s16").state_dict(), path)
    with pytest.raises(ValueError, match=r"conv\.pth: weights do not fit"):
        _detector(backbone_weights=path)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        _detector(backbone_weights=tmp_path / "missing.pth")
