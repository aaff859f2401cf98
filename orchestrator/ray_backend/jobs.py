"""Ray Jobs API access: submit a lesa-orch job, read its state and logs, stop it. Always authenticated.

Ray shows a job's environment and metadata to whoever can read the cluster, so a submission carries no plain
secret: the spec's literal secrets go as ``***`` (the job never reads them) and its ``${VAR}`` references as they
are, for the driver to expand; a literal URL password, in the spec or the driver's environment, is refused.
"""

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

from ..redaction import (
    ENV_REFERENCE,
    find_plain_url_password,
    holds_plain_text,
    is_secret_key,
    redact_secrets,
    redact_url,
)
from ..settings import Settings
from .local_services import ray_auth_headers

ENTRY_MODULE = "orchestrator.ray_backend.entry"
AGENT_WAIT_S = 90.0
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
SPEC_VAR = "LESA_JOB_SPEC"
ENV_TEMPLATES_VAR = "LESA_ENV_TEMPLATES"  # {name: value with ${VAR} references} the driver expands itself
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

    Raises:
        ValueError: the spec or ``env`` holds a literal URL password (or ``env`` a secret-named value); the one-line
            message names the field or variable.
    """
    runtime_env = {"env_vars": job_env(spec, env, job_id=job_id, submission_id=submission_id)}
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


def job_env(spec: dict, env: dict[str, str], *, job_id: str, submission_id: str) -> dict[str, str]:
    """The driver's environment as Ray gets it: ``env``, the ids and the spec, none of them holding a plain secret.

    Ray expands ``${VAR}`` in every value it is given (an unset one to nothing), so the spec's dollars travel
    JSON-escaped, and values with references also go as written in ``LESA_ENV_TEMPLATES``, for the driver to expand
    with a clear error for an unset variable.
    """
    found = find_plain_url_password(spec)
    if found:
        path, value = found
        raise ValueError(f"{path}: the password in {redact_url(value)} would be shown with the Ray job; "
                         "write it as ${VAR} and set VAR where the job runs")
    for name, value in env.items():
        if is_secret_key(name) and not name.endswith(("_PATH", "_FILE")) and holds_plain_text(value):
            raise ValueError(f"{name} looks like a secret and would be shown with the Ray job; "
                             "give the cluster's nodes the variable instead")
        if find_plain_url_password(value):
            raise ValueError(f"{name}={redact_url(value)}: the password would be shown with the Ray job; "
                             "write it as ${VAR} (e.g. postgresql://user:${DB_PASSWORD}@host/db) and set VAR on the "
                             "cluster's nodes")
    templates = {name: value for name, value in env.items() if ENV_REFERENCE.search(value)}
    shipped = {**env, "LESA_JOB_ID": job_id, "LESA_SUBMISSION_ID": submission_id,
               SPEC_VAR: _dollar_escaped_json(redact_secrets(spec))}
    if templates:
        shipped[ENV_TEMPLATES_VAR] = _dollar_escaped_json(templates)
    return shipped


def _dollar_escaped_json(data: dict) -> str:
    # "$" appears only inside JSON strings, where \u0024 means the same to json.loads and nothing to Ray
    return json.dumps(data).replace("$", "\\u0024")


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
