"""One-line causes of failures, found inside Ray's own exception wrappers."""

from __future__ import annotations

from ray.exceptions import RayTaskError
from ray.train import ControllerError, WorkerGroupError

from orchestrator.ray_backend.failures import MAX_CHARS, one_line, root_cause


def test_a_worker_group_error_gives_its_lowest_failing_rank():
    error = WorkerGroupError("rank 0 and 1 failed\n[Rank 0 Error Snippet]: ...",
                             {1: ValueError("rank one"), 0: RuntimeError("rank zero\n  more detail")})
    assert one_line(error) == "RuntimeError: rank zero"


def test_a_trial_task_error_is_unwrapped_down_to_the_workers_exception():
    worker_group = WorkerGroupError("snippet", {0: OSError("disk full")})
    task = RayTaskError("run_trial", "Traceback (most recent call last): ...", worker_group)
    assert root_cause(task.as_instanceof_cause()).args == ("disk full",)
    assert one_line(ControllerError(task)) == "OSError: disk full"


def test_plain_errors_keep_their_type_and_long_ones_are_cut():
    assert one_line(KeyError()) == "KeyError"
    assert one_line(ValueError("\n\n  second line is the first with text\n")) == (
        "ValueError: second line is the first with text")
    long = one_line(RuntimeError("x" * 2000))
    assert len(long) == MAX_CHARS and long.endswith("...")
    assert one_line(WorkerGroupError("no failures recorded", {})).startswith("WorkerGroupError: Training failed")
