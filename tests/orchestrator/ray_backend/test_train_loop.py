import pyarrow.fs
import ray.train

from orchestrator.ray_backend.train_loop import CHECKPOINT_FILE, restore_point


def _checkpoint(path) -> ray.train.Checkpoint:
    return ray.train.Checkpoint(str(path), filesystem=pyarrow.fs.LocalFileSystem())


def _folder(run, name, complete=True):
    folder = run / name
    folder.mkdir(parents=True)
    if complete:
        (folder / CHECKPOINT_FILE).write_bytes(b"weights")
    return folder


def test_a_complete_reported_checkpoint_is_used_as_is(tmp_path):
    latest = _folder(tmp_path / "job", "checkpoint_2026-01-01_00-00-02.000000")
    assert restore_point(_checkpoint(latest), str(tmp_path), "job").path == str(latest)


def test_an_incomplete_checkpoint_falls_back_to_the_newest_complete_one(tmp_path):
    run = tmp_path / "job"
    _folder(run, "checkpoint_2026-01-01_00-00-01.000000")
    second = _folder(run, "checkpoint_2026-01-01_00-00-02.000000")
    latest = _folder(run, "checkpoint_2026-01-01_00-00-03.000000", complete=False)
    assert restore_point(_checkpoint(latest), str(tmp_path), "job").path == str(second)


def test_checkpoints_ray_never_registered_are_found_in_storage(tmp_path):
    newest = _folder(tmp_path / "job", "checkpoint_2026-01-01_00-00-05.000000")
    _folder(tmp_path / "job", "checkpoint_2026-01-01_00-00-04.000000")
    _folder(tmp_path / "other-job", "checkpoint_2026-01-01_00-00-09.000000")
    assert restore_point(None, str(tmp_path), "job").path == str(newest)


def test_a_fresh_run_starts_from_nothing(tmp_path):
    assert restore_point(None, str(tmp_path), "job") is None
    latest = _folder(tmp_path / "job", "checkpoint_2026-01-01_00-00-03.000000", complete=False)
    assert restore_point(_checkpoint(latest), str(tmp_path), "job") is None
