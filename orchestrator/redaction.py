"""Secrets in job specs, errors and environments: what counts as one and how each copy hides it.

A value is secret when its key looks like a secret's (``api_token``, ``aws_secret_access_key``, ``password``, ...)
or when it is the password of a URL (``postgresql://user:PASSWORD@host``). A ``${VAR}`` reference in such a place
is no secret: it stays a reference up to the cluster, whose driver expands it (``orchestrator.spec.loading``).
MLflow shows every secret-looking value as ``***`` (:func:`flatten_params`, :func:`redacted_spec`); the job store and
a Ray job keep references and hide literals (:func:`redact_secrets`); errors and logs hide URL passwords
(:func:`redact_url`). No spec import here: the spec's loading uses these rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

MASK = "***"
SECRET_KEY = re.compile(r"pass(word)?|secret|token|credential|api_?key|access_?key", re.IGNORECASE)
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+):([^@/\s]+)@")


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key))


def holds_plain_text(text: str) -> bool:
    """Whether ``text`` says more than ``${VAR}`` references, ``***`` or nothing (a reference's default counts)."""
    plain = ENV_REFERENCE.sub(lambda match: match.group(2) or "", text).strip()
    return plain not in ("", MASK)


def url_passwords(text: str) -> Iterator[str]:
    """The password of every ``scheme://user:password@host`` in ``text``."""
    return (match.group(2) for match in _URL_PASSWORD.finditer(text))


def holds_secret_reference(key: str, text: str) -> bool:
    """Whether ``text`` (the value of ``key``) refers to a secret: a reference in a secret-looking key or in the
    password of a URL."""
    if is_secret_key(key):
        return bool(ENV_REFERENCE.search(text))
    return any(ENV_REFERENCE.search(password) for password in url_passwords(text))


def has_plain_url_password(text: str) -> bool:
    return any(holds_plain_text(password) for password in url_passwords(text))


def redact_url(text: str) -> str:
    """``scheme://user:***@host``: the password of any URL in ``text`` hidden (references too: for messages)."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def _redact_plain_url_passwords(text: str) -> str:
    def hide(match: re.Match[str]) -> str:
        return f"{match.group(1)}:{MASK if holds_plain_text(match.group(2)) else match.group(2)}@"

    return _URL_PASSWORD.sub(hide, text)


def redact_secrets(data: Any, key: str = "") -> Any:
    """JSON data with literal secrets as ``***`` and ``${VAR}`` references kept: a spec as the job store holds it and
    a Ray job carries it (a resumed job expands its references again)."""
    if isinstance(data, dict):
        return {k: redact_secrets(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_secrets(v, key) for v in data]
    if isinstance(data, str):
        if is_secret_key(key) and holds_plain_text(data):
            return MASK
        return _redact_plain_url_passwords(data)
    return MASK if data is not None and is_secret_key(key) else data


def find_plain_url_password(data: Any, path: str = "") -> tuple[str, str] | None:
    """(dotted path, value) of the first string in JSON ``data`` holding a literal URL password, else None."""
    if isinstance(data, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in data.items())
    elif isinstance(data, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(data))
    else:
        return (path, data) if isinstance(data, str) and has_plain_url_password(data) else None
    return next((found for item_path, value in items if (found := find_plain_url_password(value, item_path))), None)


def redacted_spec(spec: BaseModel) -> dict[str, Any]:
    """The spec as JSON data with secret-looking keys and URL passwords hidden (the ``spec.json`` artifact)."""

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        if value is not None and is_secret_key(key):
            return MASK
        return redact_url(value) if isinstance(value, str) else value

    return walk(spec.model_dump(mode="json"), "")


def flatten_params(spec: BaseModel) -> dict[str, str]:
    """The spec as dotted ``section.key`` -> string (the run's params), redacted like :func:`redacted_spec`."""
    flat: dict[str, str] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        elif is_secret_key(prefix.rsplit(".", 1)[-1]):
            flat[prefix] = MASK
        else:
            flat[prefix] = "" if value is None else redact_url(str(value))

    walk(spec.model_dump(mode="json"), "")
    return flat
