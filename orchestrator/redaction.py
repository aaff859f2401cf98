"""What MLflow may show of a job spec: secret-looking keys and URL passwords hidden."""

from __future__ import annotations

import re
from typing import Any

from .spec import JobSpec

_SECRET_KEY = re.compile(r"pass(word)?|secret|token|credential|api_?key|access_?key", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+):[^@/\s]+@")


def redact_url(text: str) -> str:
    """``scheme://user:***@host``: the password of any URL in ``text`` hidden."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def redacted_spec(spec: JobSpec) -> dict[str, Any]:
    """The spec as JSON data with secret-looking keys and URL passwords hidden (the ``spec.json`` artifact)."""

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        if value is not None and _SECRET_KEY.search(key):
            return "***"
        return redact_url(value) if isinstance(value, str) else value

    return walk(spec.model_dump(mode="json"), "")


def flatten_params(spec: JobSpec) -> dict[str, str]:
    """The spec as dotted ``section.key`` -> string (the run's params), redacted like :func:`redacted_spec`."""
    flat: dict[str, str] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        elif _SECRET_KEY.search(prefix.rsplit(".", 1)[-1]):
            flat[prefix] = "***"
        else:
            flat[prefix] = "" if value is None else redact_url(str(value))

    walk(spec.model_dump(mode="json"), "")
    return flat
