"""Ray Jobs API access: Ray's job messages as the one line a job's error holds."""

from __future__ import annotations

from orchestrator.ray_backend.jobs import message_line

FAILED_DRIVER = (
    "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
    "\x1b[36m(RayTrainWorker pid=16720)\x1b[0m   File \"dataloader.py\", line 785, in _next_data\n"
    "Traceback (most recent call last):\n"
    "ModuleNotFoundError: No module named 'lesa_core'\n\n"
)


def test_a_failed_drivers_log_tail_becomes_its_last_line():
    assert message_line(FAILED_DRIVER) == ("Job entrypoint command failed with exit code 1; "
                                       "last log line: ModuleNotFoundError: No module named 'lesa_core'")


def test_colour_codes_are_dropped_and_short_messages_kept():
    tail = "Job entrypoint command failed with exit code -9, last available logs (truncated to 20,000 chars):\n"
    assert message_line(tail + "\x1b[36m(run_trial pid=3)\x1b[0m epoch 2\n") == (
        "Job entrypoint command failed with exit code -9; last log line: (run_trial pid=3) epoch 2")
    assert message_line("Job was intentionally stopped.") == "Job was intentionally stopped."
    assert message_line("") == ""
