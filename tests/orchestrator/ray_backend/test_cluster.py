import pytest

from orchestrator.ray_backend.cluster import ClusterResources, ResourceError, check_fits, worker_resources
from orchestrator.spec import parse_spec

NODE = {"CPU": 8.0, "GPU": 2.0, "memory": 1e10}


def _spec(**resources):
    return parse_spec({
        "name": "j", "task": "classification", "data": {"root": "/d", "format": "imagenet"},
        "schedule": {"epochs": 1, "batch_size_per_worker": 8, "lr": 0.1, "lr_reference_batch": 8},
        "resources": resources, "storage": resources.pop("storage", {}),
    })


def test_worker_resources_default_to_one_gpu_when_used():
    assert worker_resources(_spec(num_workers=2, use_gpu=True, cpus_per_worker=4)) == {"CPU": 4.0, "GPU": 1.0}
    assert worker_resources(_spec(num_workers=2)) == {"CPU": 1.0}


def test_a_job_that_fits_passes():
    spec = _spec(num_workers=4, use_gpu=True, cpus_per_worker=4, storage={"path": "s3://bucket/ckpt"})
    check_fits(spec, ClusterResources(16, 4, (NODE, NODE)))
    check_fits(_spec(num_workers=2), ClusterResources(8, 0, (NODE,)))  # one node: local storage is fine


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"num_workers": 5, "use_gpu": True}, r"5 workers x 1 GPU need 5 GPU, the cluster has 4"),
        ({"num_workers": 1, "cpus_per_worker": 12}, r"no node has 12 CPU for one worker"),
        ({"num_workers": 2, "storage": {"path": "/local/ckpt"}}, r"storage\.path: /local/ckpt is local.*2 nodes"),
        ({"num_workers": 2}, r"storage\.path: unset \(a local folder\) is local"),
    ],
)
def test_jobs_the_cluster_cannot_run_are_refused(resources, message):
    with pytest.raises(ResourceError, match=message):
        check_fits(_spec(**resources), ClusterResources(16, 4, (NODE, NODE)))


def test_shared_storage_is_fine_on_several_nodes():
    check_fits(_spec(num_workers=2, storage={"path": "s3://bucket/ckpt"}), ClusterResources(16, 4, (NODE, NODE)))
