""".github/workflows/acceptance.yml: weekly and on demand, actions pinned by commit SHA, and the
teardown and artifact steps run whatever happened before them. actionlint runs over every workflow
in tests/test_delivery_workflows.py."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT

PATH = ROOT / ".github" / "workflows" / "acceptance.yml"
# Commit of each release tag, read from the action repositories' tags (git rev-list -n1 <tag>).
PINS = {
    "actions/checkout": ("d23441a48e516b6c34aea4fa41551a30e30af803", "v6.1.0"),
    "actions/setup-python": ("ece7cb06caefa5fff74198d8649806c4678c61a1", "v6.3.0"),
    "actions/setup-node": ("249970729cb0ef3589644e2896645e5dc5ba9c38", "v6.5.0"),
    "actions/upload-artifact": ("b7c566a772e6b6bfb58ed0dc250532a479d7789f", "v6.0.0"),
    "google-github-actions/auth": ("7c6bc770dae815cd3e89ee6cdf493a5fab2cc093", "v3.0.0"),
    "pulumi/actions": ("8e5e406f4007fca908480587cb9893c07090f58d", "v7.0.0"),
}


def workflow() -> dict:
    return yaml.safe_load(PATH.read_text())


def run_lines(job: dict) -> list[str]:
    return [s.get("run", "") for s in job["steps"]]


def test_weekly_and_on_demand():
    on = workflow()[True]  # PyYAML reads `on` as True
    assert set(on) == {"workflow_dispatch", "schedule"}
    assert len(on["schedule"]) == 1 and len(on["schedule"][0]["cron"].split()) == 5


def test_every_action_is_pinned_by_sha_with_its_tag_in_a_comment():
    uses = re.findall(r"uses: ([\w./-]+)@(\S+)(?: # (\S+))?", PATH.read_text())
    assert uses
    for action, ref, tag in uses:
        assert action in PINS, action
        assert (ref, tag) == PINS[action], f"{action}@{ref} # {tag}"


def test_gcp_job_runs_the_acceptance_command_with_wif_and_always_cleans_up():
    job = workflow()["jobs"]["gcp"]
    assert job["environment"] == "acceptance"
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    assert job["concurrency"]["cancel-in-progress"] is False
    auth = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("google-github-actions/auth"))
    assert set(auth["with"]) == {"workload_identity_provider", "service_account"}
    runs = run_lines(job)
    assert ".venv/bin/python -m tools.acceptance gcp --out acceptance-out" in runs
    cleanup = next(s for s in job["steps"] if "--cleanup" in s.get("run", ""))
    upload = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert cleanup["if"] == "always()" and upload["if"] == "always()"
    assert job["steps"].index(cleanup) < job["steps"].index(upload)
    assert job["env"]["ACCEPTANCE_PROJECT"] == "${{ vars.ACCEPTANCE_PROJECT }}"


def test_local_job_uses_the_runners_docker_and_a_masked_throwaway_passphrase():
    job = workflow()["jobs"]["local"]
    assert "environment" not in job and "permissions" not in job  # no cloud access at all
    runs = "\n".join(run_lines(job))
    assert "python -m tools.acceptance local --out acceptance-out" in runs
    assert "::add-mask::" in runs and "PULUMI_CONFIG_PASSPHRASE" in runs
    assert 'pulumi login "file://' in runs
    assert any(s.get("if") == "always()" and "--cleanup" in s.get("run", "") for s in job["steps"])


def test_every_job_summary_shows_the_drill_s_rpo_and_rto():
    """Each job writes tools.acceptance --summary (report.json: RPO and RTO of the restore drill) to the
    job summary, whatever happened before (test_acceptance.py::test_the_job_summary_shows_rpo_and_rto)."""
    for target in ("gcp", "local"):
        steps = workflow()["jobs"][target]["steps"]
        (summary,) = [s for s in steps if "--summary" in s.get("run", "")]
        assert summary["if"] == "always()"
        assert summary["run"] == f'.venv/bin/python -m tools.acceptance {target} --summary --out acceptance-out >> "$GITHUB_STEP_SUMMARY"'
        names = [s.get("name") for s in steps]
        assert names.index(summary["name"]) > names.index("Deploy, check, destroy")
