"""How a run's checkpoints are scored, and which is its best: what Ray Train prunes by and what gets registered.

Light on purpose: the trainer, the workers' loop, registration and the search's summary all import it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ..spec import JobSpec

CHECKPOINT_SCORE = "lesa/checkpoint_score"
EPOCHS_KEY = "epochs_completed"

Item = TypeVar("Item")


@dataclass(frozen=True)
class CheckpointScore:
    """What ranks a run's checkpoints: ``metric`` (better as ``mode`` says), measured at the checkpoint's own epoch.

    Every report with a checkpoint carries ``CHECKPOINT_SCORE``, which Ray Train ranks by: the metric at an evaluated
    epoch, the worst finite value at any other (Ray's checkpoint-manager snapshot writes inf and nan as null, which it
    cannot rank after a restore). Ray Train 2.60 keeps the ``num_to_keep`` best and always the latest, so pruning
    never removes the best evaluated checkpoint, and a resume still finds the newest one.
    """

    metric: str
    mode: Literal["max", "min"]

    @property
    def unscored(self) -> float:
        """The score of a checkpoint whose epoch did not evaluate: worse than any measured value."""
        return -sys.float_info.max if self.mode == "max" else sys.float_info.max

    def value(self, evaluated: Mapping[str, Any]) -> float:
        """The score of an epoch's checkpoint from what the epoch measured (empty when it did not evaluate)."""
        value = evaluated.get(self.metric)
        return float(value) if _is_finite(value) else self.unscored

    def best(self, reports: Iterable[tuple[Item, Mapping[str, Any]]]) -> tuple[Item, Mapping[str, Any]] | None:
        """The ``(checkpoint, metrics)`` report with the best real score, or None; a tie goes to the later epoch,
        the one Ray Train keeps."""
        sign = 1.0 if self.mode == "max" else -1.0
        scored = [(item, metrics) for item, metrics in reports
                  if _is_finite(metrics.get(CHECKPOINT_SCORE)) and metrics[CHECKPOINT_SCORE] != self.unscored]
        return max(scored, key=lambda report: (sign * report[1][CHECKPOINT_SCORE], report[1].get(EPOCHS_KEY, 0)),
                   default=None)


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def checkpoint_score(spec: JobSpec) -> CheckpointScore:
    """How a job's checkpoints rank: by its first objective (the primary metric unless a search names another)."""
    objective = spec.objectives[0]
    return CheckpointScore(objective.metric, objective.mode)
