"""The classification loops on a real generated dataset and the tiny LESA model: schedule per iteration,
gradient accumulation, EMA, mixup, non-finite losses, evaluation, and two-process DDP."""

import math

import pytest
import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch import nn

import lesa_core  # noqa: F401  (registers the models)
from lesa_core.data.imagenet import build_imagenet_loaders, create_mixup_and_criterion, resolve_imagenet_data_config
from lesa_core.engine.classification import create_classification_model, evaluate, train_one_epoch
from lesa_core.engine.optim import OptimConfig, build_lr_scheduler, build_optimizer
from lesa_core.metrics.accuracy import topk_accuracy

IMG_SIZE = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from lesa_core.data.synthetic import write_imagenet_dataset

    return write_imagenet_dataset(tmp_path_factory.mktemp("data"), num_classes=3, train_per_class=8,
                                  val_per_class=3, image_size=IMG_SIZE)


def _setup(root, *, batch_size=6, grad_accum_steps=1):
    """Model, loaders (24 train images, 9 val), AdamW + 1 warmup epoch + cosine over 2 epochs."""
    torch.manual_seed(0)
    model = create_classification_model("test_lesa_resnet", num_classes=3, img_size=IMG_SIZE)
    data_config = resolve_imagenet_data_config(model, IMG_SIZE)
    train_loader, val_loader = build_imagenet_loaders(root, data_config=data_config, batch_size=batch_size,
                                                      num_workers=0)
    config = OptimConfig(epochs=2, optimizer="adamw", lr=2e-3, lr_reference_batch=32, weight_decay=0.05,
                         warmup_epochs=1, warmup_factor=0.0, grad_accum_steps=grad_accum_steps)
    optimizer = build_optimizer(model, config, global_batch=batch_size * grad_accum_steps)
    scheduler = build_lr_scheduler(optimizer, config, batches_per_epoch=len(train_loader))
    return model, train_loader, val_loader, optimizer, scheduler


def _run_epoch(model, loader, optimizer, scheduler, epoch, **kwargs):
    seen = []
    kwargs.setdefault("criterion", nn.CrossEntropyLoss())
    metrics = train_one_epoch(model, loader, optimizer, scheduler, device="cpu", amp=False, epoch=epoch,
                              on_step=lambda step, step_metrics: seen.append((step, step_metrics)), **kwargs)
    return metrics, seen


