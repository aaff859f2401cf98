"""The embedded default: a local Ray head (dashboard + Jobs API, token auth on) and a local MLflow server.

``lesa-orch up`` starts both as background processes that outlive the CLI; ``down`` stops them. Ray's
token authentication stays on: the token lives in ``<home>/ray/auth_token`` and every client sends it.
MLflow runs on SQLite with local artifacts under ``<home>/mlflow``.

Both listen on 127.0.0.1 only: the Ray head is started as a single-machine cluster (its GCS, raylet, agents and
client server bind loopback), MLflow with ``--host 127.0.0.1``, its job runner off and its telemetry off. ``down``
stops this home's Ray head only, never another cluster on the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..settings import Settings

HEALTH_TIMEOUT_S = 120.0
STOP_GRACE_S = 3.0  # Ray's GCS and monitor take longer to honour SIGTERM than a user waits; SIGKILL then
# Ray binds its servers to the node IP; as a single-machine cluster (this switch, which Ray reads on every
# platform) the node IP is loopback, so nothing of the embedded head is reachable from another machine.
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# MLflow's server: no job runner (GenAI scoring, ~2 GB of consumer processes, runs code), no usage reports
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                     "DO_NOT_TRACK": "true"}
RAY_WORKER_PORTS = (10002, 19999)  # Ray's default --min-worker-port / --max-worker-port


class ServiceError(RuntimeError):
    """A local service could not be started, stopped or reached; the message says which and why."""


def _bin(name: str) -> str:
    """An executable of this environment (the venv's ``ray``), falling back to PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def token_path(settings: Settings) -> Path:
    return settings.home / "ray" / "auth_token"


def ensure_ray_token(settings: Settings) -> str:
    """The embedded cluster's auth token, created (mode 600) on first use."""
    path = token_path(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def ray_auth_env(settings: Settings) -> dict[str, str]:
    """Environment that makes Ray processes and clients use the embedded cluster's token."""
    ensure_ray_token(settings)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path(settings))}


def ray_auth_headers(settings: Settings) -> dict[str, str]:
    """HTTP headers for the Ray dashboard / Jobs API: the embedded token, or ``RAY_AUTH_TOKEN`` if set."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if token is None and settings.embedded_ray:
        token = ensure_ray_token(settings)
    elif token is None and os.environ.get("RAY_AUTH_TOKEN_PATH"):
        token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _http_ok(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> bool:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def ray_is_up(settings: Settings) -> bool:
    return _http_ok(f"{settings.ray_address.rstrip('/')}/api/version", ray_auth_headers(settings))


def mlflow_is_up(settings: Settings) -> bool:
    return _http_ok(f"{settings.mlflow_uri.rstrip('/')}/health")


PROBE_TIMEOUT_S = 2.0
_REFUSED = (401, 403)  # Ray's token middleware: 401 no token, 403 a wrong one


def http_problem(url: str, headers: dict[str, str] | None = None, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why ``url`` did not answer 200 within ``timeout`` seconds, in a few words; None when it did."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, TimeoutError):
            return f"no answer within {timeout:g} s"
        return getattr(reason, "strerror", None) or str(reason)


def ray_problem(settings: Settings, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Ray dashboard did not answer an authenticated request (token refused included); None when it did."""
    try:
        headers = ray_auth_headers(settings)
    except OSError as error:
        return f"auth token unreadable: {error.strerror}"
    problem = http_problem(f"{settings.ray_address.rstrip('/')}/api/version", headers, timeout)
    if problem in {f"HTTP {code}" for code in _REFUSED}:
        return f"auth token refused ({problem})"
    return problem


def ray_token_auth_on(settings: Settings, timeout: float = PROBE_TIMEOUT_S) -> bool | None:
    """Whether the Ray dashboard refuses a request that carries no token; None when it did not answer at all."""
    problem = http_problem(f"{settings.ray_address.rstrip('/')}/api/version", None, timeout)
    if problem is None:
        return False
    return True if problem in {f"HTTP {code}" for code in _REFUSED} else None


