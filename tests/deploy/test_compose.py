"""docker-compose.yml against the Compose specification and against what lesa-orch expects of its cluster.

No Docker engine runs here: the file is interpolated with .env.example the way Compose does it, validated with the
official Compose JSON schema (shipped by the check-jsonschema dev dependency), and cross-checked with the settings,
the Dockerfile and the files it mounts.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from orchestrator.settings import DEFAULT_MLFLOW_PORT, DEFAULT_RAY_DASHBOARD_PORT, Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (REPO / "docker-compose.yml").read_text()
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}
VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
SERVICES = {"postgres", "minio", "minio-init", "mlflow", "ray-head", "ray-worker", "prometheus", "grafana"}
ONE_SHOT = {"minio-init"}


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: a default when unset or empty, an error for a missing required one."""

    def value(match: re.Match) -> str:
        name, operator, argument = match.groups()
        if env.get(name):
            return env[name]
        if operator == "?":
            raise AssertionError(f"${{{name}}} is required: {argument}")
        return argument if operator == "-" else ""

    return VARIABLE.sub(value, text).replace("$$", "$")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, values interpolated with the keys above them, single-quoted ones taken as written (as Compose
    and a shell read .env)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            value = value.strip()
            quoted = len(value) > 1 and value[0] == value[-1] == "'"
            env[key.strip()] = value[1:-1] if quoted else interpolate(value, env)
    return env


ENV_EXAMPLE = read_env_file(REPO / ".env.example")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolate(COMPOSE_TEXT, ENV_EXAMPLE))


def _command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else command


def _flags(service: dict) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in _command(service) if arg.startswith("--") and "=" in arg)


def _port_mappings(service: dict) -> Iterator[tuple[str, int, int]]:
    for mapping in service.get("ports", []):
        host_ip, host_port, container_port = mapping.rsplit(":", 2)
        yield host_ip, int(host_port), int(container_port)


def test_the_compose_file_follows_the_compose_specification(compose):
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(vendored.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
              for error in validator_class(schema).iter_errors(compose)]
    assert not errors, "\n".join(errors)
    assert set(compose["services"]) == SERVICES


def test_every_variable_without_a_default_is_set_in_env_example():
    undefaulted = {name for name, operator, _ in VARIABLE.findall(COMPOSE_TEXT) if operator != "-"}
    assert undefaulted <= {key for key, value in ENV_EXAMPLE.items() if value}, undefaulted - set(ENV_EXAMPLE)
    assert "change-me" in ENV_EXAMPLE["RAY_AUTH_TOKEN"]  # a placeholder, not a usable secret


def test_the_ray_head_serves_what_lesa_orch_talks_to(compose):
    head = compose["services"]["ray-head"]
    flags = _flags(head)
    assert _command(head)[:3] == ["ray", "start", "--head"] and "--block" in _command(head)
    assert flags["port"] == "6379" and flags["dashboard-host"] == "127.0.0.1"
    assert flags["dashboard-port"] == str(DEFAULT_RAY_DASHBOARD_PORT) and flags["include-dashboard"] == "true"
    assert head["environment"]["RAY_AUTH_MODE"] == "token"
    assert head["environment"]["RAY_AUTH_TOKEN"] == ENV_EXAMPLE["RAY_AUTH_TOKEN"]
    assert "ray-tmp:/tmp/ray" in head["volumes"]  # where Ray writes the files Prometheus and Grafana read
    assert "/api/version" in head["healthcheck"]["test"][1]  # healthy means the Jobs API answers


