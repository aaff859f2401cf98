"""Grafana: provisioning that matches docker-compose.yml, and a LESA dashboard that queries every training metric."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from ray.util.metrics import Counter, Metric

from orchestrator.ray_backend.metrics import TrainingMetrics

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "dashboards" / "grafana"
# where the Ray head writes the Grafana dashboards it generates for its session
RAY_DASHBOARDS = "/tmp/ray/session_latest/metrics/grafana/dashboards"


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> source of a compose service's volumes."""
    return {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((GRAFANA / "lesa.json").read_text())


def exported_names() -> set[str]:
    """The names Ray's endpoint gives the metrics of ``TrainingMetrics``: ``ray_`` prefix, counters ``_total``."""
    metrics = TrainingMetrics("job", "", 0, torch.device("cpu"))
    return {f"ray_{metric.info['name']}{'_total' if isinstance(metric, Counter) else ''}"
            for metric in vars(metrics).values() if isinstance(metric, Metric)}


def test_provisioning_is_mounted_where_grafana_reads_it(services):
    mounts = _mounts(services["grafana"])
    assert mounts["/etc/grafana/provisioning"] == "./dashboards/grafana/provisioning"
    assert (REPO / mounts["/etc/grafana/provisioning"]).is_dir()


def test_the_datasource_is_the_compose_prometheus(services):
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    assert datasource["name"] == "Prometheus"  # the name Ray's generated dashboards default to
    listen = next(arg.split("=", 1)[1] for arg in services["prometheus"]["command"] if arg.startswith("--web.listen"))
    assert datasource["url"] == f"http://{listen}"
    assert services["grafana"]["network_mode"] == services["prometheus"]["network_mode"] == "host"


def test_dashboard_folders_hold_ours_and_the_ones_ray_generates(services):
    providers = {p["name"]: p["options"]["path"] for p in yaml.safe_load(
        (GRAFANA / "provisioning/dashboards/providers.yml").read_text())["providers"]}
    mounts = _mounts(services["grafana"])
    assert mounts[f"{providers['lesa']}/lesa.json"] == "./dashboards/grafana/lesa.json"
    assert providers["ray"] == RAY_DASHBOARDS
    # Grafana sees the head's /tmp/ray at the same path, so session_latest (an absolute symlink) resolves
    assert mounts["/tmp/ray"] == _mounts(services["ray-head"])["/tmp/ray"] == "ray-tmp"


def test_the_lesa_dashboard_shows_every_training_metric_per_job(dashboard):
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert re.fullmatch(r"label_values\(ray_lesa_\w+, job_id\)", variables["job_id"]["query"]["query"])
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            for name, selector in re.findall(r"\b(ray_lesa_\w+)(\{[^}]*\})?", target["expr"]):
                assert 'job_id=~"$job_id"' in selector, (panel["title"], target["expr"])
                queried.add(name)
    assert queried == exported_names()