def mlflow_problem(settings: Settings, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the MLflow server did not answer its health check; None when it did or the tracking URI is no server."""
    if not settings.mlflow_uri.startswith(("http://", "https://")):
        return None
    return http_problem(f"{settings.mlflow_uri.rstrip('/')}/health", None, timeout)


def _wait_until(check, what: str, log: Path | None, timeout: float = HEALTH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    hint = f"; see {log}" if log else ""
    raise ServiceError(f"{what} did not become healthy within {timeout:.0f}s{hint}")


def free_port() -> int:
    """A loopback port nothing listens on now (released at once, for a server to bind next)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker_port_range(*reserved: int) -> tuple[int, int]:
    """Ports for Ray's workers: its default 10002-19999, unless one of ``reserved`` (the head's own ports) is in
    it, in which case the first 10,000-port window from 20000 up that holds none (Ray will not start otherwise)."""
    low, high = RAY_WORKER_PORTS
    if not any(low <= port <= high for port in reserved):
        return low, high
    for low in range(20000, 64536, 1000):
        high = min(low + 9999, 65535)
        if not any(low <= port <= high for port in reserved):
            return low, high
    raise ServiceError(f"no range for Ray's worker ports beside ports {sorted(reserved)}")


def start_ray_head(settings: Settings, *, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """``ray start --head`` with the dashboard on the settings' address (loopback), token auth on."""
    if ray_is_up(settings):
        return
    port = urlparse(settings.ray_address).port
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log = settings.logs_dir / "ray-start.log"
    gcs_port = os.environ.get("LESA_ORCH_RAY_GCS_PORT", "6379")
    command = [_bin("ray"), "start", "--head", f"--port={gcs_port}", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={port}", "--include-dashboard=true", "--disable-usage-stats",
               f"--temp-dir={ray_temp_dir(settings)}"]
    agent_port = free_port()  # Ray's fixed default (52365) is taken by any other head on the machine
    low, high = worker_port_range(int(gcs_port), port or 8265, agent_port)
    command += [f"--min-worker-port={low}", f"--max-worker-port={high}", f"--dashboard-agent-listen-port={agent_port}"]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        command.append(f"--num-gpus={num_gpus}")
    environment = {**os.environ, **ray_auth_env(settings), **RAY_LOOPBACK_ENV}
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=environment)
    if done.returncode != 0:
        raise ServiceError(f"ray start --head failed (exit {done.returncode}); see {log}")
    _wait_until(lambda: ray_is_up(settings), f"Ray dashboard at {settings.ray_address}", log)
    session = _ray_session(int(gcs_port))
    if session:
        _session_file(settings).write_text(session)


def ray_temp_dir(settings: Settings) -> Path:
    """Ray's temp folder for this home's head, its own so that heads of other homes on the machine do not cross.

    Ray Jobs finds the GCS a driver connects to in ``<temp>/ray_current_cluster``, which the latest head started on
    the machine writes: with one shared folder a job could run on another home's cluster. Short, because Ray's Unix
    socket paths under it must stay within 107 bytes.
    """
    digest = hashlib.sha1(str(settings.home).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"lesa-ray-{digest}"


def _session_file(settings: Settings) -> Path:
    return settings.home / "ray" / "session"


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process this user can see (Linux ``/proc``)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry.name)] = (parent, command)
    return table


def _ray_session(gcs_port: int) -> str:
    """The session name of the Ray head whose GCS listens on ``gcs_port`` ('' if none is found)."""
    for _, command in _processes().values():
        if "gcs_server" in command and f"--gcs_server_port={gcs_port}" in command:
            for part in command.split():
                if part.startswith("--session-name="):
                    return part.split("=", 1)[1]
    return ""


