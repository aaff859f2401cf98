"""The checks of a job spec that consult ``lesa_core`` (its metric names), run once its schema has validated.

``loading.parse_spec`` runs them wherever a spec enters the system (the CLI, the driver, the workers) and resolves
the primary metric into ``eval.metric``. A search's trial actor re-reads a spec that passed them and skips them, so
it never imports ``lesa_core`` (which loads timm: seconds of every trial's start-up).
"""

from __future__ import annotations

from lesa_core.metrics import names

from .schema import JobSpec
from .search import check_search


def check_spec(spec: JobSpec) -> JobSpec:
    """The spec with ``eval.metric`` resolved, once its metrics and search are known to fit its task.

    Raises:
        ValueError: the message starts with the field at fault.
    """
    reported = names.REPORTED_METRICS[spec.task]
    if spec.eval.metric is not None and spec.eval.metric not in reported:
        raise ValueError(f"eval.metric={spec.eval.metric!r} is never reported by a {spec.task} job; "
                         f"choose one of {', '.join(reported)}")
    check_search(spec)
    if spec.eval.metric is None:
        resolved = spec.eval.model_copy(update={"metric": names.primary_metric(spec.task)})
        spec = spec.model_copy(update={"eval": resolved})
    return spec
