"""The embedded services: Ray's worker ports kept off the head's own, and no half-up deployment."""

from __future__ import annotations

import pytest

from orchestrator.ray_backend import local_services
from orchestrator.settings import Settings
from tests.conftest import free_port


@pytest.mark.parametrize(
    ("reserved", "expected"),
    [
        ((6379, 8265), (10002, 19999)),       # Ray's defaults when nothing of ours is inside them
        ((6379, 12000), (20000, 29999)),      # a dashboard inside them moves the workers above 20000
        ((15000, 25000), (26000, 35999)),     # and above any port of ours that the first window would hold
    ],
)
def test_worker_ports_stay_off_the_heads_ports(reserved, expected):
    low, high = local_services.worker_port_range(*reserved)
    assert (low, high) == expected
    assert not any(low <= port <= high for port in reserved)


def test_a_failed_ray_start_leaves_no_mlflow_server_behind(tmp_path):
    settings = Settings.from_env({"LESA_ORCH_HOME": str(tmp_path), "LESA_ORCH_RAY_PORT": str(free_port()),
                                  "LESA_ORCH_MLFLOW_PORT": str(free_port())})
    with pytest.raises(local_services.ServiceError, match="ray start --head failed"):
        local_services.up(settings, num_cpus=-1)  # Ray refuses a negative CPU count after MLflow is up
    assert not local_services.mlflow_is_up(settings)
    assert not (settings.mlflow_dir / "server.pid").exists()
