"""The job spec: one YAML file per job, validated by pydantic, with ``--set a.b=c`` overrides.

``schema`` holds the sections and :class:`JobSpec`, ``overrides`` walks dotted paths of the schema, ``search``
checks an ``hpo`` block, ``checks`` runs what consults ``lesa_core`` (metric names, the arch, the model built on the
meta device, the data layout, each probed trial of a search), and ``loading`` reads a file (YAML, ``${VAR}``,
overrides, validation, one-line errors).
Load specs with :func:`load_spec` or :func:`parse_spec`: they run every check.
"""

from .loading import apply_override, load_spec, parse_spec
from .overrides import SpecError
from .schema import (
    DataSection,
    DetectorOptions,
    EvalSection,
    FaultToleranceSection,
    HpoSection,
    JobSpec,
    LesaOptions,
    ModelSection,
    Objective,
    ResourcesSection,
    SamplerOptions,
    SchedulerOptions,
    ScheduleSection,
    SearchDimension,
    StorageSection,
    SyntheticData,
    TrackingSection,
    spec_json_schema,
)

__all__ = [
    "DataSection",
    "DetectorOptions",
    "EvalSection",
    "FaultToleranceSection",
    "HpoSection",
    "JobSpec",
    "LesaOptions",
    "ModelSection",
    "Objective",
    "ResourcesSection",
    "SamplerOptions",
    "ScheduleSection",
    "SchedulerOptions",
    "SearchDimension",
    "SpecError",
    "StorageSection",
    "SyntheticData",
    "TrackingSection",
    "apply_override",
    "load_spec",
    "parse_spec",
    "spec_json_schema",
]
