"""Ray Jobs API access: submit a lesa-orch job, read its state and logs, stop it. Always authenticated."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ray.job_submission import JobStatus, JobSubmissionClient

from ..settings import Settings
from .local_services import ray_auth_headers

ENTRY_MODULE = "orchestrator.ray_backend.entry"
AGENT_WAIT_S = 90.0
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# Ray job status -> lesa-orch job state
RAY_TO_JOB_STATE = {
    JobStatus.PENDING: "SUBMITTED",
    JobStatus.RUNNING: "RUNNING",
    JobStatus.SUCCEEDED: "SUCCEEDED",
    JobStatus.FAILED: "FAILED",
    JobStatus.STOPPED: "CANCELLED",
}


class RayUnreachableError(RuntimeError):
    """The Ray Jobs API at the configured address did not answer or refused the token."""


@dataclass(frozen=True)
class RayJobInfo:
    submission_id: str
    state: str
    message: str


def connect(settings: Settings) -> JobSubmissionClient:
    """A Jobs API client for the settings' address, sending the cluster token."""
    try:
        return JobSubmissionClient(settings.ray_address, headers=ray_auth_headers(settings))
    except Exception as error:  # Ray raises ConnectionError, RuntimeError or its own AuthenticationError
        raise RayUnreachableError(f"Ray at {settings.ray_address} is unreachable: {error}") from None


def entrypoint(settings: Settings) -> str:
    """The driver command: this interpreter on the embedded cluster, the image's ``python`` elsewhere."""
    python = sys.executable if settings.embedded_ray else "python"
    return f"{shlex.quote(python)} -m {ENTRY_MODULE}"


def submit(
    client: JobSubmissionClient,
    settings: Settings,
    *,
    submission_id: str,
    job_id: str,
    spec: dict,
    env: dict[str, str],
    agent_timeout: float = AGENT_WAIT_S,
) -> str:
    """Submits the job driver; the spec and job id travel as environment variables of the driver.

    A head that has just started answers "No available agent" until its job agent registers; that one
    answer is retried for ``agent_timeout`` seconds.
    """
    runtime_env = {"env_vars": {**env, "LESA_JOB_ID": job_id, "LESA_SUBMISSION_ID": submission_id,
                                "LESA_JOB_SPEC": json.dumps(spec)}}
    deadline = time.monotonic() + agent_timeout
    while True:
        try:
            return client.submit_job(
                entrypoint=entrypoint(settings), submission_id=submission_id, runtime_env=runtime_env,
                metadata={"lesa.job_id": job_id, "name": spec["name"]},
            )
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def info(client: JobSubmissionClient, submission_id: str) -> RayJobInfo:
    details = client.get_job_info(submission_id)
    return RayJobInfo(submission_id, RAY_TO_JOB_STATE[JobStatus(details.status)], message_line(details.message or ""))


def message_line(message: str) -> str:
    """Ray's job message in one line: a failed driver's message carries up to 20,000 characters of its log, of
    which the last line (usually the exception) is kept; ``lesa-orch logs`` has the rest."""
    head, _, log_tail = message.partition("\n")
    head = head.split(", last available logs")[0]
    lines = [ANSI_ESCAPE.sub("", line).strip() for line in log_tail.splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    return f"{head}; last log line: {last}" if last else head


def logs(client: JobSubmissionClient, submission_id: str) -> str:
    return client.get_job_logs(submission_id)


def follow_logs(client: JobSubmissionClient, submission_id: str) -> Iterator[str]:
    """Yields log chunks until the job ends (Ray's log tail is async; this drives it from sync code)."""
    stream = client.tail_job_logs(submission_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(stream.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.close()


def stop(client: JobSubmissionClient, submission_id: str) -> bool:
    return client.stop_job(submission_id)
