"""tools/restore.py and tools/restore_drill.py against a fake Convex serving the pinned backend's import and
export routes (tests/fakes/convex_snapshots.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT
from tests.fakes.convex_snapshots import FakeConvexDeployment, build_zip
from tools import snapshots as restore_tool
from tools import restore_drill

KEY = "convex-dev|0123abcd"
TABLES = {"messages": [{"_id": "m1", "_creationTime": 1.7e12, "marker": "a", "body": "hello"},
                       {"_id": "m2", "_creationTime": 1.7e12, "marker": "b", "body": "world"}]}
FILES = {"kg2file": (b"file bytes " * 100, "text/plain")}


@pytest.fixture
def convex():
    fake = FakeConvexDeployment(KEY)
    yield fake
    fake.close()


@pytest.fixture
def snapshot(tmp_path):
    path = tmp_path / "snapshot_1796000000000000000.zip"
    path.write_bytes(build_zip(TABLES, FILES, include_storage=True))
    return path


def deployment(fake) -> restore_tool.Deployment:
    return restore_tool.Deployment(fake.url, KEY)


def test_restore_into_an_empty_deployment_uses_the_cli_s_import_calls(convex, snapshot):
    said = []
    result = restore_tool.restore(deployment(convex), snapshot, say=said.append, poll=0)
    assert convex.tables == TABLES and convex.files == FILES
    assert result.documents == 3
    # The plan is printed before anything is sent.
    assert said[0].startswith(f"Restore {snapshot}") and "2 document(s) in messages (2); 1 file(s)" in said[0]
    assert "replace-all" in said[2]
    posts = [path for method, path in convex.requests if method == "POST" and path != "/api/query"]
    assert posts == ["/api/import/start_upload", "/api/import/upload_part", "/api/import/finish_upload", "/api/perform_import"]


def test_a_deployment_with_data_is_refused_unless_forced(convex, snapshot):
    convex.tables = {"messages": [{"_id": "x", "marker": "z", "body": "keep me"}], "other": [{"_id": "y"}]}
    with pytest.raises(restore_tool.RestoreError, match=r"holds data \(2 document\(s\) in messages \(1\), other \(1\); 0 file\(s\)\): refusing"):
        restore_tool.restore(deployment(convex), snapshot, say=lambda _: None, poll=0)
    assert not any(path.startswith("/api/import") for _, path in convex.requests), "nothing was uploaded"
    assert convex.tables["messages"][0]["body"] == "keep me"
    restore_tool.restore(deployment(convex), snapshot, force=True, say=lambda _: None, poll=0)
    # replaceAll: the export's tables and files, and a table the export lacks is gone.
    assert convex.tables == TABLES and convex.files == FILES


def test_files_alone_count_as_data(convex, snapshot):
    convex.files = {"kgother": (b"x", "")}
    with pytest.raises(restore_tool.RestoreError, match="1 file"):
        restore_tool.restore(deployment(convex), snapshot, say=lambda _: None, poll=0)


def test_a_damaged_export_is_refused_before_anything_is_sent(convex, snapshot):
    data = snapshot.read_bytes()
    snapshot.write_bytes(data[: len(data) // 2])
    with pytest.raises(restore_tool.RestoreError, match="not a complete zip archive"):
        restore_tool.restore(deployment(convex), snapshot, say=lambda _: None, poll=0)
    assert convex.requests == []


def test_a_large_export_is_uploaded_in_parts(convex, tmp_path, monkeypatch):
    monkeypatch.setattr(restore_tool, "CHUNK", 4096)  # tools/snapshots.py
    big = {"blob": (os.urandom(10000), "application/octet-stream")}
    path = tmp_path / "big.zip"
    path.write_bytes(build_zip(TABLES, big, include_storage=True))
    restore_tool.restore(deployment(convex), path, say=lambda _: None, poll=0)
    parts = [p for m, p in convex.requests if p == "/api/import/upload_part"]
    assert len(parts) == -(-path.stat().st_size // 4096) and convex.files == big


def test_a_failed_import_is_an_error(convex, snapshot, monkeypatch):
    original = convex._advance_import

    def failing(doc):
        doc["state"] = {"state": "failed", "error_message": "Hit an error while importing"}

    convex._advance_import = failing
    with pytest.raises(restore_tool.RestoreError, match="failed the import: Hit an error"):
        restore_tool.restore(deployment(convex), snapshot, say=lambda _: None, poll=0)
    convex._advance_import = original


def run_cli(args, env_extra=None, path=None):
    env = {**os.environ, **(env_extra or {})}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "tools.restore", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_cli_restores_from_a_file_with_saved_outputs(convex, snapshot, tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"convex_url": convex.url}))
    p = run_cli(["dev", "--from", str(snapshot), "--outputs", str(outputs)], {"CONVEX_SELF_HOSTED_ADMIN_KEY": KEY})
    assert p.returncode == 0, p.stderr
    assert "Restore " in p.stdout and "Restored: 3" in p.stdout
    assert convex.tables == TABLES
    p = run_cli(["dev", "--from", str(snapshot), "--outputs", str(outputs)], {"CONVEX_SELF_HOSTED_ADMIN_KEY": KEY})
    assert p.returncode == 1 and p.stderr.startswith("tools.restore: ") and "refusing" in p.stderr and "--force" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("args, missing", [
    (["dev", "--from", "snapshot.zip"], "pulumi"),
    (["dev", "--from", "gs://b/o.zip", "--outputs", "o.json"], "gcloud"),
    (["dev", "--from", "latest", "--outputs", "o.json"], "gcloud"),
])
def test_cli_prerequisites_are_one_line_and_exit_2(tmp_path, args, missing):
    empty = tmp_path / "bin"
    empty.mkdir()
    p = run_cli(args, path=str(empty))
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(f"tools.restore: needs {missing}"), p.stderr


def test_the_drill_writes_exports_loses_restores_and_reads_back(convex):
    report = restore_drill.run("dev", {"convex_url": convex.url}, deployment(convex), poll=0)
    assert report.error == "", report.error
    assert report.refused_with_data and report.late_row_lost and report.file_restored
    assert report.rows_written == report.rows_restored == 3
    assert report.rpo_seconds is not None and 0 <= report.rpo_seconds < 60
    assert report.rto_seconds is not None and report.rto_seconds >= report.steps["restore"]
    assert report.export.startswith(convex.url + "/api/export/zip/")


def test_the_drill_fails_when_the_restore_loses_the_file(convex, monkeypatch):
    real = restore_drill.restore

    def restore_without_files(dep, path, **kwargs):
        with zipfile.ZipFile(path) as src:
            kept = {n: src.read(n) for n in src.namelist() if not n.startswith("_storage/") or n.endswith(".jsonl")}
        with zipfile.ZipFile(path, "w") as dst:
            for name, data in kept.items():
                dst.writestr(name, data if name != "_storage/documents.jsonl" else b"")
        return real(dep, path, **kwargs)

    monkeypatch.setattr(restore_drill, "restore", restore_without_files)
    report = restore_drill.run("dev", {"convex_url": convex.url}, deployment(convex), poll=0)
    assert "file restored: False" in report.error


def test_cli_drill_on_a_local_stack_prints_rpo_and_rto(convex, tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"convex_url": convex.url}))
    p = run_cli(["local", "--drill", "--no-deploy", "--outputs", str(outputs)], {"CONVEX_SELF_HOSTED_ADMIN_KEY": KEY})
    assert p.returncode == 0, p.stderr + p.stdout
    report = json.loads(p.stdout[p.stdout.index("{\n"):])
    assert report["error"] == "" and report["rpo_seconds"] >= 0 and report["rto_seconds"] > 0


def test_an_export_download_cut_short_is_an_error(convex, tmp_path):
    convex.tables = TABLES
    convex.download_cut = True
    with pytest.raises(restore_tool.RestoreError, match="export download failed"):
        restore_tool.export(deployment(convex), tmp_path / "cut.zip", poll=0)
    convex.download_cut = False
    start_ts = restore_tool.export(deployment(convex), tmp_path / "whole.zip", poll=0)
    assert (tmp_path / "whole.zip").read_bytes() == convex.stored[start_ts]


def test_the_gcp_drill_starts_the_vm_s_export_service_and_fetches_the_newest_object(tmp_path, monkeypatch):
    """The exporter a GCP drill uses: the request file in the unit's CONVEX_EXPORT_DIR (the VM's mount point,
    vm/startup.sh's default), the service started over IAP SSH, the newest object copied from the bucket."""
    from convex_gcp.runtime import UNIT_DIR

    unit = (UNIT_DIR / "convex-export.service").read_text()
    assert "Environment=CONVEX_EXPORT_DIR={{MOUNT_POINT}}/exports" in unit
    assert restore_drill.VM_EXPORT_DIR == "/mnt/disks/convex-data/exports"
    assert "MOUNT_POINT=${CONVEX_GCP_MOUNT_POINT:-/mnt/disks/convex-data}" in (UNIT_DIR.parent / "startup.sh").read_text()
    calls = []

    def fake_run(argv, **kwargs):
        calls.append(argv)
        out = ""
        if argv[:3] == ["gcloud", "storage", "ls"]:
            out = "gs://b/convex-exports/2026/12/06/snapshot_1796000000000000000.zip\ngs://b/convex-exports/2026/12/07/snapshot_1796100000000000000.zip\n"
        if argv[:3] == ["gcloud", "storage", "cp"]:
            (tmp_path / "got.zip").write_bytes(b"zip")
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr(restore_drill.subprocess, "run", fake_run)
    exporter = restore_drill.for_stack("gcp", {"vm_name": "convex-dev-vm", "vm_zone": "asia-northeast1-a", "exports_bucket": "b"}, "p")
    start_ts, source = exporter(None, tmp_path / "got.zip")
    ssh, ls, cp = calls
    assert ssh[:4] == ["gcloud", "compute", "ssh", "convex-dev-vm"] and "--tunnel-through-iap" in ssh and "--quiet" in ssh
    assert "--command=sudo touch /mnt/disks/convex-data/exports/requested && sudo systemctl start convex-export.service" in ssh
    assert start_ts == 1796100000000000000 and source.endswith("2026/12/07/snapshot_1796100000000000000.zip")
    assert cp[3] == source
