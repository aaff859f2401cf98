import itertools

import pytest
import torch

from lesa_core.engine.schedule import build_lr_scheduler


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
    scheduler = build_lr_scheduler(optimizer, epochs=4, steps_per_epoch=10, decay="step", warmup_epochs=0.5,
                                   milestones=[2, 3], gamma=0.1)
    lrs = _lrs(scheduler, optimizer, 40)
    assert lrs[0] == pytest.approx(0.1 * 0.001)
    assert lrs[0] < lrs[3] < lrs[5] == pytest.approx(0.1)
    assert lrs[19] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.01) and lrs[30] == pytest.approx(0.001)


def test_cosine_decays_to_min_lr_over_all_iterations():
    optimizer = _optimizer()
    scheduler = build_lr_scheduler(optimizer, epochs=2, steps_per_epoch=50, warmup_epochs=0.2)
    lrs = _lrs(scheduler, optimizer, 101)
    assert lrs[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[100] == pytest.approx(0.0, abs=1e-9)


def test_bad_schedules_fail_clearly():
    with pytest.raises(ValueError, match="needs milestones"):
        build_lr_scheduler(_optimizer(), epochs=2, steps_per_epoch=5, decay="step")
    with pytest.raises(ValueError, match="loader is empty"):
        build_lr_scheduler(_optimizer(), epochs=2, steps_per_epoch=0)
    with pytest.raises(ValueError, match="decay='linear'"):
        build_lr_scheduler(_optimizer(), epochs=2, steps_per_epoch=5, decay="linear")
