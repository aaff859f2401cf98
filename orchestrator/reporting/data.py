"""What a report shows, as plain data: runs, their final metrics and histories, and measured contributions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lesa_core.analysis import LayerContribution

FAMILIES = ("LESA", "SA", "conv", "other")
CONTRIBUTIONS_ARTIFACT = "contributions.json"  # what a run's measured contributions are logged as


def backbone_family(arch: str) -> str:
    """``LESA``, ``SA``, ``conv`` or ``other`` from a model name (the ``model.arch`` param)."""
    name = arch.lower()
    if name.startswith(("lesa_", "test_lesa")):
        return "LESA"
    if name.startswith("sa_"):
        return "SA"
    if name.startswith(("conv_", "resnet")):
        return "conv"
    return "other"


@dataclass(frozen=True)
class RunData:
    """What the report shows of one MLflow run: final metrics and the histories it plots (step = epoch)."""

    run_id: str
    name: str
    job_id: str
    experiment_id: str
    status: str
    task: str
    arch: str
    primary_metric: str
    mode: str  # "max" or "min": which way the primary metric improves
    final: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    url: str = ""

    @property
    def family(self) -> str:
        return backbone_family(self.arch)

    @property
    def label(self) -> str:
        return self.job_id or self.name or self.run_id[:8]

    def best(self, metric: str | None = None) -> float | None:
        """Best value of ``metric`` (default: the primary one) over the epochs, else its final value."""
        metric = metric or self.primary_metric
        values = [value for _, value in self.history.get(metric, ())]
        if not values and metric in self.final:
            values = [self.final[metric]]
        if not values:
            return None
        return max(values) if self.mode == "max" else min(values)


@dataclass(frozen=True)
class Contributions:
    """The term contributions of one run's model, or (``note``) why they could not be measured."""

    run_id: str
    label: str
    layers: tuple[LayerContribution, ...] = ()
    images: int = 0
    split: str = ""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "images": self.images, "split": self.split,
            "layers": [{"name": layer.name, "local": layer.local, "context": layer.context,
                        "context_share": layer.context_share} for layer in self.layers],
        }


@dataclass(frozen=True)
class ReportData:
    """Everything the renderer needs; ``runs`` are covered, ``experiment_runs`` feed the family comparison."""

    target: str
    experiment: str
    tracking_uri: str
    generated_at: datetime
    runs: tuple[RunData, ...]
    experiment_runs: tuple[RunData, ...]
    contributions: tuple[Contributions, ...] = ()
    job_id: str = ""
    experiment_url: str = ""
    logged_to: str = ""  # run id that receives the report artifact

    @property
    def comparison_metric(self) -> str:
        """The primary metric most of the experiment's runs use."""
        runs = self.experiment_runs or self.runs
        return Counter(run.primary_metric for run in runs).most_common(1)[0][0] if runs else ""


def best_run(runs: Iterable[RunData], metric: str) -> RunData | None:
    """The run with the best ``metric``; runs without it win only when none has it (then the first)."""
    chosen, chosen_value = None, None
    for run in runs:
        value = run.best(metric)
        improves = value is not None and (
            chosen_value is None or (value > chosen_value if run.mode == "max" else value < chosen_value))
        if chosen is None or improves:
            chosen, chosen_value = run, value
    return chosen


def family_leaders(runs: Sequence[RunData], metric: str) -> dict[str, RunData]:
    """The best run of each backbone family present, in :data:`FAMILIES` order."""
    by_family = {family: [run for run in runs if run.family == family] for family in FAMILIES}
    return {family: best_run(members, metric) for family, members in by_family.items() if members}
