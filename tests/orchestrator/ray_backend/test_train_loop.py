import pyarrow.fs
import ray.train

from orchestrator.ray_backend.train_loop import CHECKPOINT_FILE, complete_checkpoint


def _checkpoint(path) -> ray.train.Checkpoint:
    return ray.train.Checkpoint(str(path), filesystem=pyarrow.fs.LocalFileSystem())


def _folder(run, name, complete=True):
    folder = run / name
    folder.mkdir(parents=True)
    if complete:
        (folder / CHECKPOINT_FILE).write_bytes(b"weights")
    return folder


def test_a_complete_checkpoint_is_used_as_is(tmp_path):
    latest = _folder(tmp_path, "checkpoint_2026-01-01_00-00-02.000000")
    assert complete_checkpoint(_checkpoint(latest)).path == str(latest)


def test_an_incomplete_checkpoint_falls_back_to_the_newest_complete_one(tmp_path):
    _folder(tmp_path, "checkpoint_2026-01-01_00-00-01.000000")
    second = _folder(tmp_path, "checkpoint_2026-01-01_00-00-02.000000")
    latest = _folder(tmp_path, "checkpoint_2026-01-01_00-00-03.000000", complete=False)
    assert complete_checkpoint(_checkpoint(latest)).path == str(second)


def test_no_complete_checkpoint_means_starting_over(tmp_path):
    latest = _folder(tmp_path, "checkpoint_2026-01-01_00-00-03.000000", complete=False)
    assert complete_checkpoint(_checkpoint(latest)) is None
