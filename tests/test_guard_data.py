"""The deploy-time tripwire: a preview that deletes or replaces data stops the deploy."""

from __future__ import annotations

import json

from tools.guard_data import destructive_steps, main

SQL = "urn:pulumi:dev::convex-gcp::convex-gcp:index:Database$gcp:sql/databaseInstance:DatabaseInstance::database-instance"
DISK = "urn:pulumi:dev::convex-gcp::convex-gcp:index:ConvexVm$gcp:compute/disk:Disk::convex-data"
VM = "urn:pulumi:dev::convex-gcp::convex-gcp:index:ConvexVm$gcp:compute/instance:Instance::convex-vm"


def preview(*steps):
    # Shape of `pulumi preview --json` (pulumi pkg/display/json.go previewDigest / previewStep).
    return {"steps": [{"op": op, "urn": urn, **extra} for op, urn, extra in steps], "changeSummary": {}}


def test_sql_replacement_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CONVEX_GCP_ALLOW_DATA_REPLACEMENT", raising=False)
    path = tmp_path / "preview.json"
    path.write_text(json.dumps(preview(("replace", SQL, {"replaceReasons": ["name"]}), ("create-replacement", SQL, {}), ("delete-replaced", SQL, {}))))
    assert main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "REFUSED" in out and "Cloud SQL instance" in out and "because of: name" in out and "instanceName" in out


def test_vm_replacement_and_data_updates_pass():
    # The VM is replaced on a COS release; the data disk and the database only change in place.
    assert destructive_steps(preview(("replace", VM, {}), ("update", DISK, {}), ("same", SQL, {}))) == []


def test_a_deleted_data_disk_is_refused():
    assert destructive_steps(preview(("delete", DISK, {}))) == [f"delete Convex data disk {DISK}"]


def test_the_override_lets_a_deliberate_run_through(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVEX_GCP_ALLOW_DATA_REPLACEMENT", "1")
    path = tmp_path / "preview.json"
    path.write_text(json.dumps(preview(("delete", DISK, {}))))
    assert main([str(path)]) == 0


def test_unreadable_preview_is_a_usage_error(tmp_path):
    path = tmp_path / "preview.json"
    path.write_text("not json")
    assert main([str(path)]) == 2
