"""What a real engine does with the plan: replacement order, names that must not be reused, first-deploy
ordering (issue 11). Asserted on the recorded resource options and inputs of whole-program runs."""

from __future__ import annotations

import json

import pytest

from components.apis import ApiPropagationWait, _PropagationWait
from components.convex_vm import boot_image_source
from components.database import connection_name, suffix_keepers
from convex_gcp.settings import ConfigError, check_placeholders, is_placeholder_domain, load_settings
from tests.conftest import run_plan, run_plan_with, stack_object
from tools.plan import stack_config

VM = "gcp:compute/instance:Instance"
CERT = "gcp:compute/managedSslCertificate:ManagedSslCertificate"
SQL = "gcp:sql/databaseInstance:DatabaseInstance"
SUFFIX = "random:index/randomId:RandomId"


@pytest.fixture(scope="module", params=["dev", "prod"])
def plan(request):
    return run_plan(request.param)


def test_vm_is_deleted_before_it_is_replaced(plan):
    # Fixed name: create-first would get 409 alreadyExists with the data disk still attached.
    vm = plan.one(VM)
    assert vm.delete_before_replace is True
    assert vm.inputs["name"] == f"convex-{plan.stack}-vm"


def test_data_disk_survives_a_vm_replacement(plan):
    vm, disk = plan.one(VM), plan.by_name("convex-data")
    # Separate resource the VM depends on (never a dependent the engine would delete first), attached
    # without autoDelete (Compute Engine's default for attached disks is false), protected in prod.
    assert disk.urn in vm.dependencies and vm.urn not in disk.dependencies
    assert [d.get("autoDelete") for d in vm.inputs["attachedDisks"]] == [None]
    assert vm.inputs["bootDisk"]["autoDelete"] is True
    assert disk.protect is (plan.stack == "prod")
    # Nothing the VM's replacement changes feeds the disk's inputs.
    assert set(disk.inputs) == {"name", "zone", "type", "size", "labels"}


def test_certificates_are_created_before_the_old_ones_go():
    plan = run_plan("prod")
    certs = plan.of_type(CERT)
    assert len(certs) == 3 and all(c.delete_before_replace is False for c in certs)
    # The names differ per host, so create-first never collides.
    assert len({c.inputs["name"] for c in certs}) == 3
    other = run_plan_with("prod", {"convex-gcp:domain": json.dumps({**stack_object("prod", "domain"), "apiHost": "api2.convex.acmecorp.dev"})})
    names = lambda p: {c.name: c.inputs["name"] for c in p.of_type(CERT)}  # noqa: E731
    assert names(other)["front-door-cert-api"] != names(plan)["front-door-cert-api"]
    assert names(other)["front-door-cert-site"] == names(plan)["front-door-cert-site"]


def test_group_membership_is_replaced_with_the_vm():
    plan = run_plan("prod")
    member = plan.one("gcp:compute/instanceGroupMembership:InstanceGroupMembership")
    # Its instance input comes from the VM, so the VM's delete-before-replace deletes it first and it is
    # created again for the new VM; the group itself lists no instances.
    assert plan.one(VM).urn in member.dependencies
    assert "instances" not in plan.one("gcp:compute/instanceGroup:InstanceGroup").inputs


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


def test_vm_follows_the_cos_family(plan):
    vm = plan.one(VM)
    image = vm.inputs["bootDisk"]["initializeParams"]["image"]
    # Resolved by gcp.compute.get_image(family="cos-stable", project="cos-cloud") at preview.
    assert image.endswith("/projects/cos-cloud/global/images/cos-offline-stand-in-cos-stable")
    assert "bootDisk.initializeParams.image" not in vm.ignore_changes


def test_image_names_and_families():
    assert boot_image_source("cos-cloud/cos-stable") == ("cos-cloud", "cos-stable", True)
    assert boot_image_source("cos-cloud/cos-121-lts") == ("cos-cloud", "cos-121-lts", True)
    assert boot_image_source("cos-cloud/cos-121-18867-199-88") == ("cos-cloud", "cos-121-18867-199-88", False)


def test_exact_image_is_pinned_and_deletion_protection_holds_it():
    vm_config = {**stack_object("dev", "vm"), "image": "cos-cloud/cos-121-18867-199-88", "deletionProtection": True}
    held = run_plan_with("dev", {"convex-gcp:vm": json.dumps(vm_config)}).one(VM)
    assert held.inputs["bootDisk"]["initializeParams"]["image"] == "projects/cos-cloud/global/images/cos-121-18867-199-88"
    # Compute Engine refuses to delete a protected VM: the image is held rather than failing every deploy.
    assert held.ignore_changes == ["bootDisk.initializeParams.image"] and held.inputs["deletionProtection"] is True


def test_unknown_image_family_fails_the_plan():
    vm_config = {**stack_object("dev", "vm"), "image": "cos-cloud/cos-99-lts"}
    error = run_plan_with("dev", {"convex-gcp:vm": json.dumps(vm_config)}).error
    assert error.startswith("preview would fail: ") and "cos-99-lts" in error


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
