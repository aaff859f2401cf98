"""timm's model test families (its ``tests/test_models.py``) for every registered LESA model and baseline.

Forward, backward (every parameter gets a gradient), default cfgs (pretrained_cfg, head API, feature_info),
feature extraction (channels and reductions), and FX: traced train and eval graphs equal the eager model.
Registered models run as ``timm.create_model(name)`` builds them, at 64x64 (the cfg's own input size where
the cfg is checked); extra cases cover the code paths other LESA options take.
"""

import math

import pytest
import timm
import torch
from timm.models._features import FeatureListNet
from timm.models._features_fx import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import lesa_core  # noqa: F401  (registers the models)
from lesa_core.models import LESA_MODEL_NAMES

SIZE = (64, 64)
# (model name, create_model options, input H x W); ids name what each extra case exercises
CASES = {
    **{name: (name, {}, SIZE) for name in LESA_MODEL_NAMES},
    "official_flat1d": ("test_lesa_resnet", {"pos_embed": "flat1d", "sim_norm": "bn", "img_size": 64}, SIZE),
    "fused_scaled": ("test_lesa_resnet", {"sim_norm": "scaled", "fusion": "gate_both"}, SIZE),
    "resampled_tables": ("test_lesa_resnet", {"img_size": 32, "fusion": "add"}, SIZE),
}
TRACER_KWARGS = {
    "leaf_modules": get_notrace_modules(),
    "autowrap_functions": get_notrace_functions(),
    "param_shapes_constant": True,
}


def _create(case: str, **kwargs) -> tuple[torch.nn.Module, tuple[int, int]]:
    name, options, size = CASES[case]
    torch.manual_seed(0)
    return timm.create_model(name, **options, **kwargs), size


@pytest.fixture(scope="module", params=list(CASES))
def traced(request):
    """(case, model with 42 classes, its FX graph module): train and eval graphs returning each feature_info
    level and the logits, traced with timm's leaf modules and functions. One trace per case (tracing the big
    models is the slow part), shared by the FX tests; the graph module shares the model's parameters."""
    model, _ = _create(request.param, num_classes=42)
    return_nodes = {info["module"]: str(level) for level, info in enumerate(model.feature_info)} | {"fc": "logits"}
    fx_model = create_feature_extractor(model, return_nodes=return_nodes, tracer_kwargs=TRACER_KWARGS)
    return request.param, model, fx_model


@pytest.mark.parametrize("case", CASES)
def test_model_forward(case):
    model, size = _create(case)
    model.eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, model.num_classes)
        assert not torch.isnan(out).any()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_model_backward(case):
    model, size = _create(case, num_classes=42)
    model.train()
    out = model(torch.randn(2, 3, *size))
    out.mean().backward()
    assert out.shape == (2, 42)
    assert not torch.isnan(out).any()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


@pytest.mark.parametrize("name", LESA_MODEL_NAMES)
def test_model_default_cfgs(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    for field in ("num_classes", "input_size", "pool_size", "crop_pct", "interpolation", "mean", "std",
                  "first_conv", "classifier"):
        assert field in cfg, field
    assert model.num_classes == cfg["num_classes"] > 0
    assert model.num_features > 0 and model.head_hidden_size > 0
    state_dict = model.state_dict()
    assert f"{cfg['classifier']}.weight" in state_dict and f"{cfg['first_conv']}.weight" in state_dict
    assert state_dict[f"{cfg['first_conv']}.weight"].shape[1] == cfg["input_size"][0]

    reduction = cfg["input_size"][-1] // cfg["pool_size"][-1]
    small_pool = (SIZE[0] // reduction, SIZE[1] // reduction)
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, *cfg["input_size"]))  # unpooled, at the cfg's pool size
        assert features.shape == (1, model.num_features, *cfg["pool_size"])
        assert model.forward_head(features, pre_logits=True).shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.head_hidden_size)
        model.reset_classifier(0, "")  # no pooling either: the unpooled map
        assert model(x).shape == (1, model.num_features, *small_pool)
        model.reset_classifier(11)
        assert model(x).shape == (1, 11) and model.get_classifier().out_features == 11
        featureless = timm.create_model(name, num_classes=0).eval()
        assert featureless(x).shape == (1, featureless.num_features)

    info = model.feature_info
    assert [i["reduction"] for i in info] == sorted(i["reduction"] for i in info)
    assert info[-1]["num_chs"] == model.num_features
    assert info[-1]["reduction"] == reduction
    for entry in info:  # channels are checked against real outputs in test_model_forward_features
        assert entry["num_chs"] > 0 and model.get_submodule(entry["module"]) is not None


