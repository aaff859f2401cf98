"""Learning-rate schedules counted in iterations: linear warmup, then cosine or step decay.

Both engines step them with ``scheduler.step_update(num_updates)`` after every optimizer step, so a
schedule given in epochs behaves the same whatever the batch count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler

DECAYS = ("cosine", "step")


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    decay: str = "cosine",
    warmup_epochs: float = 0.0,
    warmup_factor: float = 0.001,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    min_lr: float = 0.0,
) -> Scheduler:
    """A timm scheduler over ``epochs * steps_per_epoch`` iterations.

    Args:
        optimizer: its current learning rate is the peak.
        epochs, steps_per_epoch: the length of training.
        decay: ``cosine`` to ``min_lr`` after the warmup, or ``step``: times ``gamma`` at each milestone.
        warmup_epochs: linear warmup from ``warmup_factor * lr`` (fractions of an epoch are fine).
        milestones: epochs at which ``step`` decay multiplies the learning rate by ``gamma``.
    """
    if decay not in DECAYS:
        raise ValueError(f"decay={decay!r} is not one of {DECAYS}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}: the training loader is empty")
    peak = optimizer.param_groups[0]["lr"]
    warmup = round(warmup_epochs * steps_per_epoch)
    total = epochs * steps_per_epoch
    if decay == "step":
        if not milestones:
            raise ValueError("decay='step' needs milestones")
        return MultiStepLRScheduler(
            # timm decays once t + 1 reaches decay_t; +1 makes the first update of a milestone epoch the first decayed
            optimizer, decay_t=[m * steps_per_epoch + 1 for m in milestones], decay_rate=gamma,
            warmup_t=warmup, warmup_lr_init=peak * warmup_factor, warmup_prefix=False, t_in_epochs=False,
        )  # milestones count from iteration 0, warmup included
    return CosineLRScheduler(
        optimizer, t_initial=max(total - warmup, 1), lr_min=min_lr, warmup_t=warmup,
        warmup_lr_init=peak * warmup_factor, warmup_prefix=True, t_in_epochs=False,
    )
