"""The environment is the locked one: every package of requirements.lock that applies here is installed at its
locked version, and the pins that guard Ray's and Optuna's private API agree with the lock."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
_LOCKED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)\s*(?:;\s*(?P<marker>.+))?$")


def _locked() -> dict[str, str]:
    """Package -> version of the lock's lines whose environment marker holds on this machine."""
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        match = _LOCKED.match(line)
        if match and (match["marker"] is None or Marker(match["marker"]).evaluate()):
            pins[canonicalize_name(match["name"])] = match["version"]
    return pins


def test_every_locked_package_is_installed_at_its_locked_version():
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    pins = _locked()
    assert {"torch", "ray", "mlflow", "optuna", "timm", "torchvision"} <= pins.keys()
    wrong = {name: (version, installed.get(name)) for name, version in pins.items() if installed.get(name) != version}
    assert not wrong, f"installed packages differ from requirements.lock (run bash .ci/bootstrap): {wrong}"


def test_the_lock_satisfies_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _locked()
    for line in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in requirements.lock (run bash .ci/lock)"
        assert SpecifierSet(str(requirement.specifier)).contains(pins[name], prereleases=True), (
            f"requirements.lock has {name}=={pins[name]}, outside pyproject's {requirement.specifier}")


def test_private_api_pins_allow_one_minor_only():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for package in ("ray", "optuna"):
        line = next(d for d in project["dependencies"] if canonicalize_name(Requirement(d).name) == package)
        specifier = Requirement(line).specifier
        major, minor = (int(part) for part in _locked()[package].split(".")[:2])
        assert not specifier.contains(f"{major}.{minor + 1}.0"), f"{package} may move to the next minor: {line}"