def test_workers_join_the_head_and_can_scale(compose):
    worker, head = compose["services"]["ray-worker"], compose["services"]["ray-head"]
    assert "container_name" not in worker and "ports" not in worker
    assert _flags(worker)["address"] == f"{_flags(head)['node-ip-address']}:{_flags(head)['port']}"
    assert worker["environment"]["RAY_AUTH_MODE"] == "token"
    assert worker["environment"]["RAY_AUTH_TOKEN"] == ENV_EXAMPLE["RAY_AUTH_TOKEN"]
    (gpus,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["driver"] == "nvidia" and "gpu" in gpus["capabilities"]
    for service in (head, worker):
        assert service["network_mode"] == "host" and service["shm_size"]


def test_published_ports_stay_on_loopback_but_what_workers_on_other_hosts_need():
    raw = yaml.safe_load(COMPOSE_TEXT)
    published = {(name, container_port): host_ip for name, service in raw["services"].items()
                 for host_ip, _, container_port in _port_mappings(service)}
    on_head_ip = {key for key, host_ip in published.items() if host_ip == "${LESA_HEAD_IP:-127.0.0.1}"}
    assert on_head_ip == {("mlflow", 5000), ("minio", 9000)}
    assert all(host_ip == "127.0.0.1" for key, host_ip in published.items() if key not in on_head_ip)
    assert ENV_EXAMPLE["LESA_HEAD_IP"] == "127.0.0.1"


def test_the_client_settings_in_env_example_reach_the_compose_services(compose):
    services = compose["services"]
    read: set[str] = set()

    class Recording(dict):
        def get(self, key, default=None):
            read.add(key)
            return super().get(key, default)

    settings = Settings.from_env(Recording(ENV_EXAMPLE))
    assert {"RAY_ADDRESS", "MLFLOW_TRACKING_URI", "LESA_ORCH_DB_URL"} <= read
    assert not settings.embedded_ray and not settings.embedded_mlflow

    assert urlparse(settings.ray_address).port == int(_flags(services["ray-head"])["dashboard-port"])
    mlflow_ports = {host_port: container for _, host_port, container in _port_mappings(services["mlflow"])}
    assert mlflow_ports[urlparse(settings.mlflow_uri).port] == DEFAULT_MLFLOW_PORT
    assert f"--port {DEFAULT_MLFLOW_PORT}" in services["mlflow"]["command"]

    created = set(re.findall(r"CREATE DATABASE (\w+);", compose["configs"]["postgres-init"]["content"]))
    init_script = {"target": "/docker-entrypoint-initdb.d/init.sql", "source": "postgres-init"}
    assert init_script in services["postgres"]["configs"]
    postgres_ports = {host_port: container for _, host_port, container in _port_mappings(services["postgres"])}
    # the Optuna URL goes to the job as a reference to the password, which the driver expands on the head
    head_env = services["ray-head"]["environment"]
    assert "${POSTGRES_PASSWORD}" in ENV_EXAMPLE["LESA_ORCH_OPTUNA_URL"]
    for url in (settings.database_url, interpolate(ENV_EXAMPLE["LESA_ORCH_OPTUNA_URL"], head_env),
                head_env["LESA_ORCH_OPTUNA_URL"]):
        parsed = urlparse(url)
        assert parsed.scheme == "postgresql+psycopg" and postgres_ports[parsed.port] == 5432
        assert parsed.path.lstrip("/") in created
        assert parsed.password == ENV_EXAMPLE["POSTGRES_PASSWORD"]


def test_long_running_services_are_health_checked_and_waited_for(compose):
    services = compose["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            assert "healthcheck" not in service and "restart" not in service
            continue
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped", name
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert condition == {"condition": expected}, (name, dependency)


def test_volumes_are_named_or_files_of_this_repository(compose):
    declared = set(compose["volumes"])
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and name not in ("ray-head", "ray-worker"):  # those also mount LESA_DATA_DIR
                assert (REPO / source).exists(), (name, source)
            elif not source.startswith("./"):
                used.add(source)
    assert used == declared


def test_the_image_has_what_the_services_run(compose):
    dockerfile = (REPO / "Dockerfile").read_text()
    for name in ("ray-head", "ray-worker", "mlflow"):
        assert compose["services"][name]["build"] == "."
    assert "pip install --no-cache-dir ." in dockerfile  # lesa-orch with ray[default] and mlflow
    for needed in ("psycopg[binary]", "boto3", "curl", "procps"):  # PostgreSQL, S3 artifacts, health checks
        assert needed in dockerfile
    included = (REPO / ".dockerignore").read_text()
    for package in ("lesa_core", "orchestrator"):
        assert f"COPY {package} {package}" in dockerfile and f"!{package}/" in included
