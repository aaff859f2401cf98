"""Checkpoints: full training state round-trips, RNG streams resume, writes are atomic, mismatches are named."""

import random

import numpy as np
import pytest
import timm
import torch
from timm.utils import ModelEmaV3

import lesa_core  # noqa: F401  (registers the models)
from lesa_core.engine.checkpoint import load_checkpoint, save_checkpoint, unwrap_model
from lesa_core.engine.optim import OPTIM_PRESETS, build_lr_scheduler, build_optimizer


def _training_state(seed):
    torch.manual_seed(seed)
    model = timm.create_model("test_lesa_resnet", num_classes=4)
    optimizer = build_optimizer(model, OPTIM_PRESETS["lesa_imagenet"], global_batch=32)
    scheduler = build_lr_scheduler(optimizer, OPTIM_PRESETS["lesa_imagenet"], batches_per_epoch=10)
    ema = ModelEmaV3(model, decay=0.9)
    return model, optimizer, scheduler, ema


def _take_steps(model, optimizer, scheduler, ema, steps):
    for step in range(1, steps + 1):
        loss = model(torch.randn(2, 3, 32, 32)).logsumexp(dim=1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model, step=step)
        scheduler.step_update(num_updates=step)


def _random_draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_round_trip_restores_weights_optimizer_scheduler_ema_epoch_and_rng(tmp_path):
    model, optimizer, scheduler, ema = _training_state(seed=0)
    _take_steps(model, optimizer, scheduler, ema, steps=3)
    path = save_checkpoint(tmp_path / "ckpt" / "last.pth", model=model, optimizer=optimizer, scheduler=scheduler,
                           scaler=None, epoch=7, ema=ema, extra={"classes": ["a", "b"], "best_acc1": 0.5})
    draws_after_save = _random_draws()

    fresh_model, fresh_optimizer, fresh_scheduler, fresh_ema = _training_state(seed=1)
    checkpoint = load_checkpoint(path, model=fresh_model, optimizer=fresh_optimizer, scheduler=fresh_scheduler,
                                 ema=fresh_ema)
    assert _random_draws() == draws_after_save
    assert checkpoint["epoch"] == 7 and checkpoint["extra"] == {"classes": ["a", "b"], "best_acc1": 0.5}
    for saved, loaded in ((model, fresh_model), (ema, fresh_ema)):
        for (name, expected), actual in zip(saved.state_dict().items(), loaded.state_dict().values(), strict=True):
            torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=name)
    assert fresh_optimizer.state_dict()["param_groups"][0]["lr"] == optimizer.param_groups[0]["lr"]
    momentum = next(iter(optimizer.state.values()))["momentum_buffer"]
    torch.testing.assert_close(next(iter(fresh_optimizer.state.values()))["momentum_buffer"], momentum)
    assert fresh_scheduler.state_dict() == scheduler.state_dict()

    # the resumed pair continues identically
    rng_state = torch.get_rng_state()
    _take_steps(model, optimizer, scheduler, ema, steps=1)
    torch.set_rng_state(rng_state)
    _take_steps(fresh_model, fresh_optimizer, fresh_scheduler, fresh_ema, steps=1)
    torch.testing.assert_close(fresh_model.fc.weight, model.fc.weight, rtol=0, atol=0)


def test_wrapped_models_are_saved_unwrapped(tmp_path):
    model = timm.create_model("test_lesa_resnet", num_classes=4)
    compiled = torch.compile(model)
    assert unwrap_model(compiled) is model
    path = save_checkpoint(tmp_path / "c.pth", model=compiled, optimizer=None, scheduler=None, scaler=None, epoch=0)
    assert list(torch.load(path, weights_only=True)["model"]) == list(model.state_dict())
    load_checkpoint(path, model=torch.compile(timm.create_model("test_lesa_resnet", num_classes=4)))


def test_writes_are_atomic_a_failed_save_keeps_the_previous_file(tmp_path):
    model = timm.create_model("test_lesa_resnet", num_classes=4)
    path = save_checkpoint(tmp_path / "last.pth", model=model, optimizer=None, scheduler=None, scaler=None, epoch=1)
    with pytest.raises(Exception, match="pickle"):
        save_checkpoint(path, model=model, optimizer=None, scheduler=None, scaler=None, epoch=2,
                        extra={"unpicklable": lambda: None})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
    assert load_checkpoint(path, model=model)["epoch"] == 1


def test_another_architecture_is_a_value_error_naming_file_and_keys(tmp_path):
    model = timm.create_model("test_lesa_resnet", num_classes=4)
    path = save_checkpoint(tmp_path / "lesa.pth", model=model, optimizer=None, scheduler=None, scaler=None, epoch=1)
    with pytest.raises(ValueError, match=r"lesa.pth: weights do not fit LesaResNet: .*shape mismatch.*fc.weight"):
        load_checkpoint(path, model=timm.create_model("test_lesa_resnet", num_classes=5))
    with pytest.raises(ValueError, match=r"lesa.pth: .*unexpected layer3.1.conv2.local_term"):
        load_checkpoint(path, model=timm.create_model("test_lesa_resnet", num_classes=4, fusion="none"))


def test_missing_or_foreign_files_are_clear_errors(tmp_path):
    model = timm.create_model("test_lesa_resnet", num_classes=4)
    with pytest.raises(FileNotFoundError, match=r"nope\.pth: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pth", model=model)
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.pth: not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "text.pth", model=model)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(ValueError, match=r"bare\.pth: not a lesa_core\.checkpoint/1 checkpoint"):
        load_checkpoint(tmp_path / "bare.pth", model=model)
