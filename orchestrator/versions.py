"""What a job ran with: the lesa-orch commit (and whether its tree had uncommitted changes) and the versions of
the packages its results depend on. The driver tags them on the job's MLflow run as ``lesa.version.<name>``;
``resume`` compares the recorded Ray version with the cluster's, since Ray Train's checkpoints and the private API
in ``ray_backend/compat.py`` are only tested within one Ray minor version."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("lesa-orch", "torch", "torchvision", "timm", "ray", "mlflow", "optuna")
TAG_PREFIX = "lesa.version."
SOURCE = Path(__file__).resolve().parent


def package_versions() -> dict[str, str]:
    """Installed version of each of :data:`PACKAGES` ('' for one that is not installed); nothing is imported."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = ""
    return versions


def source_state(folder: Path = SOURCE) -> tuple[str, bool]:
    """(commit, dirty) of the git checkout holding ``folder``: ('', False) outside one or without git."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=folder)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return "", False
    return commit, bool(git("status", "--porcelain", "--untracked-files=no"))


def version_tags(commit: str, dirty: bool) -> dict[str, str]:
    """MLflow tags of a job's run: the submitting checkout's ``commit``/``dirty`` and this process's packages."""
    tags = {f"{TAG_PREFIX}{name}": version for name, version in package_versions().items()}
    tags[f"{TAG_PREFIX}lesa-orch.commit"] = commit
    tags[f"{TAG_PREFIX}lesa-orch.dirty"] = str(dirty).lower()
    return tags


def same_minor(recorded: str, current: str) -> bool:
    """Whether two versions share major and minor (``2.60.0`` and ``2.60.1`` do; ``2.60.0`` and ``2.61.0`` not)."""
    return recorded.split(".")[:2] == current.split(".")[:2]
