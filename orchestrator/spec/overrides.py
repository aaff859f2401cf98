"""Dotted paths into the job spec schema: ``--set a.b=c`` on a raw spec, and the closest key for a typo."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from .schema import JobSpec


class SpecError(ValueError):
    """A job spec problem; the message is one line naming the file and the field."""


def section_fields(model: type[BaseModel]) -> dict[str, Any]:
    return dict(model.model_fields)


def field_model(annotation: Any) -> type[BaseModel] | None:
    """The section model behind a field's annotation (``Section`` or ``Section | None``), else None."""
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (
        annotation,)
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _mapping_values_model(annotation: Any) -> type[BaseModel] | None:
    """``Section`` for a ``dict[str, Section]`` field (``hpo.space``), else None."""
    if typing.get_origin(annotation) is not dict:
        return None
    return field_model(typing.get_args(annotation)[1])


def closest(name: str, options: list[str]) -> str:
    """``; did you mean 'x'?`` for a near miss, else the valid keys."""
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(options)}"


def _parse_value(override: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(f"--set {override}: the value is not valid YAML ({error.problem})") from None


def set_override(raw: dict[str, Any], override: str) -> None:
    """Sets ``a.b=c`` in the raw spec dict; the path must exist in the schema; ``c`` is parsed as YAML.

    Keys of ``hpo.space`` are dotted paths themselves: ``hpo.space.schedule.lr.high=0.1`` sets ``high`` of the
    ``schedule.lr`` dimension, ``hpo.space.schedule.lr={type: uniform, ...}`` the whole dimension.
    """
    if "=" not in override:
        raise SpecError(f"--set {override}: expected KEY=VALUE with a dotted KEY such as schedule.epochs=3")
    path, text = override.split("=", 1)
    parts = path.strip().split(".")
    model: type[BaseModel] | None = JobSpec
    node = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if model is None:  # inside a free-form mapping (tracking.tags)
            if not last:
                raise SpecError(f"--set {override}: {'.'.join(parts[:depth])} holds plain values")
        else:
            fields = section_fields(model)
            if part not in fields:
                where = ".".join(parts[:depth]) or "the job spec"
                raise SpecError(f"--set {override}: no field '{part}' in {where}{closest(part, list(fields))}")
            annotation = fields[part].annotation
            values_model = _mapping_values_model(annotation)
            if values_model is not None and not last:
                _set_mapping_entry(node.setdefault(part, {}), parts[depth + 1:], values_model, override, text)
                return
            model = field_model(annotation)
            if model is None and not last and typing.get_origin(annotation) is not dict:
                raise SpecError(f"--set {override}: {'.'.join(parts[:depth + 1])} is a value, not a section")
        if last:
            node[part] = _parse_value(override, text)
            return
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"--set {override}: {'.'.join(parts[:depth + 1])} is not a section in the file")
        node = child


def _set_mapping_entry(
    mapping: dict[str, Any], rest: list[str], values_model: type[BaseModel], override: str, text: str
) -> None:
    """Sets a whole entry of a ``dict[str, Section]`` (key = ``rest``), or one field of it (the last part)."""
    if len(rest) > 1 and rest[-1] in section_fields(values_model):
        key = ".".join(rest[:-1])
        entry = mapping.setdefault(key, {})
        if not isinstance(entry, dict):
            raise SpecError(f"--set {override}: {key} is not a section in the file")
        entry[rest[-1]] = _parse_value(override, text)
    else:
        mapping[".".join(rest)] = _parse_value(override, text)
