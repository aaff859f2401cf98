"""The compatibility module: the one place for Ray, Tune and Optuna internals, refused on untested versions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import orchestrator
from orchestrator.ray_backend import compat

PACKAGE = Path(orchestrator.__file__).resolve().parent
COMPAT = PACKAGE / "ray_backend" / "compat.py"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_private_names(paths: list[Path]) -> set[str]:
    """Underscore names the package defines itself: functions, methods, class and instance attributes."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and _private(node.name):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _private(node.attr):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and _private(node.id):
                names.add(node.id)
    return names


def _private_uses(path: Path, own: set[str]) -> list[str]:
    """Imports of private modules or names from other packages, and underscore attributes the package does not
    define itself, as ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if any(_private(part) for part in alias.name.split("."))]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            private_module = any(_private(part) for part in node.module.split("."))
            names = [f"{node.module}.{alias.name}" for alias in node.names if private_module or _private(alias.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            names = [f"<...>.{node.attr}"]
        else:
            continue
        found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name}" for name in names]
    return found


def test_private_ray_tune_and_optuna_api_is_used_only_in_the_compat_module():
    paths = [path for path in sorted(PACKAGE.rglob("*.py")) if path != COMPAT]
    own = _own_private_names(paths)
    uses = [use for path in paths for use in _private_uses(path, own)]
    assert uses == [], "private API outside orchestrator/ray_backend/compat.py:\n" + "\n".join(uses)
    in_compat = _private_uses(COMPAT, own)  # the scan does see them where they are
    assert any("ray.train.v2._internal" in use for use in in_compat) and any("._ot_study" in use for use in in_compat)


@pytest.mark.parametrize("installed", [{"ray": "2.60.0", "optuna": "5.0.0"}, {"ray": "2.60.3", "optuna": "5.0.1rc1"},
                                       {"ray": "2.60.0", "optuna": None}])
def test_the_tested_versions_pass(installed):
    compat.check_versions(installed, env={})


def test_an_untested_version_is_refused_in_one_line_naming_both_versions():
    with pytest.raises(RuntimeError) as raised:
        compat.check_versions({"ray": "2.61.0", "optuna": "5.0.0"}, env={})
    message = str(raised.value)
    assert "\n" not in message and "ray 2.61.0 (tested: 2.60.x)" in message and "optuna" not in message
    assert compat.UNTESTED_VERSIONS_ENV in message
    with pytest.raises(RuntimeError, match=r"ray 3\.0\.0 \(tested: 2\.60\.x\), optuna 4\.5\.0 \(tested: 5\.0\.x\)"):
        compat.check_versions({"ray": "3.0.0", "optuna": "4.5.0"}, env={})


def test_the_override_turns_the_refusal_into_a_warning():
    with pytest.warns(RuntimeWarning, match=r"ray 2\.61\.0"):
        compat.check_versions({"ray": "2.61.0", "optuna": "5.0.0"}, env={compat.UNTESTED_VERSIONS_ENV: "1"})


def test_importing_compat_on_an_untested_ray_fails_before_touching_its_internals():
    probe = ("from importlib import metadata; real = metadata.version; "
             "metadata.version = lambda name: '2.99.0' if name == 'ray' else real(name); "
             "import orchestrator.ray_backend.compat")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "RuntimeError: lesa-orch relies on internals of ray 2.99.0 (tested: 2.60.x); install the tested versions, "
        f"or set {compat.UNTESTED_VERSIONS_ENV}=1 to try these")
