"""A throwaway local Ray instance for the tests that need a real one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import ray

from tests.conftest import free_port


@contextmanager
def local_ray(num_cpus: int = 2, **env: str) -> Iterator[str]:
    """A local Ray instance (dashboard on, for the state API) on free ports; yields its GCS address.

    Its processes get ``RAY_ADDRESS`` pointing at it, plus ``env``: left to find "the" local cluster, Ray's own
    clients (the state API inside Ray Train's actors) may pick another instance on the machine.
    """
    port = free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": address, **env}.items():
            patch.setenv(name, value)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_port=free_port())
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()