def _session_pids(session: str, gcs_port: int) -> set[int]:
    """The processes of one Ray head: those with its session or its GCS address in a flag, and their descendants."""
    table = _processes()
    flag = re.compile(rf"--[a-z_-]+=(\S*/)?{re.escape(session)}(/|\s|$)|--address=127\.0\.0\.1:{gcs_port}\s")
    pids = {pid for pid, (_, command) in table.items() if flag.search(command + " ")}
    grown = True
    while grown:
        children = {pid for pid, (parent, _) in table.items() if parent in pids} - pids
        pids |= children
        grown = bool(children)
    return pids - {os.getpid()}


def stop_ray_head(settings: Settings) -> None:
    """Stops this home's Ray head (SIGTERM, then SIGKILL after ``STOP_GRACE_S``); other clusters keep running."""
    if not Path("/proc").is_dir():
        raise ServiceError("stopping the embedded Ray head needs Linux /proc; stop it with `ray stop`")
    session_file = _session_file(settings)
    gcs_port = int(os.environ.get("LESA_ORCH_RAY_GCS_PORT", "6379"))
    session = session_file.read_text().strip() if session_file.exists() else _ray_session(gcs_port)
    if not session:
        return
    pids = _session_pids(session, gcs_port)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_GRACE_S
        while pids and time.monotonic() < deadline:
            pids = {pid for pid in pids if _alive(pid)}
            time.sleep(0.2)
        if not pids:
            break
    session_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _mlflow_pid_file(settings: Settings) -> Path:
    return settings.mlflow_dir / "server.pid"


def start_mlflow_server(settings: Settings) -> bool:
    """``mlflow server`` on SQLite + local artifacts, detached from the CLI's process group.

    Returns whether it started one (False: a server was already up).
    """
    if mlflow_is_up(settings):
        return False
    parsed = urlparse(settings.mlflow_uri)
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log = settings.logs_dir / "mlflow-server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{settings.mlflow_dir / 'mlflow.db'}",
        "--artifacts-destination", str(settings.mlflow_dir / "artifacts"),
        "--host", parsed.hostname or "127.0.0.1", "--port", str(parsed.port or 5000), "--workers", "1",
    ]
    environment = {**os.environ, **MLFLOW_SERVER_ENV}
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=environment)
    _mlflow_pid_file(settings).write_text(str(process.pid))
    try:
        _wait_until(lambda: mlflow_is_up(settings), f"MLflow server at {settings.mlflow_uri}", log)
    except ServiceError:
        stop_mlflow_server(settings)
        raise
    return True


def stop_mlflow_server(settings: Settings) -> None:
    pid_file = _mlflow_pid_file(settings)
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            os.killpg(pid, 0)
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)


@dataclass(frozen=True)
class ServicesStatus:
    ray_address: str
    ray_up: bool
    mlflow_uri: str
    mlflow_up: bool


def status(settings: Settings) -> ServicesStatus:
    return ServicesStatus(settings.ray_address, ray_is_up(settings), settings.mlflow_uri, mlflow_is_up(settings))


def up(settings: Settings, *, num_cpus: int | None = None, num_gpus: int | None = None) -> ServicesStatus:
    """Starts whatever of the embedded Ray head and MLflow server is not running (and is embedded).

    If the Ray head fails to start, an MLflow server this call started is stopped again: no half-up deployment.
    """
    started_mlflow = settings.embedded_mlflow and start_mlflow_server(settings)
    if settings.embedded_ray:
        try:
            start_ray_head(settings, num_cpus=num_cpus, num_gpus=num_gpus)
        except ServiceError:
            if started_mlflow:
                stop_mlflow_server(settings)
            raise
    return status(settings)


def down(settings: Settings) -> ServicesStatus:
    if settings.embedded_ray:
        stop_ray_head(settings)
    if settings.embedded_mlflow:
        stop_mlflow_server(settings)
    return status(settings)
