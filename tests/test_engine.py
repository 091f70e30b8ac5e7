"""What a real engine does with the plan: replacement order, names that must not be reused, first-deploy
ordering (issue 11). Asserted on the recorded resource options and inputs of whole-program runs."""

from __future__ import annotations

import json

import pytest

from components.apis import ApiPropagationWait, _PropagationWait
from components.convex_vm import update_policy
from convex_gcp import images
from components.database import connection_name, suffix_keepers
from convex_gcp.settings import ConfigError, check_placeholders, is_placeholder_domain, load_settings
from tests.conftest import run_plan, run_plan_with, stack_object
from tools.plan import stack_config

TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
GROUP = "gcp:compute/instanceGroupManager:InstanceGroupManager"
VM = "gcp:compute/perInstanceConfig:PerInstanceConfig"
CERT = "gcp:compute/managedSslCertificate:ManagedSslCertificate"
SQL = "gcp:sql/databaseInstance:DatabaseInstance"
SUFFIX = "random:index/randomId:RandomId"


@pytest.fixture(scope="module", params=["dev", "prod"])
def plan(request):
    return run_plan(request.param)


def test_template_is_created_before_the_old_one_goes(plan):
    # Auto-named from a prefix: the bridge replaces it create-first (only an explicit `name` makes it
    # delete-first), and the group moves to the new template before the old one is deleted.
    template = plan.one(TEMPLATE)
    assert "name" not in template.inputs and template.inputs["namePrefix"] == f"convex-{plan.stack}-vm-"
    assert template.delete_before_replace is not True
    group = plan.one(GROUP)
    assert template.urn in group.dependencies
    assert group.inputs["versions"][0]["instanceTemplate"].endswith("?uniqueId=4242424242")  # selfLinkUnique


def test_the_vm_keeps_its_name_disk_and_ip_through_every_recreation(plan):
    vm, group, disk = plan.one(VM), plan.one(GROUP), plan.by_name("convex-data")
    assert vm.inputs["name"] == f"convex-{plan.stack}-vm" and vm.inputs["instanceGroupManager"] == group.inputs["name"]
    state = vm.inputs["preservedState"]
    assert state["disks"] == [{"deviceName": "convex-data", "source": f"projects/example-convex-{plan.stack}/zones/asia-northeast1-a/disks/convex-{plan.stack}-data",
                               "mode": "READ_WRITE", "deleteRule": "NEVER"}]
    (ip,) = state["internalIps"]
    assert ip["autoDelete"] == "NEVER" and ip["ipAddress"]["address"].endswith(f"/addresses/convex-{plan.stack}-vm-internal")
    assert group.inputs["statefulDisks"] == [{"deviceName": "convex-data", "deleteRule": "NEVER"}]
    assert group.inputs["statefulInternalIps"] == [{"interfaceName": "nic0", "deleteRule": "NEVER"}]
    # Deleting the config leaves the VM and its state alone.
    assert vm.inputs["removeInstanceOnDestroy"] is False and vm.inputs["removeInstanceStateOnDestroy"] is False
    # The template attaches the same disk, never auto-deleted; the boot disk alone goes with the VM.
    boot, data = plan.one(TEMPLATE).inputs["disks"]
    assert boot["boot"] is True and boot["autoDelete"] is True
    assert data == {"source": f"convex-{plan.stack}-data", "deviceName": "convex-data", "mode": "READ_WRITE", "autoDelete": False, "boot": False}
    # The disk is protected in every stack and nothing of the group feeds its inputs.
    assert disk.protect is True and set(disk.inputs) == {"name", "zone", "type", "size", "labels"}
    assert vm.urn not in disk.dependencies and group.urn not in disk.dependencies


def test_updates_replace_the_one_vm_in_place(plan):
    policy = plan.one(GROUP).inputs["updatePolicy"]
    assert policy == {"type": "PROACTIVE", "minimalAction": "REFRESH", "mostDisruptiveAllowedAction": "REPLACE",
                      "replacementMethod": "RECREATE", "maxSurgeFixed": 0, "maxUnavailableFixed": 1}
    # Never a second VM on the same disk: no surge, and the name (with its disk) is reused.
    assert update_policy().max_surge_fixed == 0
    # A group of one made by its per-instance config: no target size the program could fight over.
    assert "targetSize" not in plan.one(GROUP).inputs


def test_certificates_are_created_before_the_old_ones_go():
    plan = run_plan("prod")
    certs = plan.of_type(CERT)
    assert len(certs) == 3 and all(c.delete_before_replace is False for c in certs)
    # The names differ per host, so create-first never collides.
    assert len({c.inputs["name"] for c in certs}) == 3
    other = run_plan_with("prod", {"convex-gcp:domain": json.dumps({**stack_object("prod", "domain"), "apiHost": "api2.convex.acmecorp.dev"})})
    # Keyed by role (convex-prod-<role>-<hash of host>); the main host's certificate keeps its old logical name
    # through an alias, so a stack from before additionalHosts sees no change.
    names = lambda p: {c.inputs["name"].rsplit("-", 1)[0]: c.inputs["name"] for c in p.of_type(CERT)}  # noqa: E731
    assert names(other)["convex-prod-api"] != names(plan)["convex-prod-api"]
    assert names(other)["convex-prod-site"] == names(plan)["convex-prod-site"]


