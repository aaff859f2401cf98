import time

import torch
from ray.util.metrics import Metric

from orchestrator.ray_backend.metrics import TrainingMetrics


class Recorded:
    """Stands in for a Ray metric: keeps the values and tags it gets."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.tags: dict[str, str] = {}

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.values.append(value)
        self.tags = tags

    set = inc


class SlowLoader:
    """Three batches of four images, each 20 ms in coming."""

    sampler = "the sampler"

    def __len__(self) -> int:
        return 3

    def __iter__(self):
        for _ in range(3):
            time.sleep(0.02)
            yield torch.zeros(4, 3, 8, 8), torch.zeros(4)


def _recorded(metrics: TrainingMetrics) -> TrainingMetrics:
    for name, value in list(vars(metrics).items()):
        if isinstance(value, Metric):
            setattr(metrics, name, Recorded())
    return metrics


def test_steps_count_images_and_split_their_time_into_data_wait_and_the_rest():
    metrics = _recorded(TrainingMetrics("job-1", "", 1, torch.device("cpu")))
    loader = metrics.wrap(SlowLoader(), epoch=2)
    assert len(loader) == 3 and loader.sampler == "the sampler"  # what the engines read from a loader
    for step, _ in enumerate(loader):
        time.sleep(0.01)  # the step's compute
        metrics.on_step(step, {"train/loss": 1.0 + step, "train/lr": 0.1})
    assert metrics.steps.values == [1, 1, 1] and metrics.images.values == [4, 4, 4]
    waits, steps = metrics.data_wait_seconds.values, metrics.step_seconds.values
    assert all(wait >= 0.02 for wait in waits)
    assert all(step >= wait + 0.01 for step, wait in zip(steps, waits, strict=True))
    assert metrics.loss.values == [1.0, 2.0, 3.0] and metrics.lr.values == [0.1] * 3 and metrics.epoch.values == [2]
    assert metrics.loss.tags == {"job_id": "job-1", "trial_id": "", "rank": "1"}
    assert metrics.gpu_memory.values == []  # a CPU worker


def test_a_step_without_images_or_metrics_records_no_empty_increment():
    metrics = TrainingMetrics("job-1", "trial-3", 0, torch.device("cpu"))  # real Ray counters refuse 0
    metrics.on_step(0, {})
