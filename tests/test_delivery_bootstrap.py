"""bootstrap/bootstrap.sh against a stand-in `gcloud` that remembers what it created: the first
run creates everything, a second run creates nothing, and the grants are the documented ones
(one KMS key per stack; pull-request previews cannot decrypt prod; no project-wide actAs or
Secret Manager admin once the VM accounts exist)."""

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
# Log a condition file's content instead of its (temporary) path.
args = [("--condition-from-file=" + " ".join(open(a.split("=", 1)[1]).read().split()))
        if a.startswith("--condition-from-file=") else a for a in args]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(args) + "\n")
state = os.environ["FAKE_STATE"]
known = open(state).read().splitlines() if os.path.exists(state) else []
positional = [a for a in args if not a.startswith("--")]
project = next((a.split("=", 1)[1] for a in args if a.startswith("--project=")), "")
for verb in ("describe", "create", "create-oidc"):
    if verb in positional:
        i = positional.index(verb)
        kind = " ".join(positional[:i])
        if kind == "projects":
            print("123456789")
            sys.exit(0)
        key = kind + " " + positional[i + 1].split("@")[0] + " " + project
        if verb == "describe":
            sys.exit(0 if key in known else 1)
        open(state, "a").write(key + "\n")
sys.exit(0)
'''


def run(tmp_path: Path, existing: tuple[str, ...] = (), **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "gcloud"
    fake.write_text(FAKE_GCLOUD)
    fake.chmod(0o755)
    log = tmp_path / "log"
    log.write_text("")
    if existing:
        with open(tmp_path / "state", "a") as state:
            state.write("".join(f"{key}\n" for key in existing))
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
                     "kms keys create convex-gcp-dev", "kms keys create convex-gcp-prod",
                     "iam service-accounts create convex-gcp-deployer", "iam service-accounts create convex-gcp-previewer",
                     "iam service-accounts create convex-gcp-prod-previewer", "iam workload-identity-pools create github",
                     "iam workload-identity-pools providers create-oidc github-actions",
                     "iam roles create convexDeployerServiceAccounts --project=app-dev",
                     "iam roles create convexDeployerServiceAccounts --project=app-prod"):
        assert any(c.startswith(expected) for c in made), expected
    assert not any("pulumi-secrets" in c for c in calls), "no key shared by every stack"
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


DEPLOYER = "serviceAccount:convex-gcp-deployer@ops-proj.iam.gserviceaccount.com"
PREVIEWER = "serviceAccount:convex-gcp-previewer@ops-proj.iam.gserviceaccount.com"
PROD_PREVIEWER = "serviceAccount:convex-gcp-prod-previewer@ops-proj.iam.gserviceaccount.com"


def project_grants(calls: list[str], project: str, member: str) -> dict[str, str]:
    """role -> the rest of the call (its condition), for `projects add-iam-policy-binding`."""
    prefix = f"projects add-iam-policy-binding {project} --member={member} --role="
    return {c[len(prefix):].split()[0]: c for c in calls if c.startswith(prefix)}


def key_members(calls: list[str]) -> dict[str, set[str]]:
    members: dict[str, set[str]] = {}
    for c in calls:
        if c.startswith("kms keys add-iam-policy-binding"):
            assert "--role=roles/cloudkms.cryptoKeyEncrypterDecrypter" in c
            members.setdefault(shlex.split(c)[3], set()).add(c.split("--member=")[1].split()[0])
    return members


def test_one_key_per_stack_and_pull_requests_cannot_decrypt_prod(tmp_path):
    _, calls = run(tmp_path)
    assert key_members(calls) == {
        "convex-gcp-dev": {DEPLOYER, PREVIEWER},
        "convex-gcp-prod": {DEPLOYER, PROD_PREVIEWER},
    }
    # Keys are granted one by one: nothing on the key ring, nothing KMS-wide in a project.
    assert not [c for c in calls if c.startswith("kms keyrings add-iam-policy-binding")]
    assert not [c for c in calls if c.startswith("projects add-iam-policy-binding") and "cloudkms" in c]
    impersonation = [c for c in calls if "roles/iam.workloadIdentityUser" in c]
    (previewer,) = [c for c in impersonation if "convex-gcp-previewer@" in c]
    assert "principalSet://" in previewer and "attribute.repository/acme/convex-gcp" in previewer
    # Only a job in the prod-preview environment (required reviewers) becomes the prod previewer.
    (prod_previewer,) = [c for c in impersonation if "convex-gcp-prod-previewer@" in c]
    assert "--member=principal://" in prod_previewer
    assert prod_previewer.endswith("/subject/repo:acme/convex-gcp:environment:prod-preview")
    deployer = [c for c in impersonation if "convex-gcp-deployer@" in c]
    assert sorted(c.rsplit(":", 1)[1] for c in deployer) == ["dev", "prod"]
    assert all("/subject/repo:acme/convex-gcp:environment:" in c for c in deployer)


def test_pr_stacks_decides_which_keys_the_pull_request_previewer_gets(tmp_path):
    _, calls = run(tmp_path, STACKS="dev staging prod")
    members = key_members(calls)
    assert PREVIEWER in members["convex-gcp-dev"]
    assert PREVIEWER not in members["convex-gcp-staging"] | members["convex-gcp-prod"]
    assert PROD_PREVIEWER in members["convex-gcp-staging"] and PROD_PREVIEWER in members["convex-gcp-prod"]


def test_deployer_roles(tmp_path):
    _, calls = run(tmp_path)
    assert not [c for c in calls if "service-accounts keys" in c], "no JSON keys"
    for project in ("app-dev", "app-prod"):
        roles = project_grants(calls, project, DEPLOYER)
        assert {"roles/cloudsql.admin", "roles/dns.admin", "roles/resourcemanager.projectIamAdmin"} <= set(roles)
        assert not set(roles) & {"roles/owner", "roles/editor", "roles/iam.serviceAccountAdmin"}
        assert "modifiedGrantsByRole" in roles["roles/resourcemanager.projectIamAdmin"]
        assert "'roles/cloudsql.client'" in roles["roles/resourcemanager.projectIamAdmin"]
        # Secret Manager admin only over the program's secrets (conditions name secrets by project number).
        secrets = roles["roles/secretmanager.admin"]
        assert "resource.name.startsWith('projects/123456789/secrets/convex-')" in secrets
        assert "--condition=None" not in secrets
        # Service accounts are managed through a custom role without setIamPolicy/actAs.
        custom = f"projects/{project}/roles/convexDeployerServiceAccounts"
        assert custom in roles
        (created,) = [c for c in calls if c.startswith(f"iam roles create convexDeployerServiceAccounts --project={project}")]
        permissions = created.split("--permissions=")[1].split()[0].split(",")
        assert "iam.serviceAccounts.create" in permissions
        assert not [p for p in permissions if p.endswith(("setIamPolicy", "actAs", "getAccessToken"))]


def test_act_as_is_project_wide_only_until_the_vm_accounts_exist(tmp_path):
    _, calls = run(tmp_path)
    for project in ("app-dev", "app-prod"):
        assert "roles/iam.serviceAccountUser" in project_grants(calls, project, DEPLOYER)
    # After the first deploy created convex-dev-vm in app-dev, a re-run moves the grant onto that account.
    later = tmp_path / "later"
    later.mkdir()
    result, calls = run(later, existing=("iam service-accounts convex-dev-vm app-dev",))
    assert result.returncode == 0, result.stderr
    assert "roles/iam.serviceAccountUser" not in project_grants(calls, "app-dev", DEPLOYER)
    (on_account,) = [c for c in calls if c.startswith("iam service-accounts add-iam-policy-binding convex-dev-vm@")]
    assert on_account.startswith("iam service-accounts add-iam-policy-binding convex-dev-vm@app-dev.iam.gserviceaccount.com")
    assert f"--member={DEPLOYER}" in on_account and "--role=roles/iam.serviceAccountUser" in on_account
    assert any(c.startswith(f"projects remove-iam-policy-binding app-dev --member={DEPLOYER} "
                            "--role=roles/iam.serviceAccountUser") for c in calls)
    # app-prod has no VM account yet: still project-wide there.
    assert "roles/iam.serviceAccountUser" in project_grants(calls, "app-prod", DEPLOYER)


def test_previewers_read_but_hold_no_write_or_secret_roles(tmp_path):
    _, calls = run(tmp_path)
    for member in (PREVIEWER, PROD_PREVIEWER):
        for project in ("app-dev", "app-prod"):
            assert set(project_grants(calls, project, member)) == {"roles/viewer"}
        bucket = [c for c in calls if c.startswith("storage buckets add-iam-policy-binding") and f"--member={member}" in c]
        assert {c.split("--role=")[1].split()[0] for c in bucket} == {"roles/storage.objectViewer", "roles/storage.objectUser"}
        (writer,) = [c for c in bucket if "objectUser" in c]
        assert "objects/.pulumi/locks/" in writer


@pytest.mark.parametrize("missing", ["STATE_PROJECT", "GITHUB_REPO", "TARGET_PROJECTS"])
def test_required_settings(tmp_path, missing):
    result, calls = run(tmp_path, **{missing: ""})
    assert result.returncode != 0 and missing in result.stderr
    assert calls == []


def test_repository_must_be_owner_slash_name(tmp_path):
    result, calls = run(tmp_path, GITHUB_REPO="acme")
    assert result.returncode == 2 and calls == []
