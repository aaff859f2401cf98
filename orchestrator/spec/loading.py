"""Reading a job file: safe YAML load, ``${VAR}`` / ``${VAR:-default}`` interpolation, ``--set`` overrides and
validation, with every failure one :class:`SpecError` line naming the file and the field path.

Where references expand:

- A value that refers to a secret (a reference in a secret-looking key such as ``tracking.tags.api_token``, or in
  the password of a URL such as ``postgresql://optuna:${OPTUNA_PASSWORD}@db/optuna``) is left exactly as written
  where the spec is loaded: the spec, the job store and the Ray job carry the reference, validation sees its text,
  and its variable need not be set on the submitting machine. The job's driver expands it with the cluster's
  environment (``expand_secrets=True``).
- Every other reference expands where the spec is loaded, from that machine's environment: it is configuration
  that submitting checks and records (a data root that must exist, a storage path made absolute, the experiment the
  job store finds the run in), so its variable must be set there or have a default.

A literal secret in a secret-looking key is accepted and hidden as ``***`` by the job store, the Ray job and MLflow
(the job never reads such a key); a literal URL password is refused when the job is submitted
(``ray_backend.jobs.submit``): the job needs it, and Ray would show it to whoever can read the cluster.
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..redaction import ENV_REFERENCE, holds_secret_reference
from .overrides import SpecError, closest, field_model, section_fields, set_override
from .schema import JobSpec


def expand_references(text: str, where: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every ``${VAR}`` / ``${VAR:-default}`` replaced from ``environ`` (default ``os.environ``);
    an unset variable without default is a :class:`SpecError` naming ``where``."""
    environ = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise SpecError(f"{where}: environment variable {name} is not set and has no default")

    return ENV_REFERENCE.sub(substitute, text)


def _interpolate(
    value: Any, path: str, key: str, source: str, expand_secrets: bool, environ: Mapping[str, str] | None
) -> Any:
    """Expands the references in every string of ``value``, recursively; those to secrets only with
    ``expand_secrets``."""
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), str(k), source, expand_secrets, environ)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", key, source, expand_secrets, environ) for i, v in enumerate(value)]
    if not isinstance(value, str) or (not expand_secrets and holds_secret_reference(key, value)):
        return value
    return expand_references(value, f"{source}: {path}", environ)


def apply_override(raw: dict[str, Any], override: str, source: str = "job spec") -> None:
    """Sets ``a.b=c`` in the raw spec dict (see :func:`~orchestrator.spec.overrides.set_override`); errors name
    ``source``."""
    try:
        set_override(raw, override)
    except SpecError as error:
        raise SpecError(f"{source}: {error}") from None


def _format_validation_error(error: ValidationError, source: str) -> str:
    # a typo makes both an unknown key and a missing field; the unknown key (with its suggestion) says more
    problems = error.errors()
    first = next((problem for problem in problems if problem["type"] == "extra_forbidden"), problems[0])
    location = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        model: type[BaseModel] | None = JobSpec
        item_key = False  # the next part is a key of hpo.space or an index of hpo.objectives
        for part in first["loc"][:-1]:
            if item_key or model is None:
                item_key = False
                continue
            annotation = section_fields(model)[part].annotation
            item_key = typing.get_origin(annotation) in (dict, list)
            model = field_model(typing.get_args(annotation)[-1] if item_key else annotation)
        options = list(section_fields(model)) if model else []
        return f"{source}: {location}: unknown key{closest(str(first['loc'][-1]), options)}"
    message = first["msg"].removeprefix("Value error, ")
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    # a whole-spec check names its own fields
    return f"{source}: {location + ': ' if location else ''}{message}{more}"


def parse_spec(
    raw: Any, *, source: str = "job spec", overrides: list[str] | tuple[str, ...] = (), checked: bool = False,
    expand_secrets: bool = False, environ: Mapping[str, str] | None = None,
) -> JobSpec:
    """Validates an already-loaded mapping (with overrides and interpolation) into a JobSpec, its search included.

    ``checked``: the mapping is a spec that passed every check already (a search's trial actor re-reading it), so
    only the schema runs and nothing of ``lesa_core`` is imported. ``expand_secrets``: the job runs here (its driver),
    so references to secrets expand too; elsewhere they stay references (see the module docstring). References
    expand from ``environ`` (default ``os.environ``).
    """
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a job spec must be a mapping of sections, got {type(raw).__name__}")
    raw = dict(raw)
    for override in overrides:
        apply_override(raw, override, source)
    raw = _interpolate(raw, "", "", source, expand_secrets, environ)
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(_format_validation_error(error, source)) from None
    if checked:
        return spec
    from .checks import check_spec  # imports lesa_core, which a trial actor must not load

    try:
        return check_spec(spec)
    except ValueError as error:
        raise SpecError(f"{source}: {error}") from None


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Reads, interpolates, overrides and validates a job YAML file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such job file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: invalid YAML{where}: {getattr(error, 'problem', error)}") from None
    return parse_spec(raw, source=str(path), overrides=overrides)
