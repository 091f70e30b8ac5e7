"""Exact security assertions (issue 26 part 6): each WIF attribute and condition, each impersonation
binding and each firewall rule is compared whole, and hostile variants of each (`||` for `&&`, a
`startsWith` prefix, a missing `ref` clause, a wider range) are run through the same check, which must
refuse every one. The bootstrap's variants are real: the script is edited and run against the
stand-in gcloud (tests/test_delivery_bootstrap.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_plan
from tests.test_delivery_bootstrap import ENV, SCRIPT, STATE, flag, install_gcloud, provider_call, pool
from tests.test_program import canonical, expected_project_bindings, project_bindings

REPO, REPO_ID, OWNER_ID = ENV["GITHUB_REPO"], ENV["GITHUB_REPOSITORY_ID"], ENV["GITHUB_OWNER_ID"]


def expected_mapping() -> dict[str, str]:
    def main_only(workflow: str) -> str:
        return (f"assertion.ref == 'refs/heads/main' && assertion.job_workflow_ref == "
                f"'{REPO}/.github/workflows/{workflow}@refs/heads/main' ? assertion.sub : 'none'")

    return {
        "google.subject": "assertion.sub",
        "attribute.repository_id": "assertion.repository_id",
        "attribute.repository_owner_id": "assertion.repository_owner_id",
        "attribute.ref": "assertion.ref",
        "attribute.job_workflow_ref": "assertion.job_workflow_ref",
        "attribute.deploy": main_only("deploy.yml"),
        "attribute.acceptance": main_only("acceptance.yml"),
    }


def expected_impersonation(pool_id: str) -> dict[str, list[str]]:
    """Every workloadIdentityUser binding, whole: account -> its members."""
    deploy = lambda env: f"{pool_id}/attribute.deploy/repo:{REPO}:environment:{env}"  # noqa: E731
    return {
        f"iam service-accounts convex-gcp-deploy-dev {STATE}": [deploy("dev")],
        f"iam service-accounts convex-gcp-deploy-prod {STATE}": [deploy("prod")],
        f"iam service-accounts convex-gcp-preview-dev {STATE}": [f"{pool_id}/attribute.repository_id/{REPO_ID}"],
        f"iam service-accounts convex-gcp-preview-prod {STATE}": [deploy("prod-preview")],
        f"iam service-accounts convex-gcp-acceptance {STATE}": [f"{pool_id}/attribute.acceptance/repo:{REPO}:environment:acceptance"],
    }


def wif_problems(run) -> list[str]:
    """What differs from the exact provider and impersonation bindings (empty: all whole and equal)."""
    problems = []
    call = provider_call(run)
    condition = f"assertion.repository_id == '{REPO_ID}' && assertion.repository_owner_id == '{OWNER_ID}'"
    if flag(call, "attribute-condition") != condition:
        problems.append(f"attribute-condition {flag(call, 'attribute-condition')!r}")
    mapping = dict(item.split("=", 1) for item in flag(call, "attribute-mapping").split(","))
    if mapping != expected_mapping():
        problems.append(f"attribute-mapping {mapping!r}")
    got: dict[str, list[str]] = {}
    for b in run.bindings:
        if b["role"] == "roles/iam.workloadIdentityUser":
            if b["condition"] is not None:
                problems.append(f"conditional impersonation {b!r}")
            got.setdefault(b["resource"], []).append(b["member"])
    if {k: sorted(v) for k, v in got.items()} != expected_impersonation(pool(run)):
        problems.append(f"impersonation {got!r}")
    return problems


def run_bootstrap(tmp_path: Path, script: Path):
    from tests.test_delivery_bootstrap import Run

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    install_gcloud(bin_dir)
    log = tmp_path / "log"
    log.write_text("")
    import os
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log), "FAKE_STATE": str(tmp_path / "state.json"),
           **ENV, "ACCEPTANCE_PROJECT": "app-acceptance"}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    state = json.loads((tmp_path / "state.json").read_text())
    return Run(result, [json.loads(line) for line in log.read_text().splitlines()], state)


def test_the_bootstraps_wif_conditions_and_impersonation_are_exactly_these(tmp_path):
    assert wif_problems(run_bootstrap(tmp_path, SCRIPT)) == []


# Each edit turns the real script into a hostile one; the whole comparison must catch every one.
HOSTILE_SCRIPTS = {
    "|| for && in the deploy attribute": ("DEPLOY_ATTRIBUTE=\"assertion.ref == 'refs/heads/main' &&",
                                          "DEPLOY_ATTRIBUTE=\"assertion.ref == 'refs/heads/main' ||"),
    "|| for && in the acceptance attribute": ("ACCEPTANCE_ATTRIBUTE=\"assertion.ref == 'refs/heads/main' &&",
                                              "ACCEPTANCE_ATTRIBUTE=\"assertion.ref == 'refs/heads/main' ||"),
    "no ref clause in the deploy attribute": ("DEPLOY_ATTRIBUTE=\"assertion.ref == 'refs/heads/main' && ", "DEPLOY_ATTRIBUTE=\""),
    "startsWith for the workflow ref": ("assertion.job_workflow_ref == '${DEPLOY_REF}'",
                                        "assertion.job_workflow_ref.startsWith('${GITHUB_REPO}/')"),
    "a branch's acceptance.yml": ("ACCEPTANCE_REF=\"${GITHUB_REPO}/${ACCEPTANCE_WORKFLOW}@refs/heads/main\"",
                                  "ACCEPTANCE_REF=\"${GITHUB_REPO}/${ACCEPTANCE_WORKFLOW}\""),
    "|| in the pool's admission": ("ADMISSION=\"assertion.repository_id == '${GITHUB_REPOSITORY_ID}' &&",
                                   "ADMISSION=\"assertion.repository_id == '${GITHUB_REPOSITORY_ID}' ||"),
    "the acceptance identity on a bare subject": (
        'impersonation "$ACCEPTANCE_SA" "principalSet://iam.googleapis.com/${POOL_ID}/attribute.acceptance/repo:${GITHUB_REPO}:environment:acceptance"',
        'impersonation "$ACCEPTANCE_SA" "principal://iam.googleapis.com/${POOL_ID}/subject/repo:${GITHUB_REPO}:environment:acceptance"'),
    "prod's previewer for any branch": ('impersonation "$(previewer "$stack")" "$(main_deploy_job "${stack}-preview")"',
                                        'impersonation "$(previewer "$stack")" "$ANY_RUN"'),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_SCRIPTS))
def test_every_hostile_bootstrap_is_caught(tmp_path, name):
    old, new = HOSTILE_SCRIPTS[name]
    text = SCRIPT.read_text()
    assert text.count(old) == 1, f"the edit for {name!r} no longer applies"
    hostile = tmp_path / "bootstrap.sh"
    hostile.write_text(text.replace(old, new))
    assert wif_problems(run_bootstrap(tmp_path, hostile)), name


# ----------------------------------------------------------- the program --

def sql_condition_problems(bindings: list[dict], stack: str) -> list[str]:
    want = sorted(map(canonical, expected_project_bindings(stack)))
    got = sorted(map(canonical, bindings))
    return [] if got == want else [f"bindings differ: {sorted(set(got) ^ set(want))}"]


def firewall_rules(plan) -> dict[str, dict]:
    keys = ("direction", "sourceRanges", "allows", "targetTags", "denies", "destinationRanges", "sourceTags")
    return {r.name: {k: r.inputs.get(k) for k in keys if r.inputs.get(k) is not None} for r in plan.of_type("gcp:compute/firewall:Firewall")}


def expected_dev_firewalls() -> dict[str, dict]:
    """dev: IAP's range only to SSH and the Convex ports; Google's health-check ranges only to autohealing's port."""
    return {
        "network-allow-iap": {"direction": "INGRESS", "sourceRanges": ["35.235.240.0/20"], "targetTags": ["convex-backend"],
                              "allows": [{"ports": ["22", "3210", "3211", "6791"], "protocol": "tcp"}]},
        "network-allow-autoheal": {"direction": "INGRESS", "sourceRanges": ["130.211.0.0/22", "35.191.0.0/16"],
                                   "targetTags": ["convex-backend"], "allows": [{"ports": ["3290"], "protocol": "tcp"}]},
    }


