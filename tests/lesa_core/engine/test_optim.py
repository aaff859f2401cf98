"""The one optimizer + schedule factory: per-update warmup, cosine and step decay, presets, optimizer choice."""

import itertools

import pytest
import torch
from torch import nn

from lesa_core.engine.optim import OPTIM_PRESETS, OptimConfig, build_lr_scheduler, build_optimizer


def _lrs(scheduler, optimizer, steps):
    values = []
    for step in range(steps):
        scheduler.step_update(num_updates=step)
        values.append(optimizer.param_groups[0]["lr"])
    return values


def _optimizer(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_step_decay_warms_up_then_drops_at_the_milestone_epochs():
    optimizer = _optimizer()
    config = OptimConfig(epochs=4, decay="step", warmup_epochs=0.5, milestones=(2, 3), gamma=0.1)
    lrs = _lrs(build_lr_scheduler(optimizer, config, batches_per_epoch=10), optimizer, 40)
    assert lrs[0] == pytest.approx(0.1 * 0.001)
    assert lrs[0] < lrs[3] < lrs[5] == pytest.approx(0.1)
    assert lrs[19] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.01) and lrs[30] == pytest.approx(0.001)


def test_cosine_decays_to_min_lr_over_all_updates_and_counts_accumulated_batches_once():
    optimizer = _optimizer()
    config = OptimConfig(epochs=2, warmup_epochs=0.2)
    lrs = _lrs(build_lr_scheduler(optimizer, config, batches_per_epoch=50), optimizer, 101)
    assert lrs[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[100] == pytest.approx(0.0, abs=1e-9)
    accumulated = build_lr_scheduler(_optimizer(), OptimConfig(epochs=2, grad_accum_steps=4), batches_per_epoch=50)
    assert accumulated.t_initial == 2 * 13  # ceil(50 / 4) updates an epoch


def test_the_official_imagenet_preset_warms_up_from_zero_with_nesterov_and_decay_on_every_parameter():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model[1].weight.requires_grad_(False)  # frozen parameters are left out
    preset = OPTIM_PRESETS["lesa_imagenet"]
    optimizer = build_optimizer(model, preset, global_batch=256)
    assert isinstance(optimizer, torch.optim.SGD)
    (group,) = optimizer.param_groups
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 8e-5
    assert group["lr"] == pytest.approx(0.05 * 256 / 128)
    assert len(group["params"]) == 3  # conv weight and bias, BN bias
    lrs = _lrs(build_lr_scheduler(optimizer, preset, batches_per_epoch=10), optimizer, 2)
    assert lrs[0] == 0.0


def test_defaults_are_plain_momentum_sgd_and_adamw_is_adamw():
    params = nn.Linear(2, 2)
    sgd = build_optimizer(params, OptimConfig(lr=0.2, lr_reference_batch=4), global_batch=8)
    assert not sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["lr"] == pytest.approx(0.4)
    adamw = build_optimizer(params, OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05), global_batch=256)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05


def test_bad_schedules_fail_clearly():
    with pytest.raises(ValueError, match="needs milestones"):
        OptimConfig(epochs=2, decay="step")
    with pytest.raises(ValueError, match="loader is empty"):
        build_lr_scheduler(_optimizer(), OptimConfig(epochs=2), batches_per_epoch=0)
    with pytest.raises(ValueError, match="decay='linear'"):
        OptimConfig(epochs=2, decay="linear")
    with pytest.raises(ValueError, match=r"milestones \[5\] are outside"):
        build_lr_scheduler(_optimizer(), OptimConfig(epochs=2, decay="step", milestones=(5,)), batches_per_epoch=3)
