import itertools

import pytest
import torch

from lesa_core.layers import LesaAttention, collect_contributions, record_contributions

OPTION_GRID = list(itertools.product(["rel2d", "flat1d"], ["bn", "scaled"], ["gate", "add", "gate_both", "none"]))


def _layer(**options) -> LesaAttention:
    options = {"num_heads": 4, "feat_size": (6, 5), **options}
    return LesaAttention(32, **options)


@pytest.mark.parametrize(("pos_embed", "sim_norm", "fusion"), OPTION_GRID)
def test_every_option_combination_runs_forward_and_backward(pos_embed, sim_norm, fusion):
    torch.manual_seed(0)
    layer = _layer(pos_embed=pos_embed, sim_norm=sim_norm, fusion=fusion)
    x = torch.randn(2, 32, 6, 5, requires_grad=True)
    out = layer(x)
    assert out.shape == (2, 32, 6, 5)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(8, 8), (13, 7), (20, 31)])
@pytest.mark.parametrize("sim_norm", ["bn", "scaled"])
def test_rel2d_runs_at_sizes_never_seen_at_construction(size, sim_norm):
    layer = _layer(feat_size=8, sim_norm=sim_norm)
    out = layer(torch.randn(2, 32, *size))
    assert out.shape == (2, 32, *size)
    assert torch.isfinite(out).all()


def test_flat1d_refuses_another_size_with_a_clear_error():
    layer = _layer(pos_embed="flat1d", feat_size=(6, 5))
    with pytest.raises(ValueError, match=r"flat1d.*6x5.*got 7x7.*rel2d"):
        layer(torch.randn(1, 32, 7, 7))


def test_fast_and_official_paths_are_finite_and_agree_in_shape():
    x = torch.randn(2, 32, 6, 5)
    official = _layer(pos_embed="flat1d", sim_norm="bn")(x)
    fast = _layer(pos_embed="rel2d", sim_norm="scaled")(x)
    assert official.shape == fast.shape
    assert torch.isfinite(official).all() and torch.isfinite(fast).all()


def test_stride_average_pools_after_the_fusion():
    torch.manual_seed(0)
    strided = _layer(stride=2).eval()
    flat = _layer(stride=1).eval()
    flat.load_state_dict(strided.state_dict())
    x = torch.randn(1, 32, 6, 6)
    torch.testing.assert_close(strided(x), torch.nn.functional.avg_pool2d(flat(x), 2))


@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_local_kernel_and_dilation_keep_the_spatial_size(kernel, dilation):
    layer = _layer(unary_kernel=kernel, unary_dilation=dilation)
    assert layer.local_term.grouped_conv.kernel_size == (kernel, kernel)
    assert layer(torch.randn(1, 32, 6, 5)).shape == (1, 32, 6, 5)


def test_fusion_modes_build_only_what_they_use():
    assert _layer(fusion="none").local_term is None
    assert _layer(fusion="none").fusion_gate is None
    assert _layer(fusion="add").fusion_gate is None
    assert _layer(fusion="gate").fusion_gate.expand[0].out_channels == 32
    assert _layer(fusion="gate_both").fusion_gate.expand[0].out_channels == 64
    assert _layer(fusion="gate", fusion_shrink=4).fusion_gate.reduce[1].out_channels == 16


def test_add_fusion_is_the_plain_sum_of_the_terms():
    layer = _layer(fusion="add").eval()
    x = torch.randn(1, 32, 6, 5)
    torch.testing.assert_close(layer(x), layer.local_term(x) + layer.context_term(x))


def test_gate_fusion_matches_the_official_formula():
    layer = _layer(fusion="gate").eval()
    x = torch.randn(1, 32, 6, 5)
    local, context = layer.local_term(x), layer.context_term(x)
    gate = torch.sigmoid(layer.fusion_gate.expand(layer.fusion_gate.reduce(torch.cat([local, context], 1))))
    torch.testing.assert_close(layer(x), local + gate * context)


def test_contribution_readout_reports_each_term_per_layer():
    model = torch.nn.Sequential(_layer(fusion="gate"), torch.nn.ReLU(), _layer(fusion="none"))
    x = torch.randn(2, 32, 6, 5)
    model(x)
    assert collect_contributions(model) == {}  # off by default: no .item() syncs in training
    record_contributions(model)
    model(x)
    contributions = collect_contributions(model)
    assert set(contributions) == {"0", "2"}
    gated = contributions["0"]
    local = model[0].local_term(x)
    torch.testing.assert_close(torch.tensor(gated.local), local.abs().mean(), rtol=1e-3, atol=1e-5)
    assert gated.local > 0 and gated.context > 0 and 0 < gated.context_share < 1
    assert contributions["2"].local == 0 and contributions["2"].context_share == 1
    record_contributions(model, enabled=False)
    assert collect_contributions(model) == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fusion": "concat"}, r"fusion='concat'.*gate, add, gate_both, none"),
        ({"pos_embed": "abs"}, r"pos_embed='abs'.*rel2d, flat1d"),
        ({"sim_norm": "ln"}, r"sim_norm='ln'.*bn, scaled"),
        ({"num_heads": 5}, r"num_heads=5 must divide the channels"),
        ({"unary_kernel": 4}, r"unary_kernel=4 must be an odd"),
        ({"unary_dilation": 0}, r"unary_dilation=0"),
        ({"fusion_shrink": 0}, r"fusion_shrink=0"),
    ],
)
def test_bad_options_fail_at_construction_naming_option_and_value(options, message):
    with pytest.raises(ValueError, match=message):
        _layer(**options)