def test_lr_follows_warmup_then_cosine_per_iteration(root):
    model, train_loader, _, optimizer, scheduler = _setup(root)
    peak = scheduler.base_values[0]  # the optimizer starts at warmup_lr_init
    assert len(train_loader) == 4
    _, seen0 = _run_epoch(model, train_loader, optimizer, scheduler, epoch=0)
    metrics1, seen1 = _run_epoch(model, train_loader, optimizer, scheduler, epoch=1)
    assert [step for step, _ in seen0 + seen1] == list(range(8))
    lrs = [m["train/lr"] for _, m in seen0 + seen1]
    expected = [peak * s / 4 for s in range(4)] + [peak * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert lrs == pytest.approx(expected)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # cosine ends at 0 after the last update
    assert set(metrics1) == {"train/loss", "train/lr", "train/images_per_sec", "epoch"}
    assert metrics1["epoch"] == 1 and metrics1["train/lr"] == lrs[-1] and metrics1["train/images_per_sec"] > 0
    assert metrics1["train/loss"] == pytest.approx(sum(m["train/loss"] for _, m in seen1) / 4)


def test_gradient_accumulation_steps_the_optimizer_every_k_batches_and_on_the_last(root):
    model, train_loader, _, optimizer, scheduler = _setup(root, grad_accum_steps=3)
    peak = scheduler.base_values[0]  # the optimizer starts at warmup_lr_init
    _, seen = _run_epoch(model, train_loader, optimizer, scheduler, epoch=0, grad_accum_steps=3)
    # 4 batches -> windows of 3 and 1 -> 2 updates; the warmup spans those 2 updates
    assert [m["train/lr"] for _, m in seen] == pytest.approx([0.0, 0.0, 0.0, peak / 2])
    assert {int(state["step"]) for state in optimizer.state.values()} == {2}


def test_ema_is_updated_after_every_optimizer_step(root):
    model, train_loader, _, optimizer, scheduler = _setup(root)
    ema = ModelEmaV3(model, decay=0.5)
    weights = []
    train_one_epoch(model, train_loader, optimizer, scheduler, device="cpu", amp=False,
                    criterion=nn.CrossEntropyLoss(), epoch=0, ema=ema,
                    on_step=lambda step, metrics: weights.append(model.fc.weight.detach().clone()))
    expected = weights[0]  # the first update copies the model
    for weight in weights[1:]:
        expected = 0.5 * expected + 0.5 * weight
    torch.testing.assert_close(ema.module.fc.weight, expected)


def test_mixup_trains_with_soft_targets(root):
    model, train_loader, _, optimizer, scheduler = _setup(root)
    mixup_fn, criterion = create_mixup_and_criterion(3, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    metrics, _ = _run_epoch(model, train_loader, optimizer, scheduler, epoch=0, criterion=criterion,
                            mixup_fn=mixup_fn)
    assert math.isfinite(metrics["train/loss"])


def test_a_non_finite_loss_stops_naming_epoch_and_step(root):
    model, train_loader, _, optimizer, scheduler = _setup(root)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite loss nan at epoch 3 step 0"):
        _run_epoch(model, train_loader, optimizer, scheduler, epoch=3)


def test_evaluate_gives_fractions_over_the_whole_val_split(root):
    model, _, val_loader, _, _ = _setup(root)
    metrics = evaluate(model, val_loader, device="cpu", amp=False)
    assert not model.training
    with torch.no_grad():
        batches = [(model(images), labels) for images, labels in val_loader]
    logits = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert logits.shape == (9, 3)
    accuracy = topk_accuracy(logits, labels, ks=(1, 5))
    assert metrics == pytest.approx({"val/acc1": accuracy["acc1"], "val/acc5": 1.0,
                                     "val/loss": nn.functional.cross_entropy(logits, labels).item()})


def test_compile_flag_wraps_the_model():
    model = create_classification_model("test_lesa_resnet", num_classes=3, img_size=IMG_SIZE, compile_model=True)
    assert type(model._orig_mod).__name__ == "LesaResNet"


def _ddp_worker(rank, world_size, root, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model, train_loader, val_loader, optimizer, scheduler = _setup(root, batch_size=2, grad_accum_steps=2)
        ddp_model = nn.parallel.DistributedDataParallel(model)
        metrics = evaluate(ddp_model, val_loader, device="cpu", amp=False)
        train_one_epoch(ddp_model, train_loader, optimizer, scheduler, device="cpu", amp=False,
                        criterion=nn.CrossEntropyLoss(), epoch=0, grad_accum_steps=2)
        torch.save({"metrics": metrics, "val_batches": len(val_loader), "train_batches": len(train_loader),
                    "fc": model.fc.weight.detach()}, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_reduces_eval_counts_and_keeps_replicas_in_sync(root, tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, root, tmp_path / "store", tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    # 9 val images: shards of 5 and 4 in batches of 4 -> 2 and 1 batches, summed exactly once each
    assert [r["val_batches"] for r in ranks] == [2, 1] and [r["train_batches"] for r in ranks] == [6, 6]
    model, _, val_loader, _, _ = _setup(root, batch_size=2)
    single = evaluate(model, val_loader, device="cpu", amp=False)
    for r in ranks:
        assert r["metrics"] == pytest.approx(single)
    torch.testing.assert_close(ranks[0]["fc"], ranks[1]["fc"], rtol=0, atol=0)
