"""examples/consumer (another team's program) run offline against the outputs each of our stacks
really exports, so a contract break shows up here before it reaches them."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, run_plan
from tests import runner
from tools.render_plans import gcp_stacks

CONSUMER = ROOT / "examples" / "consumer"
MEMBER = "serviceAccount:web-ci@example-web.iam.gserviceaccount.com"


def run_consumer(tmp_path, outputs: dict, stack: str, *extra: str) -> dict:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    command = [str(CONSUMER / "offline.py"), "--outputs", str(path), "--stack", stack,
               "--set", f"convex-consumer:deployerMember={MEMBER}", *extra]
    result = runner.run_python(command, cwd=ROOT, timeout=300)
    assert result.stdout, result.stderr[-3000:]
    return json.loads(result.stdout)


def stack_outputs(stack: str) -> dict:
    return {k: v["value"] for k, v in run_plan(stack).outputs.items()}


@pytest.mark.parametrize("stack", gcp_stacks())
def test_consumer_reads_every_stack(tmp_path, stack):
    outputs = stack_outputs(stack)
    result = run_consumer(tmp_path, outputs, stack)
    assert result["error"] == ""
    assert result["references"] == [f"organization/convex-gcp/{stack}"]
    grant = result["resources"]
    assert [r["type"] for r in grant] == ["gcp:secretmanager/secretIamMember:SecretIamMember"]
    assert grant[0]["inputs"] == {"secretId": outputs["admin_key_secret"],
                                  "role": "roles/secretmanager.secretAccessor", "member": MEMBER}
    assert result["exports"]["convex_url"] == outputs["convex_url"]
    assert result["exports"]["convex_site_url"] == outputs["convex_site_url"]
    assert result["exports"]["admin_key_command"].endswith(f"--secret={outputs['admin_key_secret']}")


def test_consumer_can_point_at_another_stack_and_org(tmp_path):
    result = run_consumer(tmp_path, stack_outputs("prod"), "web-prod",
                          "--set", "convex-consumer:convexStack=prod", "--set", "convex-consumer:convexOrganization=acme")
    assert result["references"] == ["acme/convex-gcp/prod"]


def test_consumer_fails_when_a_required_output_is_gone(tmp_path):
    outputs = stack_outputs("dev")
    del outputs["convex_url"]
    result = run_consumer(tmp_path, outputs, "dev")
    assert "convex_url" in result["error"]


def test_consumer_tolerates_a_missing_conditional_output(tmp_path):
    outputs = stack_outputs("dev")
    outputs.pop("dashboard_url", None)
    result = run_consumer(tmp_path, outputs, "dev")
    assert result["error"] == ""
    assert result["exports"]["dashboard_url"] is None
