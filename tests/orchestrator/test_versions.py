"""The versions a job records: real package metadata and the real git state of a checkout."""

from __future__ import annotations

import subprocess

import ray
import torch

from orchestrator import versions


def test_package_versions_are_the_installed_ones():
    found = versions.package_versions()
    assert found["ray"] == ray.__version__
    assert found["torch"] == torch.__version__.split("+")[0]  # the wheel's local CUDA tag is not in its metadata
    assert set(found) == set(versions.PACKAGES) and all(found.values())


def _git(folder, *args):
    subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True)


def test_source_state_sees_the_commit_and_uncommitted_changes(tmp_path):
    assert versions.source_state(tmp_path) == ("", False)  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    commit, dirty = versions.source_state(tmp_path)
    assert len(commit) == 40 and not dirty
    (tmp_path / "a.py").write_text("x = 2\n")
    assert versions.source_state(tmp_path) == (commit, True)


def test_version_tags_carry_commit_dirty_and_packages():
    tags = versions.version_tags("abc123", True)
    assert tags["lesa.version.lesa-orch.commit"] == "abc123"
    assert tags["lesa.version.lesa-orch.dirty"] == "true"
    assert tags["lesa.version.ray"] == ray.__version__


def test_same_minor():
    assert versions.same_minor("2.60.0", "2.60.3")
    assert not versions.same_minor("2.60.0", "2.61.0")
    assert not versions.same_minor("2.60.0", "3.60.0")
