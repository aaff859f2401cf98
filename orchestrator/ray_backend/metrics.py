"""LESA training metrics exported through Ray's metrics agent (``ray.util.metrics``), one set per worker.

Ray serves them on each node's metrics export port with a ``ray_`` prefix, counters with a ``_total`` suffix,
for Prometheus to scrape (``dashboards/prometheus``) and ``dashboards/grafana/lesa.json`` to draw. Every series
carries ``job_id``, ``trial_id`` ("" outside HPO) and the worker's ``rank``. Throughput, step time and the
data-wait fraction are counters, so PromQL ``rate()`` gives exact averages over any window and sums over workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from ray.util.metrics import Counter, Gauge

TAG_KEYS = ("job_id", "trial_id", "rank")


class TrainingMetrics:
    """What one Ray Train worker reports: wrap each epoch's loader with ``wrap`` and pass ``on_step`` to the engine.

    The wrapped loader times every ``next()`` (the data wait) and counts images; ``on_step`` closes a step: the
    wall time since the previous step, the wait and the images inside it, and the step's loss and learning rate.
    """

    def __init__(self, job_id: str, trial_id: str, rank: int, device: torch.device) -> None:
        self._tags = {"job_id": job_id, "trial_id": trial_id, "rank": str(rank)}
        self._device = device
        self.images = Counter("lesa_train_images", "Training images consumed", TAG_KEYS)
        self.steps = Counter("lesa_train_steps", "Training steps (batches) done", TAG_KEYS)
        self.step_seconds = Counter("lesa_train_step_seconds", "Wall time of training steps, data wait included",
                                    TAG_KEYS)
        self.data_wait_seconds = Counter("lesa_train_data_wait_seconds",
                                         "Time training steps spent waiting for the data loader", TAG_KEYS)
        self.loss = Gauge("lesa_train_loss", "Training loss of the latest step", TAG_KEYS)
        self.lr = Gauge("lesa_train_lr", "Learning rate of the latest step", TAG_KEYS)
        self.epoch = Gauge("lesa_train_epoch", "Epoch being trained (0-based)", TAG_KEYS)
        self.gpu_memory = Gauge("lesa_train_gpu_memory_bytes", "Peak GPU memory allocated by the worker (CUDA only)",
                                TAG_KEYS)
        self._step_start = time.perf_counter()
        self._waited = 0.0
        self._pending_images = 0

    def wrap(self, loader: Iterable, epoch: int) -> _TimedLoader:
        """``loader`` for one epoch, timed; attributes (``sampler``, ``len``) pass through to it."""
        self.epoch.set(epoch, tags=self._tags)
        return _TimedLoader(loader, self)

    def _start_epoch(self) -> None:
        self._step_start, self._waited, self._pending_images = time.perf_counter(), 0.0, 0

    def _batch_loaded(self, waited: float, images: int) -> None:
        self._waited += waited
        self._pending_images += images

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """The engines' ``on_step(step, metrics)`` hook: closes the step that just ended."""
        now = time.perf_counter()
        for counter, value in ((self.steps, 1), (self.images, self._pending_images),
                               (self.step_seconds, now - self._step_start), (self.data_wait_seconds, self._waited)):
            if value > 0:  # Ray counters refuse non-positive increments
                counter.inc(value, tags=self._tags)
        self._step_start, self._waited, self._pending_images = now, 0.0, 0
        if "train/loss" in metrics:
            self.loss.set(metrics["train/loss"], tags=self._tags)
        if "train/lr" in metrics:
            self.lr.set(metrics["train/lr"], tags=self._tags)
        if self._device.type == "cuda":
            self.gpu_memory.set(torch.cuda.max_memory_allocated(self._device), tags=self._tags)


class _TimedLoader:
    """A data loader whose iteration reports each batch's wait and image count to ``TrainingMetrics``."""

    def __init__(self, loader: Iterable, metrics: TrainingMetrics) -> None:
        self._loader = loader
        self._metrics = metrics

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __iter__(self) -> Iterator:
        self._metrics._start_epoch()
        start = time.perf_counter()
        iterator = iter(self._loader)  # starting loader workers is waiting on data too
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self._metrics._batch_loaded(time.perf_counter() - start, len(batch[0]))
            yield batch
            start = time.perf_counter()