@pytest.fixture(scope="module")
def dev():
    return run_plan("dev")


def test_the_program_binds_cloud_sql_roles_to_its_instance_and_firewalls_exactly(dev):
    assert sql_condition_problems(project_bindings(dev), "dev") == []
    assert firewall_rules(dev) == expected_dev_firewalls()


def _hostile_bindings(dev, edit):
    bindings = json.loads(json.dumps(project_bindings(dev)))
    for b in bindings:
        if b["condition"]:
            b["condition"]["expression"] = edit(b["condition"]["expression"])
    return bindings


@pytest.mark.parametrize("name,edit", [
    ("|| for &&", lambda e: e.replace(" && ", " || ")),
    ("startsWith for ==", lambda e: e.replace("resource.name == 'projects/example-convex-dev/instances/convex-dev-pg-a1b2'",
                                              "resource.name.startsWith('projects/example-convex-dev/instances/')")),
    ("no type clause", lambda e: e.split(" && ")[0]),
])
def test_every_hostile_instance_condition_is_caught(dev, name, edit):
    assert sql_condition_problems(_hostile_bindings(dev, edit), "dev"), name


def test_an_unconditioned_cloud_sql_role_is_caught(dev):
    bindings = json.loads(json.dumps(project_bindings(dev)))
    next(b for b in bindings if b["role"] == "roles/cloudsql.client")["condition"] = None
    assert sql_condition_problems(bindings, "dev")


@pytest.mark.parametrize("name,edit", [
    ("a wider source range", lambda rules: rules["network-allow-iap"].update(sourceRanges=["35.235.0.0/16"])),
    ("the internet", lambda rules: rules["network-allow-autoheal"].update(sourceRanges=["0.0.0.0/0"])),
    ("another port", lambda rules: rules["network-allow-iap"]["allows"][0]["ports"].append("5432")),
    ("every target", lambda rules: rules["network-allow-iap"].pop("targetTags")),
])
def test_every_hostile_firewall_rule_is_caught(dev, name, edit):
    rules = json.loads(json.dumps(firewall_rules(dev)))
    edit(rules)
    assert rules != expected_dev_firewalls(), name
