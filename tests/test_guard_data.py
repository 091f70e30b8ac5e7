"""The deploy-time guard: a preview that deletes or replaces data, the instance secret, the VM group
or the load balancer's address stops the deploy, unless that kind is allowed by name."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_plan
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
    # admin key can be minted again; the private services range is not the load balancer's address.
    assert destructive_steps(preview(
        ("replace", VM, {}), ("update", DISK, {}), ("same", SQL, {}), ("update", GROUP, {}),
        ("replace", SECRET.format("admin-key"), {"newState": {"inputs": {"secretId": "convex-dev-admin-key"}}}),
        ("replace", RANGE, {"newState": {"inputs": {"addressType": "INTERNAL", "purpose": "VPC_PEERING"}}}),
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
