"""reset_parameters() on every LESA module: construction runs it, and re-running it restores the init.

The init is the official one: He normal (fan_out) for the local and fusion convs, N(0, 1 / C_in) for the
q/k/v projection, N(0, 1 / d) for the position tables, identity BatchNorms with fresh statistics.
"""

import copy
import math

import pytest
import timm
import torch
from torch import nn

import lesa_core  # noqa: F401  (registers the models)
from lesa_core.layers import ContextTerm, FusionGate, LesaAttention, LocalTerm

MODULES = {
    "local_term": lambda: LocalTerm(64, 64, num_heads=8),
    "local_term_one_head": lambda: LocalTerm(64, 64, num_heads=1, kernel_size=5),
    "context_rel2d_bn": lambda: ContextTerm(64, 64, num_heads=8, feat_size=16),
    "context_rel2d_scaled": lambda: ContextTerm(64, 64, num_heads=8, sim_norm="scaled", feat_size=16),
    "context_flat1d_bn": lambda: ContextTerm(64, 64, num_heads=8, pos_embed="flat1d", feat_size=8),
    "fusion_gate": lambda: FusionGate(64),
    "fusion_gate_both": lambda: FusionGate(64, gates=2, shrink=4),
    **{
        f"lesa_{fusion}": lambda fusion=fusion: LesaAttention(64, num_heads=8, fusion=fusion, feat_size=16)
        for fusion in ("gate", "add", "gate_both", "none")
    },
    "lesa_flat1d": lambda: LesaAttention(64, num_heads=8, pos_embed="flat1d", feat_size=8),
}


def _expected_std(owner: nn.Module, name: str, param: torch.Tensor) -> float:
    """The std a freshly initialised parameter ``owner.<name>`` is drawn with."""
    if isinstance(owner, ContextTerm):
        return {"rel_h": owner.qk_dim ** -0.5, "rel_w": owner.qk_dim ** -0.5, "rel_flat": owner.v_dim ** -0.5}[name]
    if isinstance(owner, nn.Conv2d) and name == "weight":
        return math.sqrt(2.0 / (param.shape[0] * param[0, 0].numel()))  # He normal, fan_out
    raise AssertionError(f"no expected init for {type(owner).__name__}.{name}")


def assert_fresh_init(module: nn.Module) -> None:
    """Every parameter and BN statistic of ``module`` is at its init: constants exactly, random draws by
    mean and std (loose bounds, the draws are seeded)."""
    checked = set()
    for owner_name, owner in module.named_modules():
        if isinstance(owner, nn.BatchNorm2d):
            torch.testing.assert_close(owner.weight, torch.ones_like(owner.weight), rtol=0, atol=0)
            torch.testing.assert_close(owner.bias, torch.zeros_like(owner.bias), rtol=0, atol=0)
            torch.testing.assert_close(owner.running_mean, torch.zeros_like(owner.running_mean), rtol=0, atol=0)
            torch.testing.assert_close(owner.running_var, torch.ones_like(owner.running_var), rtol=0, atol=0)
            assert owner.num_batches_tracked.item() == 0, owner_name
            checked |= {id(owner.weight), id(owner.bias)}
            continue
        for name, param in owner.named_parameters(recurse=False):
            if id(param) in checked:
                continue
            if owner_name.endswith("qkv") and isinstance(owner, nn.Conv2d):
                std = math.sqrt(1.0 / param.shape[1])  # official q/k/v projection init
            else:
                std = _expected_std(owner, name, param)
            label = f"{owner_name}.{name}"
            assert abs(param.std().item() / std - 1) < 0.25, (label, param.std().item(), std)
            assert abs(param.mean().item()) < 4 * std / math.sqrt(param.numel()), label
            checked.add(id(param))
    assert checked == {id(p) for p in module.parameters()}


def _scramble(module: nn.Module) -> None:
    """Every parameter and BN statistic set to a value no init produces."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.fill_(5 if tensor.dtype == torch.long else 0.37)


@pytest.mark.parametrize("kind", MODULES)
def test_construction_leaves_the_fresh_init(kind):
    torch.manual_seed(0)
    assert_fresh_init(MODULES[kind]())


@pytest.mark.parametrize("kind", MODULES)
def test_reset_parameters_restores_the_init_after_scrambling(kind):
    torch.manual_seed(0)
    module = MODULES[kind]()
    _scramble(module)
    module.reset_parameters()
    assert_fresh_init(module)


@pytest.mark.parametrize("kind", MODULES)
def test_reset_parameters_is_a_function_of_the_rng_state_only(kind):
    torch.manual_seed(0)
    module = MODULES[kind]()
    scrambled = copy.deepcopy(module)
    _scramble(scrambled)
    torch.manual_seed(1)
    module.reset_parameters()
    torch.manual_seed(1)
    scrambled.reset_parameters()
    torch.testing.assert_close(scrambled.state_dict(), module.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("term_cls", [LocalTerm, ContextTerm, FusionGate])
def test_the_layer_builds_its_terms_through_their_reset_parameters(term_cls, monkeypatch):
    calls = []
    original = term_cls.reset_parameters
    monkeypatch.setattr(term_cls, "reset_parameters", lambda self: (calls.append(self), original(self))[1])
    layer = LesaAttention(32, num_heads=4, fusion="gate", feat_size=4)
    attr = {LocalTerm: "local_term", ContextTerm: "context_term", FusionGate: "fusion_gate"}[term_cls]
    assert calls == [getattr(layer, attr)]
    calls.clear()
    layer.reset_parameters()
    assert calls == [getattr(layer, attr)]


def test_models_keep_the_lesa_init_and_give_the_rest_the_resnet_init():
    torch.manual_seed(0)
    model = timm.create_model("lesa_resnet50", num_classes=10)
    for name, module in model.named_modules():
        if isinstance(module, LesaAttention) and name in ("layer3.1.conv2", "layer4.2.conv2"):
            assert_fresh_init(module)
    for conv in (model.conv1, model.layer1[0].conv2, model.layer3[0].conv2, model.layer4[0].downsample[0]):
        std = math.sqrt(2.0 / (conv.weight.shape[0] * conv.weight[0, 0].numel()))
        assert abs(conv.weight.std().item() / std - 1) < 0.1
