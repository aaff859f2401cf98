"""LESA-specific model checks: registration, parameter counts, placement, options, input sizes, geometry.

timm's own test families (forward, backward, cfgs, features, FX) are in test_timm_families.py."""

import pytest
import timm
import torch

import lesa_core  # noqa: F401  (registers the models)
from lesa_core.layers import LesaAttention
from lesa_core.models import LESA_MODEL_NAMES, MODEL_CFGS, LesaResNet, with_detection_strides

OFFICIAL = {"pos_embed": "flat1d", "sim_norm": "bn", "fusion": "gate"}


def test_every_model_is_registered_in_timm():
    assert set(LESA_MODEL_NAMES) <= set(timm.list_models())
    assert {"lesa_resnet50", "lesa_resnet101", "lesa_wrn50", "sa_resnet50", "conv_resnet50_s16",
            "test_lesa_resnet"} == set(LESA_MODEL_NAMES)


@pytest.mark.parametrize(
    ("name", "params"),
    [("lesa_resnet50", 23_777_512), ("lesa_wrn50", 61_145_896), ("conv_resnet50_s16", 25_557_032)],
)
def test_parameter_counts_match_the_official_configuration(name, params):
    with torch.device("meta"):
        model = timm.create_model(name, **OFFICIAL)
    assert sum(p.numel() for p in model.parameters()) == params


def test_lesa_sits_where_the_paper_puts_it():
    model = timm.create_model("lesa_resnet50")
    lesa_blocks = sorted(n.rsplit(".", 1)[0] for n, m in model.named_modules() if isinstance(m, LesaAttention))
    expected = [f"layer3.{i}" for i in range(1, 6)] + [f"layer4.{i}" for i in range(3)]
    assert lesa_blocks == expected
    assert isinstance(model.layer3[0].conv2, torch.nn.Conv2d)


def test_baselines_share_the_geometry():
    sa = timm.create_model("sa_resnet50")
    sa_layers = [m for m in sa.modules() if isinstance(m, LesaAttention)]
    assert len(sa_layers) == 8 and all(m.local_term is None and m.fusion == "none" for m in sa_layers)
    conv = timm.create_model("conv_resnet50_s16")
    assert not any(isinstance(m, LesaAttention) for m in conv.modules())
    assert conv.forward_features(torch.randn(1, 3, 64, 64)).shape[-1] == 4  # output stride 16


def test_lesa_options_pass_through_create_model():
    model = timm.create_model("test_lesa_resnet", fusion="gate_both", num_heads=4, unary_kernel=5,
                              pos_embed="rel2d", sim_norm="scaled", qk_ratio=1.0)
    layers = [m for m in model.modules() if isinstance(m, LesaAttention)]
    assert layers and all(m.fusion == "gate_both" for m in layers)
    assert all(m.context_term.num_heads == 4 and m.context_term.sim_norm == "scaled" for m in layers)
    assert all(m.local_term.grouped_conv.kernel_size == (5, 5) for m in layers)
    assert all(m.context_term.qk_dim == m.context_term.v_dim for m in layers)


def test_a_bad_option_fails_through_create_model_naming_it():
    with pytest.raises(ValueError, match="fusion='mean'"):
        timm.create_model("test_lesa_resnet", fusion="mean")


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (72, 104)])
def test_rel2d_models_accept_any_input_size(size):
    model = timm.create_model("test_lesa_resnet", num_classes=3).eval()
    assert model(torch.randn(1, 3, *size)).shape == (1, 3)


def test_official_flat1d_model_refuses_another_input_size():
    model = timm.create_model("test_lesa_resnet", img_size=64, **OFFICIAL).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(ValueError, match=r"flat1d.*4x4.*got 6x6"):
        model(torch.randn(1, 3, 96, 96))


def test_fast_and_official_models_agree_in_shape_and_are_finite():
    x = torch.randn(2, 3, 64, 64)
    official = timm.create_model("test_lesa_resnet", img_size=64, **OFFICIAL)(x)
    fast = timm.create_model("test_lesa_resnet", pos_embed="rel2d", sim_norm="scaled")(x)
    assert official.shape == fast.shape == (2, 1000)
    assert torch.isfinite(official).all() and torch.isfinite(fast).all()


def test_features_only_reports_channels_and_reductions():
    model = timm.create_model("test_lesa_resnet", features_only=True)
    features = model(torch.randn(1, 3, 64, 64))
    assert model.feature_info.channels() == [16, 32, 64, 128, 256]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 16]
    for feature, channels, reduction in zip(
        features, model.feature_info.channels(), model.feature_info.reduction(), strict=True
    ):
        assert feature.shape == (1, channels, 64 // reduction, 64 // reduction)


def test_features_only_full_size_model_at_detection_like_shape():
    model = timm.create_model("lesa_resnet50", features_only=True, out_indices=(1, 2, 3, 4))
    features = model(torch.randn(1, 3, 96, 128))
    assert [f.shape[1] for f in features] == [256, 512, 1024, 2048]
    assert [f.shape[-2:] for f in features] == [(24, 32), (12, 16), (6, 8), (6, 8)]


def test_detection_geometry_puts_stage_four_at_stride_two():
    model = LesaResNet(with_detection_strides(MODEL_CFGS["test_lesa_resnet"]), num_classes=0)
    assert [info["reduction"] for info in model.feature_info] == [2, 4, 8, 16, 32]
    assert model.forward_features(torch.randn(1, 3, 64, 96)).shape == (1, 256, 2, 3)
    assert model.layer4[0].conv2.pool.kernel_size == 2  # LESA pools after the fusion


def test_pretrained_cfg_carries_preprocessing():
    cfg = timm.create_model("lesa_resnet50").pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["crop_pct"] == 0.875
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    data_cfg = timm.data.resolve_data_config({}, model=timm.create_model("test_lesa_resnet"))
    assert data_cfg["input_size"] == (3, 128, 128)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = timm.create_model("test_lesa_resnet", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    model(x).sum().backward()
    expected = model.conv1.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    torch.testing.assert_close(model.conv1.weight.grad, expected)
