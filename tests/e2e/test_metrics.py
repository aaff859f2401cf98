"""Live training metrics: a real job's workers export, through Ray's metrics agent, every LESA metric that
dashboards/grafana/lesa.json queries, labelled with the job id. Read the way Prometheus reads them: the targets of
the service-discovery file in the head's session folder, then each target's /metrics."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from orchestrator.ray_backend.compat import PROMETHEUS_SERVICE_DISCOVERY_FILE
from orchestrator.ray_backend.local_services import ensure_ray_token
from orchestrator.settings import Settings
from tests.e2e.conftest import set_args
from tests.e2e.test_jobs import tiny_imagenet

pytestmark = pytest.mark.slow

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "grafana" / "lesa.json"


def _dashboard_metrics() -> set[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {name for panel in panels for target in panel["targets"]
            for name in re.findall(r"\bray_lesa_\w+", target["expr"])}


def _scrape_targets(deployment) -> list[str]:
    """``host:port`` of every metrics endpoint the head lists for Prometheus."""
    settings = Settings.from_env(deployment.env)
    request = urllib.request.Request(f"{settings.ray_address}/nodes?view=summary",
                                     headers={"Authorization": f"Bearer {ensure_ray_token(settings)}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        nodes = json.load(response)["data"]["summary"]
    session = next(Path(node["raylet"]["sessionDir"]) for node in nodes if node["raylet"].get("isHeadNode"))
    try:
        groups = json.loads((session / PROMETHEUS_SERVICE_DISCOVERY_FILE).read_text())
    except (OSError, ValueError):  # not written yet
        return []
    return [target for group in groups for target in group["targets"]]


def _exported(targets: list[str], job_id: str) -> set[str]:
    """Names of the LESA samples the targets serve for ``job_id`` (a plain job: empty ``trial_id``)."""
    names = set()
    for target in targets:
        try:
            with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError):
            continue
        for name, labels in re.findall(r"^(ray_lesa_\w+)\{([^}]*)\}", text, flags=re.MULTILINE):
            if f'job_id="{job_id}"' in labels and 'trial_id=""' in labels:
                names.add(name)
    return names


def test_every_metric_the_lesa_dashboard_queries_is_exported_for_the_job(deployment):
    expected = _dashboard_metrics()
    if not torch.cuda.is_available():
        expected.discard("ray_lesa_train_gpu_memory_bytes")  # CUDA workers only
    overrides = set_args(tiny_imagenet(deployment, epochs=2, per_class=16))
    done = deployment.cli("submit", "jobs/quickstart_imagenet.yaml", *overrides, "--detach", check=True)
    job_id = re.search(r"submitted (\S+)", done.stdout).group(1)
    # gauges leave the endpoint ~2 report intervals (20 s) after their worker stops, so scrape while it trains
    seen: set[str] = set()
    deadline = time.monotonic() + 150
    while not expected <= seen and time.monotonic() < deadline:
        seen |= _exported(_scrape_targets(deployment), job_id)
        time.sleep(1)
    deployment.cli("cancel", job_id)  # what it had to show is shown; a job that already ended refuses, harmlessly
    assert expected <= seen, f"{job_id}: not exported {sorted(expected - seen)}; exported {sorted(seen)}"