def test_front_door_serves_the_group():
    plan = run_plan("prod")
    group = plan.one(GROUP)
    backends = plan.of_type("gcp:compute/backendService:BackendService")
    assert backends and all(b.inputs["backends"][0]["group"].endswith("/instanceGroups/convex-prod-vm-group") for b in backends)
    assert all(group.urn in b.dependencies for b in backends)
    # The VM's recreation changes nothing there: no unmanaged group, no membership to re-add.
    assert not plan.of_type("gcp:compute/instanceGroup:InstanceGroup")
    assert not plan.of_type("gcp:compute/instanceGroupMembership:InstanceGroupMembership")
    assert {p["name"]: p["port"] for p in group.inputs["namedPorts"]} == {"api": 3210, "site": 3211, "dashboard": 6791}


def test_sql_name_suffix_follows_every_force_new_input(plan):
    suffix = plan.one(SUFFIX)
    config = stack_config(plan.stack)
    assert suffix.inputs["keepers"] == {"project": config["gcp:project"], "region": config["gcp:region"]}
    # In every stack a new suffix (and so a new instance) stops at the engine's protect.
    assert suffix.protect is plan.one(SQL).protect is True
    assert plan.one(SQL).inputs["name"] == f"convex-{plan.stack}-pg-a1b2"


def test_keepers_cover_region_and_project():
    settings = load_settings(stack_config("dev"), "dev")
    assert suffix_keepers(settings) == {"project": settings.project, "region": settings.region}
    moved = load_settings({**stack_config("dev"), "gcp:region": "europe-west1", "convex-gcp:vm": json.dumps({"zone": "europe-west1-b"})}, "dev")
    assert suffix_keepers(moved) != suffix_keepers(settings)


def test_instance_pinned_to_its_reserved_range(plan):
    ip = plan.one(SQL).inputs["settings"]["ipConfiguration"]
    assert ip["allocatedIpRange"] == f"convex-{plan.stack}-psa"
    (psa,) = [a for a in plan.of_type("gcp:compute/globalAddress:GlobalAddress") if a.inputs.get("purpose") == "VPC_PEERING"]
    assert ip["allocatedIpRange"] == psa.inputs["name"]


def test_everything_waits_for_api_propagation(plan):
    wait = plan.by_name("apis-propagated")
    services = plan.of_type("gcp:projects/service:Service")
    assert {s.urn for s in services} <= set(wait.dependencies)
    assert sorted(wait.inputs["services"]) == sorted(s.inputs["service"] for s in services)
    # Every Google resource that is not an API enablement itself waits for it (directly or through a parent's deps).
    for r in plan.resources:
        if r.custom and r.type.startswith("gcp:") and r.type != "gcp:projects/service:Service":
            assert wait.urn in r.dependencies or any(wait.urn in plan_dep(plan, d) for d in r.dependencies), r.name


def plan_dep(plan, urn):
    found = [r for r in plan.resources if r.urn == urn]
    return found[0].dependencies + [d2 for d in found[0].dependencies for d2 in plan_dep(plan, d)] if found else []


def test_propagation_wait_sleeps_only_on_create(monkeypatch):
    slept = []
    monkeypatch.setattr("time.sleep", slept.append)
    provider = _PropagationWait()
    provider.create({"services": ["a", "b"], "seconds": 90})
    assert slept == [90]
    same = provider.diff("id", {"services": ["a", "b"], "seconds": 90}, {"services": ["b", "a"], "seconds": 90})
    assert not same.changes
    more = provider.diff("id", {"services": ["a"], "seconds": 90}, {"services": ["a", "b"], "seconds": 90})
    assert more.changes and more.replaces == ["services"]
    assert issubclass(ApiPropagationWait, object)


