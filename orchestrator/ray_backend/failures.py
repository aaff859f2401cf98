"""One-line causes of failed runs and trials, found inside Ray's wrappers.

A failed worker reaches the driver as a ``WorkerGroupError`` around the worker's own exception; a failed search
trial, as a task error around that. Their text is a traceback with log prefixes, so users would read a log tail
where one line (``RuntimeError: 16 unreadable images in a row up to .../img4.JPEG: check the dataset``) says it.
"""

from __future__ import annotations

from ray.exceptions import RayTaskError
from ray.train import ControllerError, WorkerGroupError

MAX_CHARS = 500


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception: a worker group's lowest failing rank, a controller's failure, a task's cause."""
    while True:
        if isinstance(error, WorkerGroupError) and error.worker_failures:
            inner = error.worker_failures[min(error.worker_failures)]
        elif isinstance(error, ControllerError):
            inner = error.controller_failure
        elif isinstance(error, RayTaskError) and isinstance(error.cause, BaseException):
            inner = error.cause
        else:
            return error
        if inner is error:
            return error
        error = inner


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` of the root cause, at most ``MAX_CHARS`` characters."""
    cause = root_cause(error)
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    text = f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 3] + "..."
