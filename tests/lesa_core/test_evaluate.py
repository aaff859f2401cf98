"""``python -m lesa_core.evaluate``: our checkpoints, bare state dicts, and one-line errors."""

import subprocess
import sys

import pytest
import timm
import torch

from lesa_core.data.synthetic import write_imagenet_dataset
from lesa_core.engine.checkpoint import save_checkpoint
from lesa_core.evaluate import evaluate_checkpoint, main


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_imagenet_dataset(tmp_path_factory.mktemp("data"), num_classes=3, train_per_class=1,
                                  val_per_class=4, image_size=40, flat_val=True)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("test_lesa_resnet", num_classes=3, img_size=32)


def _cli(*args):
    return ["--model", "test_lesa_resnet", "--workers", "0", "--batch-size", "5", *args]


def test_our_checkpoint_is_evaluated_at_its_training_size_and_classes(root, model, tmp_path, capsys):
    classes = ["n00000000", "n00000001", "n00000002"]
    path = save_checkpoint(tmp_path / "best.pth", model=model, optimizer=None, scheduler=None, scaler=None,
                           epoch=3, extra={"classes": classes, "img_size": 32})
    metrics = evaluate_checkpoint(model_name="test_lesa_resnet", checkpoint=path, data=root, workers=0)
    assert set(metrics) == {"val/acc1", "val/acc5", "val/loss"} and metrics["val/acc5"] == 1.0
    assert main(_cli("--checkpoint", str(path), "--data", str(root))) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith(f"top-1 {100 * metrics['val/acc1']:.2f}%  top-5 100.00%")


def test_a_bare_state_dict_takes_its_classes_from_train(root, model, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, wrapped)
    results = [evaluate_checkpoint(model_name="test_lesa_resnet", checkpoint=p, data=root, img_size=32, workers=0)
               for p in (path, wrapped)]
    assert results[0] == results[1]


def test_missing_file_or_another_architecture_is_one_line_and_exit_1(root, tmp_path, capsys):
    assert main(_cli("--checkpoint", str(tmp_path / "missing.pth"), "--data", str(root))) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing.pth'}: no such checkpoint file\n"
    other = timm.create_model("test_lesa_resnet", num_classes=3, fusion="none")
    torch.save(other.state_dict(), tmp_path / "other.pth")
    assert main(_cli("--checkpoint", str(tmp_path / "other.pth"), "--data", str(root))) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'other.pth'}: weights do not fit LesaResNet")


def test_the_module_runs_as_a_program_and_exits_non_zero_on_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lesa_core.evaluate", *_cli("--checkpoint", str(tmp_path / "x.pth"),
                                                                              "--data", str(tmp_path))],
                          capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip() == f"error: {tmp_path / 'x.pth'}: no such checkpoint file"
