"""The release path (docs/package.md, "Versions"): tools.release refuses a version that is not semver,
not pyproject.toml's or without its CHANGELOG section; the workflow tags only after an approved
environment with reviewers, drafts (never publishes) and attaches the schema."""

from __future__ import annotations


import yaml

from tests.conftest import ROOT
from tools import release


def _copy(tmp_path, version: str, changelog: str):
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "convex-gcp"\nversion = "{version}"\n')
    (tmp_path / "CHANGELOG.md").write_text(changelog)
    return tmp_path


def test_the_current_version_is_releasable():
    assert release.problems(release.pyproject_version()) == []
    assert release.notes(release.pyproject_version())


def test_refusals(tmp_path):
    root = _copy(tmp_path, "1.2.0", "# Changelog\n\n## [1.2.0]\n\n- a change\n\n## [1.1.0]\n\n- older\n")
    assert release.problems("1.2.0", root) == []
    assert release.notes("1.2.0", root) == "- a change"
    assert any("not a semantic version" in p for p in release.problems("v1.2.0", root))
    assert any("pyproject.toml's version is 1.2.0" in p for p in release.problems("1.3.0", root))
    empty = _copy(tmp_path, "1.2.0", "# Changelog\n\n## [1.2.0]\n\n## [1.1.0]\n\n- older\n")
    assert any("no '## [1.2.0]' section" in p for p in release.problems("1.2.0", empty))


def test_the_workflow_tags_after_review_and_only_drafts():
    workflow = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    assert list(workflow[True]) == ["workflow_dispatch"]  # by hand, never on a push
    build, tag = workflow["jobs"]["build"], workflow["jobs"]["tag"]
    assert build["if"] == "github.ref == 'refs/heads/main'" and "permissions" not in build  # read-only
    runs = " ".join(step.get("run", "") for step in build["steps"])
    for command in ("tools.release check", "pytest -q", "provider_host --schema > schema.json", "tools.release notes"):
        assert command in runs
    assert tag["needs"] == "build" and tag["environment"] == "release"
    assert tag["permissions"] == {"contents": "write", "actions": "read"}
    script = " ".join(step.get("run", "") for step in tag["steps"])
    assert "required_reviewers" in script and "--draft" in script and "schema.json" in script
    assert "publish" not in script and "twine" not in script and "npm" not in script
    assert all(job.get("timeout-minutes") for job in workflow["jobs"].values())


def test_release_cli():
    assert release.main(["check", release.pyproject_version()]) == 0
    assert release.main(["check", "99.0.0"]) == 1
    assert release.main(["bump"]) == 2
