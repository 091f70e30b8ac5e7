"""The deploy-time guard: a preview that deletes or replaces data, the instance secret, the VM group
or the load balancer's address stops the deploy, unless that kind is allowed by name."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_plan, run_plan_with, stack_object
from tools.guard_data import DESTRUCTIVE_OPS, GUARDED, allowed_kinds, destructive_steps, kind_of, main, unsafe_moves

SQL = "urn:pulumi:dev::convex-gcp::convex-gcp:index:Database$gcp:sql/databaseInstance:DatabaseInstance::database-instance"
DISK = "urn:pulumi:dev::convex-gcp::convex-gcp:index:ConvexVm$gcp:compute/disk:Disk::convex-data"
VM = "urn:pulumi:dev::convex-gcp::convex-gcp:index:ConvexVm$gcp:compute/instance:Instance::convex-vm"
GROUP = "urn:pulumi:prod::convex-gcp::convex-gcp:index:ConvexVm$gcp:compute/instanceGroupManager:InstanceGroupManager::convex-group"
SECRET = "urn:pulumi:dev::convex-gcp::convex-gcp:index:Identity$gcp:secretmanager/secret:Secret::identity-{}"
ADDRESS = "urn:pulumi:prod::convex-gcp::convex-gcp:index:FrontDoor$gcp:compute/globalAddress:GlobalAddress::front-door-ip"
RANGE = "urn:pulumi:prod::convex-gcp::convex-gcp:index:Network$gcp:compute/globalAddress:GlobalAddress::network-psa-range"


def preview(*steps):
    # Shape of `pulumi preview --json` (pulumi pkg/display/json.go PreviewDigest / PreviewStep).
    return {"steps": [{"op": op, "urn": urn, **extra} for op, urn, extra in steps], "changeSummary": {}}


def run(tmp_path, monkeypatch, data: dict, allow: str | None = None) -> int:
    if allow is None:
        monkeypatch.delenv("CONVEX_GCP_ALLOW_DATA_REPLACEMENT", raising=False)
    else:
        monkeypatch.setenv("CONVEX_GCP_ALLOW_DATA_REPLACEMENT", allow)
    path = tmp_path / "preview.json"
    path.write_text(json.dumps(data))
    return main([str(path)])


def test_sql_replacement_is_refused(tmp_path, monkeypatch, capsys):
    steps = preview(("replace", SQL, {"replaceReasons": ["name"]}), ("create-replacement", SQL, {}), ("delete-replaced", SQL, {}))
    assert run(tmp_path, monkeypatch, steps) == 1
    out = capsys.readouterr().out
    assert "REFUSED" in out and "Cloud SQL instance" in out and "because of: name" in out and "instanceName" in out
    assert "CONVEX_GCP_ALLOW_DATA_REPLACEMENT=sql-instance" in out and "convex-gcp:unprotect" in out


@pytest.mark.parametrize("urn,extra,kind", [
    (SQL, {}, "sql-instance"),
    (DISK, {}, "data-disk"),
    (GROUP, {}, "vm-group"),
    (SECRET.format("instance-secret"), {}, "instance-secret"),
    (ADDRESS, {"oldState": {"inputs": {"addressType": "EXTERNAL", "name": "convex-prod-lb-ip"}}}, "lb-address"),
])
def test_a_lone_delete_replaced_step_is_refused(tmp_path, monkeypatch, urn, extra, kind):
    # What an interrupted create-first replacement leaves for the next update: only the delete of the old one.
    data = preview(("delete-replaced", urn, extra))
    assert [k for k, _ in destructive_steps(data)] == [kind]
    assert run(tmp_path, monkeypatch, data) == 1


def test_vm_replacement_updates_and_other_secrets_pass():
    # A bare VM is replaced on a COS release; the data disk and the database only change in place; the
    # admin key can be minted again under a new id; the private services range is not the load balancer's
    # address (its replacement under the same name is the fixed-name kind's, below).
    assert destructive_steps(preview(
        ("replace", VM, {}), ("update", DISK, {}), ("same", SQL, {}), ("update", GROUP, {}),
        ("replace", SECRET.format("admin-key"), {"oldState": {"inputs": {"secretId": "convex-dev-admin-key"}},
                                                  "newState": {"inputs": {"secretId": "convex-dev-admin-key-2"}}}),
        ("delete", RANGE, {"oldState": {"inputs": {"addressType": "INTERNAL", "purpose": "VPC_PEERING"}}}),
    )) == []


def test_a_deleted_data_disk_is_refused():
    assert destructive_steps(preview(("delete", DISK, {}))) == [("data-disk", f"delete Convex data disk {DISK}")]


def test_only_the_named_kind_is_let_through(tmp_path, monkeypatch, capsys):
    data = preview(("replace", GROUP, {}), ("delete", DISK, {}))
    assert run(tmp_path, monkeypatch, data, allow="vm-group") == 1
    out = capsys.readouterr().out
    assert "ALLOWED by CONVEX_GCP_ALLOW_DATA_REPLACEMENT=vm-group" in out and "REFUSED" in out and "data disk" in out
    assert run(tmp_path, monkeypatch, data, allow="vm-group, data-disk") == 0
    assert run(tmp_path, monkeypatch, data, allow="all") == 0


def test_an_unknown_kind_or_a_bare_1_is_a_usage_error(tmp_path, monkeypatch, capsys):
    # "1" used to allow everything; a kind must now be named, so a typo cannot allow more than meant.
    for value in ("1", "sql"):
        assert run(tmp_path, monkeypatch, preview(("delete", DISK, {})), allow=value) == 2
        assert "allowed: all, sql-instance" in capsys.readouterr().err
    with pytest.raises(ValueError):
        allowed_kinds("vm-group,disk")


def test_unreadable_preview_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVEX_GCP_ALLOW_DATA_REPLACEMENT", raising=False)
    path = tmp_path / "preview.json"
    path.write_text("not json")
    assert main([str(path)]) == 2


def _as_step(op: str, resource) -> dict:
    return {"op": op, "urn": resource.urn, "newState": {"type": resource.type, "inputs": resource.inputs}}


@pytest.mark.parametrize("op", sorted(DESTRUCTIVE_OPS))
def test_every_guarded_kind_matches_what_the_program_declares(op):
    """Tied to the producer: each guarded resource as the prod program (and the local stack) declares it is
    caught under its kind, and nothing else the program declares is."""
    seen = {}
    for stack in ("prod", "dev", "local"):
        for resource in run_plan(stack).resources:
            if resource.custom:
                kind = kind_of(_as_step(op, resource))
                if kind:
                    seen.setdefault(kind, set()).add(resource.name)
    assert seen["sql-instance"] == {"database-instance"}
    assert seen["database"] == {"database-convex-db"}
    assert seen["instance-secret"] == {"identity-instance-secret"}
    assert seen["lb-address"] == {"front-door-ip"}
    assert seen["vm-group"] == {"convex-group"}
    assert seen["data-disk"] and seen["docker-volume"]
    assert set(seen) <= set(GUARDED)


GROUP_VM = "urn:pulumi:dev::convex-gcp::convex-gcp:index:ConvexOnGcp$convex-gcp:index:ConvexVm$gcp:compute/perInstanceConfig:PerInstanceConfig::convex-vm"


def test_moving_from_the_bare_vm_in_one_update_is_refused_even_when_allowed(tmp_path, monkeypatch, capsys):
    # The engine creates first and deletes removed resources last: the group's VM would start while the bare
    # VM still holds the name and the data disk (docs/updates.md, the two-step move).
    data = preview(("create", GROUP_VM, {}), ("delete", VM, {}), ("same", DISK, {}))
    assert run(tmp_path, monkeypatch, data, allow="all") == 1
    assert "two VMs on the data disk" in capsys.readouterr().out


def test_the_two_step_move_passes(tmp_path, monkeypatch):
    # Step 1 (pulumi destroy --target the bare VM) deletes it alone; step 2 creates the group's VM alone.
    first, second = preview(("delete", VM, {}), ("same", DISK, {})), preview(("create", GROUP_VM, {}), ("same", DISK, {}))
    assert unsafe_moves(first) == unsafe_moves(second) == []
    assert run(tmp_path, monkeypatch, first) == 0 and run(tmp_path, monkeypatch, second) == 0


# --------------------------------------------------------------------------- fixed names (issue 23, part 7)

from tools.guard_data import FIXED_NAME  # noqa: E402

# Types the program names that are not in FIXED_NAME, and why their replacement cannot fail partway.
NOT_FIXED = {
    "gcp:compute/managedSslCertificate:ManagedSslCertificate": "the name changes with the host: created first",
    "gcp:certificatemanager/certificate:Certificate": "the name changes with the host: created first",
    "gcp:certificatemanager/dnsAuthorization:DnsAuthorization": "the name changes with the host: created first",
    "gcp:certificatemanager/certificateMapEntry:CertificateMapEntry": "the name changes with the host: created first",
    "gcp:compute/instanceTemplate:InstanceTemplate": "name_prefix: every template gets a new name, created first",
    "gcp:compute/firewall:Firewall": "nothing refers to a firewall rule: delete-first leaves a gap of seconds, no failure",
    "gcp:compute/globalForwardingRule:GlobalForwardingRule": "nothing refers to a forwarding rule: delete-first works",
    "gcp:compute/diskResourcePolicyAttachment:DiskResourcePolicyAttachment": "an attachment is deleted and made again",
    "gcp:compute/perInstanceConfig:PerInstanceConfig": "the group's per-instance config is replaced with the group (vm-group)",
    "gcp:serviceaccount/account:Account": "create_ignore_already_exists adopts the account of the same id",
    "gcp:compute/routerNat:RouterNat": "nothing refers to the NAT config: delete-first works",
    "gcp:dns/managedZone:ManagedZone": "ssl mode's private zone: its records go with it and are made again",
    "gcp:secretmanager/secretIamMember:SecretIamMember": "a member binding: replacing it removes and adds the same member",
}


def _named_types() -> set[str]:
    names = set()
    for stack, overrides in (("prod", {}), ("dev", {}), ("dev", {"convex-gcp:connectionMode": "ssl", "convex-gcp:iamAuth": "false"}),
                             ("prod", {"convex-gcp:domain": json.dumps({**stack_object("prod", "domain"), "managedZone": "zone"})})):
        from tools.offline_values import replace_placeholders

        plan = run_plan_with(stack, replace_placeholders(overrides))
        assert not plan.error, plan.error
        names |= {r.type for r in plan.resources if r.custom and r.type.startswith("gcp:") and any(f in r.inputs for f in ("name", "secretId"))}
    return names


def test_every_fixed_name_type_the_program_declares_is_considered():
    guarded = {t for kind in GUARDED.values() for t in kind.types}
    unconsidered = _named_types() - set(FIXED_NAME) - set(NOT_FIXED) - guarded
    assert unconsidered == set(), f"decide whether a replacement of these fails partway: {sorted(unconsidered)}"


def replacement(typ: str, old: dict, new: dict, op: str = "replace") -> dict:
    urn = f"urn:pulumi:prod::convex-gcp::convex-gcp:index:FrontDoor${typ}::x"
    return {"op": op, "urn": urn, "replaceReasons": ["loadBalancingScheme"], "oldState": {"inputs": old}, "newState": {"inputs": new}}


@pytest.mark.parametrize("typ", sorted(FIXED_NAME))
def test_a_replacement_under_the_same_name_is_refused_with_what_holds_it(typ, tmp_path, monkeypatch, capsys):
    field = "secretId" if typ.startswith("gcp:secretmanager") else "name"
    inputs = {field: "convex-prod-thing", "addressType": "INTERNAL", "purpose": "VPC_PEERING"}
    data = preview()
    data["steps"] = [replacement(typ, inputs, dict(inputs))]
    found = destructive_steps(data)
    assert [k for k, _ in found] == ["fixed-name"] and FIXED_NAME[typ] in found[0][1]
    assert run(tmp_path, monkeypatch, data) == 1
    assert "give the resource a new name" in capsys.readouterr().out
    # An unknown new name is refused too; a new name is created first and passes; a plain delete passes.
    assert destructive_steps({"steps": [replacement(typ, inputs, {**inputs, field: "04da6b54-80e4-46f7-96ec-b56ff0331ba9"})]})
    assert destructive_steps({"steps": [replacement(typ, inputs, {**inputs, field: "convex-prod-thing-2"})]}) == []
    assert destructive_steps({"steps": [{"op": "delete", "urn": replacement(typ, inputs, inputs)["urn"], "oldState": {"inputs": inputs}}]}) == []
    assert run(tmp_path, monkeypatch, data, allow="fixed-name") == 0


def test_the_private_services_range_prefix_change_is_refused_with_the_key_to_keep():
    old = {"name": "convex-prod-psa", "addressType": "INTERNAL", "purpose": "VPC_PEERING", "prefixLength": 16}
    (found,) = destructive_steps({"steps": [{"op": "replace", "urn": RANGE, "replaceReasons": ["prefixLength"],
                                             "oldState": {"inputs": old}, "newState": {"inputs": {**old, "prefixLength": 20}}}]})
    assert found[0] == "fixed-name" and "because of: prefixLength" in found[1] and "privateServicesPrefixLength" in found[1]
