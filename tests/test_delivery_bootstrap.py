"""bootstrap/bootstrap.sh against a stand-in `gcloud` that remembers what it created: the first
run creates everything, a second run creates nothing, and the grants are the documented ones."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "bootstrap" / "bootstrap.sh"

FAKE_GCLOUD = r'''#!/usr/bin/env python3
import os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(args) + "\n")
state = os.environ["FAKE_STATE"]
known = open(state).read().splitlines() if os.path.exists(state) else []
positional = [a for a in args if not a.startswith("--")]
for verb in ("describe", "create", "create-oidc"):
    if verb in positional:
        i = positional.index(verb)
        kind = " ".join(positional[:i])
        if kind == "projects":
            print("123456789")
            sys.exit(0)
        key = kind + " " + positional[i + 1].split("@")[0]
        if verb == "describe":
            sys.exit(0 if key in known else 1)
        open(state, "a").write(key + "\n")
sys.exit(0)
'''


def run(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "gcloud"
    fake.write_text(FAKE_GCLOUD)
    fake.chmod(0o755)
    log = tmp_path / "log"
    log.write_text("")
    environment = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log), "FAKE_STATE": str(tmp_path / "state"),
        "STATE_PROJECT": "ops-proj", "GITHUB_REPO": "acme/convex-gcp", "TARGET_PROJECTS": "app-dev app-prod", **env,
    }
    result = subprocess.run(["bash", str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=120)
    return result, log.read_text().splitlines()


def creates(calls: list[str]) -> list[str]:
    return [c for c in calls if any(v in shlex.split(c) for v in ("create", "create-oidc"))]


def test_first_run_creates_everything_and_second_run_nothing(tmp_path):
    first, calls = run(tmp_path)
    assert first.returncode == 0, first.stderr
    made = creates(calls)
    for expected in ("storage buckets create gs://ops-proj-pulumi-state", "kms keyrings create convex-gcp",
                     "kms keys create pulumi-secrets", "iam service-accounts create convex-gcp-deployer",
                     "iam service-accounts create convex-gcp-previewer", "iam workload-identity-pools create github",
                     "iam workload-identity-pools providers create-oidc github-actions"):
        assert any(c.startswith(expected) for c in made), expected
    second, calls = run(tmp_path)
    assert second.returncode == 0, second.stderr
    assert creates(calls) == []
    # Settings are enforced on every run, so a hand-made bucket converges too.
    assert any(c.startswith("storage buckets update gs://ops-proj-pulumi-state --versioning --uniform-bucket-level-access "
                            "--public-access-prevention") for c in calls)


def test_bucket_is_private_and_provider_is_limited_to_the_repository(tmp_path):
    _, calls = run(tmp_path)
    (bucket,) = [c for c in calls if c.startswith("storage buckets create")]
    assert "--uniform-bucket-level-access" in bucket and "--public-access-prevention" in bucket
    (provider,) = [c for c in calls if "create-oidc" in c]
    assert "--attribute-condition=assertion.repository == 'acme/convex-gcp'" in provider
    assert "--issuer-uri=https://token.actions.githubusercontent.com" in provider


def test_grants(tmp_path):
    _, calls = run(tmp_path)
    assert not [c for c in calls if "service-accounts keys" in c], "no JSON keys"
    deployer = "serviceAccount:convex-gcp-deployer@ops-proj.iam.gserviceaccount.com"
    for project in ("app-dev", "app-prod"):
        roles = {c.split("--role=")[1].split()[0] for c in calls
                 if c.startswith(f"projects add-iam-policy-binding {project} --member={deployer}")}
        assert "roles/cloudsql.admin" in roles and "roles/resourcemanager.projectIamAdmin" in roles
        assert not roles & {"roles/owner", "roles/editor"}
        (iam_admin,) = [c for c in calls if project in c and "projectIamAdmin" in c]
        assert "modifiedGrantsByRole" in iam_admin and "roles/cloudsql.client" in iam_admin
    impersonation = [c for c in calls if "roles/iam.workloadIdentityUser" in c]
    deployer_members = [c for c in impersonation if "convex-gcp-deployer" in c]
    assert len(deployer_members) == 2
    assert all("subject/repo:acme/convex-gcp:environment:" in c for c in deployer_members)
    (previewer,) = [c for c in impersonation if "convex-gcp-previewer" in c]
    assert "attribute.repository/acme/convex-gcp" in previewer


@pytest.mark.parametrize("missing", ["STATE_PROJECT", "GITHUB_REPO", "TARGET_PROJECTS"])
def test_required_settings(tmp_path, missing):
    result, calls = run(tmp_path, **{missing: ""})
    assert result.returncode != 0 and missing in result.stderr
    assert calls == []


def test_repository_must_be_owner_slash_name(tmp_path):
    result, calls = run(tmp_path, GITHUB_REPO="acme")
    assert result.returncode == 2 and calls == []
