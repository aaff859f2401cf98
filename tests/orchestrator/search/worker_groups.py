"""Worker groups as the sweep sees them: a placement group with a ``RayTrainWorker`` actor in it, alive or dead.

Run as a module (``python -m tests.orchestrator.search.worker_groups ADDRESS``) it is another Ray job on that
cluster: it prints the id of a worker group whose worker it killed, and of that worker, and holds both (a job's
placement groups end with its driver) until its stdin closes.
"""

from __future__ import annotations

import sys
from typing import Any

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


@ray.remote(num_cpus=0.1)
class RayTrainWorker:
    """Stands for Ray Train's worker actor, which the sweep finds by its class name."""

    def actor_id(self) -> str:
        return ray.get_runtime_context().get_actor_id()


def worker_group(*, dead: bool) -> tuple[str, str, Any]:
    """A placement group with one worker in it, killed when ``dead``: group id, worker id (hex) and the worker's
    handle (a live worker lives while its handle does)."""
    group = placement_group([{"CPU": 0.1}])
    ray.get(group.ready())
    worker = RayTrainWorker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group)).remote()
    worker_id = ray.get(worker.actor_id.remote())
    if dead:
        ray.kill(worker)
    return group.id.hex(), worker_id, worker


if __name__ == "__main__":
    ray.init(address=sys.argv[1])
    print(*worker_group(dead=True)[:2], flush=True)
    sys.stdin.read()