@pytest.mark.parametrize("case", CASES)
def test_model_forward_features(case):
    model, size = _create(case, features_only=True)
    model.eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) == 5
    with torch.no_grad():
        features = model(torch.randn(2, 3, *size))
    assert len(features) == len(channels)
    for feature, chs, reduction in zip(features, channels, reductions, strict=True):
        assert feature.shape == (2, chs, math.ceil(size[0] / reduction), math.ceil(size[1] / reduction))
        assert not torch.isnan(feature).any()


def test_model_forward_fx(traced):
    case, model, fx_model = traced
    model.eval()
    fx_model.eval()
    x = torch.randn(1, 3, *CASES[case][2])
    with torch.no_grad():
        out = model(x)
        fx_outs = fx_model(x)
        features = FeatureListNet(model, out_indices=range(len(model.feature_info)))(x)  # eager, same weights
    assert not torch.isnan(out).any()
    assert torch.equal(fx_outs.pop("logits"), out)
    assert len(fx_outs) == len(features)
    for fx_feature, feature in zip(fx_outs.values(), features, strict=True):
        assert torch.equal(fx_feature, feature)


def test_model_backward_fx(traced):
    case, model, fx_model = traced
    model.train()
    fx_model.train()
    x = torch.randn(2, 3, *CASES[case][2])
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.mean().backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    fx_out = fx_model(x)["logits"]
    fx_out.mean().backward()
    assert fx_out.shape == (2, 42)
    assert not torch.isnan(fx_out).any()
    assert torch.equal(fx_out, out)  # train-mode BN normalises by batch statistics: same input, same output
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert missing == []
    assert sum(p.grad.numel() for p in fx_model.parameters()) == sum(p.numel() for p in model.parameters())
    for name, param in fx_model.named_parameters():
        torch.testing.assert_close(param.grad, eager_grads[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", ["test_lesa_resnet", "official_flat1d", "fused_scaled", "resampled_tables"])
def test_features_only_fx_equals_the_default_extractor(case):
    model, size = _create(case, features_only=True)
    graph_model, _ = _create(case, features_only=True, feature_cls="fx")  # same seed: same weights
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        for graph_feature, feature in zip(graph_model.eval()(x), model.eval()(x), strict=True):
            assert torch.equal(graph_feature, feature)


@pytest.mark.parametrize(
    ("case", "leaf_nodes"),
    [("official_flat1d", ["check_flat1d_size"]), ("test_lesa_resnet", ["resize_rel_table", "resize_rel_table_1"])],
)
def test_size_dependent_helpers_are_single_graph_nodes(case, leaf_nodes):
    model, _ = _create(case)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=TRACER_KWARGS)
    assert train_nodes == eval_nodes and eval_nodes[-1] == "fc"
    prefix = "layer4.0.conv2.context_term."
    context_nodes = [n.removeprefix(prefix) for n in eval_nodes if n.startswith(prefix)]
    assert [n for n in context_nodes if n.startswith(("check_", "resize_", "interpolate"))] == leaf_nodes


def test_traced_official_model_keeps_the_flat1d_size_check():
    model, _ = _create("official_flat1d")
    fx_model = create_feature_extractor(model.eval(), return_nodes=["fc"], tracer_kwargs=TRACER_KWARGS).eval()
    with pytest.raises(ValueError, match=r"flat1d.*4x4.*got 6x6"):
        fx_model(torch.randn(1, 3, 96, 96))
