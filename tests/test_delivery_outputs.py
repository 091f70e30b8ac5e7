"""The outputs contract other teams read through a StackReference: docs/outputs.json (version and
names), docs/outputs.md (meaning, example, stability) and what each stack really exports."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import ROOT, run_plan
from tools.render_plans import gcp_stacks

CONTRACT = json.loads((ROOT / "docs" / "outputs.json").read_text())
NAMES = set(CONTRACT["outputs"])
MAJOR = int(CONTRACT["version"].split(".")[0])

# Names promised for the whole of each major version. Removing or renaming one is a breaking change:
# bump the major version in docs/outputs.json, say what changed in docs/outputs.md, and add the new
# major's names here. This ledger lives in the test so that editing the contract file alone cannot
# drop a promised name silently.
RELEASED = {
    1: frozenset({
        "convex_url", "convex_site_url", "dashboard_url", "admin_key_secret", "sql_instance_name",
        "sql_connection_name", "sql_private_ip", "database_name", "database_user", "vm_name", "vm_zone",
        "vm_internal_ip", "vm_service_account", "network", "subnetwork", "peering_range", "connection_mode",
        "front_door_ip",
    }),
}


def test_version_is_semver():
    assert re.fullmatch(r"\d+\.\d+\.\d+", CONTRACT["version"]), CONTRACT["version"]


def test_released_names_are_still_in_the_contract():
    assert MAJOR in RELEASED, (
        f"docs/outputs.json is at major version {MAJOR} but this test has no ledger for it: add "
        f"RELEASED[{MAJOR}] with the names that major promises")
    gone = sorted(RELEASED[MAJOR] - NAMES)
    assert not gone, (
        f"outputs {gone} were removed or renamed without a major version bump: restore them in "
        f"__main__.py and docs/outputs.json, or bump docs/outputs.json to {MAJOR + 1}.0.0 and record the break")


@pytest.mark.parametrize("stack", gcp_stacks())
def test_stack_exports_match_the_contract(stack):
    plan = run_plan(stack)
    assert not plan.error, plan.error
    exported = set(plan.outputs)
    undocumented = sorted(exported - NAMES)
    assert not undocumented, (
        f"stack {stack} exports {undocumented}, not in docs/outputs.json: document them there and in "
        "docs/outputs.md (a new output is a minor version bump)")
    always = {n for n, spec in CONTRACT["outputs"].items() if spec["when"] == "always"}
    missing = sorted(always - exported)
    assert not missing, (
        f"stack {stack} no longer exports {missing}: removing or renaming an output breaks consumers; "
        "restore it or bump the major version in docs/outputs.json")


def test_every_conditional_output_is_exported_by_some_stack():
    exported = set().union(*(run_plan(s).outputs for s in gcp_stacks()))
    conditional = {n for n, spec in CONTRACT["outputs"].items() if spec["when"] != "always"}
    assert conditional <= exported, sorted(conditional - exported)

# The minor version that introduced each name added after 1.0.0 ("adding an output is a minor version
# bump"), local-only names included: a name added without a bump fails here.
INTRODUCED = {"admin_key_command": (1, 1), "postgres_url": (1, 1), "monitoring_dashboard_url": (1, 2), "exports_bucket": (1, 3), "vm_group": (1, 4)}


def test_added_outputs_bumped_the_minor_version_and_are_recorded():
    version = tuple(int(n) for n in CONTRACT["version"].split("."))
    names = NAMES | set(CONTRACT.get("local", {}).get("local_only", {}))
    assert names - RELEASED[1] <= set(INTRODUCED), sorted(names - RELEASED[1] - set(INTRODUCED))
    late = sorted(n for n in names if INTRODUCED.get(n, (1, 0)) > version[:2])
    assert not late, f"outputs {late} were added without a minor version bump of docs/outputs.json"
    changes = (ROOT / "docs" / "outputs.md").read_text().split("## Changes", 1)[1]
    assert f"- {CONTRACT['version']}:" in changes, "record the current contract version under Changes"


def test_docs_describe_every_output_and_the_version():
    text = (ROOT / "docs" / "outputs.md").read_text()
    assert f"Contract version: **{CONTRACT['version']}**" in text
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE))
    assert documented == NAMES, {"undocumented": sorted(NAMES - documented), "unknown": sorted(documented - NAMES)}


@pytest.mark.parametrize("stack", gcp_stacks())
def test_no_contract_output_is_a_secret_value(stack):
    # Consumers read these in plaintext; the admin key is published as its Secret Manager id only.
    secret = sorted(k for k, v in run_plan(stack).outputs.items() if v["secret"])
    assert not secret
