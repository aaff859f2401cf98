"""Security defaults of the embedded deployment: loopback only, token auth on, MLflow without its job runner or
telemetry, and `down` that stops its own Ray head and no other."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from orchestrator.ray_backend import local_services
from orchestrator.settings import Settings
from tests.conftest import free_port
from tests.e2e.conftest import CLI

LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def _listening() -> dict[int, str]:
    """Socket inode -> local IP of every listening TCP socket (IPv4 and IPv6) on this machine."""
    sockets = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != LISTEN:
                continue
            raw = bytes.fromhex(fields[1].split(":")[0][:width])
            # the kernel prints each 32-bit word in host (little-endian) order
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(packed)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            sockets[int(fields[9])] = str(address)
    return sockets


def _bound_addresses(pids: set[int]) -> dict[int, set[str]]:
    """pid -> the local IPs its listening sockets are bound to."""
    listening = _listening()
    bound: dict[int, set[str]] = {}
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:[") and int(link[8:-1]) in listening:
                bound.setdefault(pid, set()).add(listening[int(link[8:-1])])
    return bound


def _settings(deployment) -> Settings:
    return Settings.from_env(deployment.env)


def test_every_embedded_service_listens_on_loopback_only(deployment):
    settings = _settings(deployment)
    session = (settings.home / "ray" / "session").read_text().strip()
    ray_pids = local_services._session_pids(session, int(deployment.env["LESA_ORCH_RAY_GCS_PORT"]))
    mlflow_pid = int((settings.mlflow_dir / "server.pid").read_text())
    processes = local_services._processes()
    mlflow_pids = {mlflow_pid} | {pid for pid, (parent, _) in processes.items() if parent == mlflow_pid}
    bound = _bound_addresses(ray_pids | mlflow_pids)
    assert len([pid for pid in bound if pid in ray_pids]) >= 3  # GCS, raylet, dashboard (+ agents, client server)
    assert any(pid in mlflow_pids for pid in bound)
    exposed = {pid: addresses for pid, addresses in bound.items() if addresses - {"127.0.0.1", "::1"}}
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_the_mlflow_server_runs_without_job_runner_or_telemetry(deployment):
    settings = _settings(deployment)
    pid = int((settings.mlflow_dir / "server.pid").read_text())
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    assert environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert environ["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_ray_refuses_requests_without_the_token(deployment):
    settings = _settings(deployment)
    url = f"{settings.ray_address}/api/jobs/"
    try:
        urllib.request.urlopen(url, timeout=10)
        refused = None
    except urllib.error.HTTPError as error:
        refused = error.code
    assert refused in (401, 403)
    request = urllib.request.Request(url, headers=local_services.ray_auth_headers(settings))
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_down_stops_its_own_ray_head_and_no_other(deployment, tmp_path, monkeypatch):
    other = {"LESA_ORCH_HOME": str(tmp_path / "other"), "LESA_ORCH_RAY_PORT": str(free_port()),
             "LESA_ORCH_MLFLOW_PORT": str(free_port()), "LESA_ORCH_RAY_GCS_PORT": str(free_port())}
    monkeypatch.setenv("LESA_ORCH_RAY_GCS_PORT", other["LESA_ORCH_RAY_GCS_PORT"])
    settings = Settings.from_env(other)
    try:
        local_services.start_ray_head(settings, num_cpus=1)
        assert local_services.ray_is_up(settings)
        done = subprocess.run([CLI, "down"], capture_output=True, text=True, env=deployment.env | other, timeout=120)
        assert done.returncode == 0, done.stderr
        assert not local_services.ray_is_up(settings)
        assert local_services.ray_is_up(_settings(deployment)), "down in one home stopped another home's Ray head"
    finally:
        local_services.stop_ray_head(settings)
