"""Prometheus finds every Ray node through the service-discovery file the Ray head writes."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

REPO = Path(__file__).resolve().parents[2]


def test_prometheus_scrapes_the_nodes_ray_lists_for_file_sd():
    config = yaml.safe_load((REPO / "dashboards/prometheus/prometheus.yml").read_text())
    (ray,) = [job for job in config["scrape_configs"] if job["job_name"] == "ray"]
    (discovery,) = ray["file_sd_configs"]
    # Ray keeps this file (a link into its current session folder) under its temp dir, /tmp/ray by default
    assert discovery["files"] == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"]


def test_the_compose_prometheus_reads_the_heads_temp_dir_and_this_config():
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in services["prometheus"]["volumes"]}
    head = {volume.split(":")[1]: volume.split(":")[0] for volume in services["ray-head"]["volumes"]}
    assert mounts["/tmp/ray"] == head["/tmp/ray"] == "ray-tmp"
    assert mounts["/etc/prometheus/prometheus.yml"] == "./dashboards/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
