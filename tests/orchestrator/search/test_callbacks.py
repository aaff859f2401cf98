"""The search's sweep of stopped trials' worker groups, on a real local Ray with a second job beside the search."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray.util import state as ray_state

from orchestrator.search.callbacks import release_orphaned_worker_groups
from tests.orchestrator.ray_backend.local_ray import local_ray
from tests.orchestrator.search.worker_groups import worker_group

REPO = Path(__file__).resolve().parents[3]


def _wait_until_dead(address: str, actor_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while ray_state.get_actor(actor_id, address=address).state != "DEAD":
        assert time.monotonic() < deadline, f"actor {actor_id} still alive after {timeout}s"
        time.sleep(0.1)


def _group_state(address: str, group_id: str) -> str:
    return ray_state.get_placement_group(group_id, address=address).state


@pytest.fixture(scope="module")
def ray_address():
    with local_ray() as address:
        yield address


@pytest.mark.slow
def test_the_sweep_frees_only_its_own_jobs_orphaned_worker_groups(ray_address):
    other_job = subprocess.Popen([sys.executable, "-m", "tests.orchestrator.search.worker_groups", ray_address],
                                 cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        orphan, dead_worker, _ = worker_group(dead=True)
        live, _, _live_worker = worker_group(dead=False)
        others_orphan, others_dead_worker = other_job.stdout.readline().split()
        for worker in (dead_worker, others_dead_worker):
            _wait_until_dead(ray_address, worker)
        assert release_orphaned_worker_groups() == 1
        assert _group_state(ray_address, orphan) == "REMOVED"
        assert _group_state(ray_address, live) == "CREATED"  # a live run's group (its worker held above)
        assert _group_state(ray_address, others_orphan) == "CREATED"  # another job's, its worker dead or not
    finally:
        other_job.stdin.close()
        other_job.wait(timeout=60)