def test_propagation_provider_unpickles_without_this_project(tmp_path):
    # The dynamic-provider process unpickles the provider from the state; it cannot import `components`.
    import subprocess
    import sys

    from pulumi.dynamic.dynamic import serialize_provider

    blob = tmp_path / "provider.b64"
    blob.write_text(serialize_provider(_PropagationWait()))
    code = (
        "import base64, sys, dill; p = dill.loads(base64.b64decode(open(sys.argv[1]).read()));"
        "d = p.diff('i', {'services': ['a']}, {'services': ['a', 'b']}); print(d.replaces, p.create({'services': ['a'], 'seconds': 0}).id)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(blob)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["['services']", "apis-1"]


def test_boot_image_is_the_pinned_build(plan):
    (boot, _) = plan.one(TEMPLATE).inputs["disks"]
    assert boot["sourceImage"] == f"projects/cos-cloud/global/images/{images.COS_IMAGE}"


@pytest.mark.parametrize("family", ["cos-cloud/cos-stable", "cos-cloud/cos-125-lts", "cos-cloud/cos-arm64-dev"])
def test_an_image_family_is_refused_with_the_fix(family):
    with pytest.raises(ConfigError) as caught:
        load_settings({**stack_config("dev"), "convex-gcp:vm": json.dumps({**stack_object("dev", "vm"), "image": family})}, "dev")
    (problem,) = caught.value.problems
    assert problem.path == "convex-gcp:vm.image" and "image family" in problem.reason
    assert f"cos-cloud/{images.COS_IMAGE}" in problem.fix


def test_an_exact_image_is_taken_as_it_is():
    plan = run_plan_with("dev", {"convex-gcp:vm": json.dumps({**stack_object("dev", "vm"), "image": "cos-cloud/cos-121-18867-624-2"})})
    assert plan.one(TEMPLATE).inputs["disks"][0]["sourceImage"] == "projects/cos-cloud/global/images/cos-121-18867-624-2"


def test_vm_deletion_protection_is_refused():
    # Compute Engine does not offer it for a VM of a managed instance group; the disk is protected instead.
    with pytest.raises(ConfigError) as caught:
        load_settings({**stack_config("dev"), "convex-gcp:vm": json.dumps({**stack_object("dev", "vm"), "deletionProtection": True})}, "dev")
    assert [p.path for p in caught.value.problems] == ["convex-gcp:vm.deletionProtection"]


def test_connection_name_from_inputs():
    assert connection_name("p", "asia-northeast1", "convex-dev-pg-a1b2") == "p:asia-northeast1:convex-dev-pg-a1b2"


# --------------------------------------------------------------------------- placeholders (prod)


@pytest.mark.parametrize(
    "name, reserved",
    [("example.com", True), ("api.convex.example.com", True), ("x.example.net", True), ("example.org", True), ("a.example", True),
     ("a.test", True), ("b.invalid", True), ("localhost", True), ("acmecorp.dev", False), ("notexample.com", False), ("example.com.au", False)],
)
def test_reserved_names(name, reserved):
    assert is_placeholder_domain(name) is reserved


def test_prod_template_placeholders_are_refused():
    # The committed template as it is, without tools/offline_values.py.
    import yaml

    from tools.plan import ROOT

    raw = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]
    config = {k if ":" in k else f"convex-gcp:{k}": json.dumps(v) if isinstance(v, (dict, list)) else str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw.items()}
    with pytest.raises(ConfigError) as caught:
        load_settings(config, "prod")
    paths = {p.path for p in caught.value.problems}
    assert paths == {
        "convex-gcp:domain.apiHost", "convex-gcp:domain.siteHost", "convex-gcp:domain.dashboardHost",
        "convex-gcp:domain.dashboardMembers[0]", "convex-gcp:monitoring.notificationEmails[0]",
    }
    assert all("RFC 2606" in p.reason and p.fix.startswith("pulumi config set --path") for p in caught.value.problems)


def test_dev_keeps_example_names():
    hosts = {"apiHost": "api.example.com", "siteHost": "site.example.com", "dashboardHost": "d.example.com", "dashboardMembers": ["group:ops@example.com"]}
    config = {**stack_config("dev"), "convex-gcp:domain": json.dumps(hosts), "convex-gcp:network": json.dumps({"apiSourceRanges": []})}
    settings = load_settings(config, "dev")
    assert check_placeholders(settings) == []


def test_prod_plan_with_a_placeholder_fails_before_anything_is_declared():
    domain = {**stack_object("prod", "domain"), "siteHost": "site.convex.test"}
    plan = run_plan_with("prod", {"convex-gcp:domain": json.dumps(domain)})
    assert "convex-gcp:domain.siteHost: 'site.convex.test' is a reserved example name" in plan.error
    assert plan.resources == []


@pytest.mark.parametrize("member", ["group:ops", "user:a@b", "ops@acmecorp.dev", "serviceAccount:x", "domain:Acme"])
def test_malformed_iam_members_are_refused(member):
    domain = {"apiHost": "api.acmecorp.dev", "siteHost": "site.acmecorp.dev", "dashboardHost": "dash.acmecorp.dev", "dashboardMembers": [member]}
    with pytest.raises(ConfigError) as caught:
        load_settings({**stack_config("dev"), "convex-gcp:domain": json.dumps(domain)}, "dev")
    assert [p.path for p in caught.value.problems] == ["convex-gcp:domain.dashboardMembers"]
    assert member in caught.value.problems[0].reason
