"""The models compile as one graph (``torch.compile(fullgraph=True)``) and export (``torch.export``).

The ``eager``/``aot_eager`` backends keep this cheap on CPU: fullgraph fails on any graph break whatever
the backend, and aot_eager also runs AOTAutograd's train-mode graph with its backward.
"""

import pytest
import timm
import torch

import lesa_core  # noqa: F401  (registers the models)

VARIANTS = {
    "rel2d_bn": {},
    "official_flat1d": {"pos_embed": "flat1d", "sim_norm": "bn", "img_size": 64},
    "fused_scaled": {"sim_norm": "scaled", "fusion": "gate_both"},
    "sa": {"fusion": "none"},
}


def _model(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_lesa_resnet", num_classes=10, **VARIANTS[variant])


@pytest.mark.parametrize("variant", ["official_flat1d", "fused_scaled", "sa"])
def test_compile_fullgraph_eval_matches_eager(variant):
    model = _model(variant).eval()
    x = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)


@pytest.mark.slow
def test_compile_fullgraph_train_step_matches_eager():
    model = _model("rel2d_bn").train()
    x = torch.randn(2, 3, 64, 64)
    model(x).logsumexp(dim=1).mean().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled(x).logsumexp(dim=1).mean().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_matches_eager(variant):
    model = _model(variant).eval()
    x = torch.randn(2, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-6)
