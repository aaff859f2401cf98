"""What a Ray cluster offers, read from its dashboard, and whether a job's resources fit."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from ..settings import Settings
from ..spec import JobSpec
from .local_services import ray_auth_headers


class ResourceError(ValueError):
    """The cluster cannot run the job as specified; the message names the resource."""


@dataclass(frozen=True)
class ClusterResources:
    """Totals and the per-node shapes of a Ray cluster."""

    cpus: float
    gpus: float
    nodes: tuple[dict[str, float], ...]

    @property
    def node_count(self) -> int:
        return len(self.nodes)


def read_cluster_resources(settings: Settings, *, wait_s: float = 30.0) -> ClusterResources:
    """From ``/api/cluster_status`` of the Ray dashboard (authenticated).

    A head that has just started reports no nodes until its first autoscaler report; that is waited out for
    ``wait_s`` seconds rather than read as an empty cluster.
    """
    deadline = time.monotonic() + wait_s
    while True:
        resources = _read_once(settings)
        if resources.nodes or time.monotonic() > deadline:
            return resources
        time.sleep(1)


def _get(settings: Settings, path: str, what: str) -> dict:
    """The JSON answer of the dashboard's ``path`` (authenticated); ConnectionError names ``what`` failed."""
    request = urllib.request.Request(f"{settings.ray_address.rstrip('/')}{path}", headers=ray_auth_headers(settings))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise ConnectionError(f"Ray at {settings.ray_address}: {what} unavailable ({error})") from None


def read_ray_version(settings: Settings) -> str:
    """The Ray version the cluster runs (its dashboard's ``/api/version``)."""
    try:
        return str(_get(settings, "/api/version", "version")["ray_version"])
    except KeyError:
        raise ConnectionError(f"Ray at {settings.ray_address}: /api/version has no ray_version") from None


def _read_once(settings: Settings) -> ClusterResources:
    try:
        report = _get(settings, "/api/cluster_status", "cluster status")["data"]["clusterStatus"]
    except KeyError as error:
        raise ConnectionError(f"Ray at {settings.ray_address}: cluster status unavailable ({error})") from None
    usage = report["loadMetricsReport"]["usage"]
    nodes = []
    for shape, count in report["loadMetricsReport"].get("nodeTypes", []):
        nodes.extend([shape] * int(count))
    return ClusterResources(
        cpus=usage.get("CPU", [0, 0])[1], gpus=usage.get("GPU", [0, 0])[1], nodes=tuple(nodes)
    )


def worker_resources(spec: JobSpec) -> dict[str, float]:
    """What one Ray Train worker asks for."""
    resources = {"CPU": spec.resources.cpus_per_worker}
    if spec.resources.use_gpu:
        resources["GPU"] = spec.resources.gpus_per_worker if spec.resources.gpus_per_worker is not None else 1.0
    return resources


def check_fits(spec: JobSpec, cluster: ClusterResources) -> None:
    """Refuses a job whose workers cannot all be placed, or a multi-node job with local storage."""
    per_worker = worker_resources(spec)
    workers = spec.resources.num_workers
    for resource, amount in per_worker.items():
        total = cluster.cpus if resource == "CPU" else cluster.gpus
        if amount * workers > total:
            raise ResourceError(
                f"resources: {workers} workers x {amount:g} {resource} need {amount * workers:g} {resource}, "
                f"the cluster has {total:g}"
            )
        if not any(node.get(resource, 0) >= amount for node in cluster.nodes):
            raise ResourceError(f"resources: no node has {amount:g} {resource} for one worker")
    storage = spec.storage.path or ""
    if cluster.node_count > 1 and workers > 1 and "://" not in storage:
        raise ResourceError(
            f"storage.path: {storage or 'unset (a local folder)'} is local, but the cluster has "
            f"{cluster.node_count} nodes; multi-node checkpoints need shared storage (s3://, gs://, or a shared mount "
            "given as file:// on every node)"
        )
