"""Scheduled Convex exports on the VM: the timer and service the boot installs (vm/units/convex-export.*),
run against a fake Convex that serves the export routes as the pinned backend does
(tests/fakes/convex_snapshots.py), a fake Cloud Storage upload and Cloud Monitoring (fakes/storage.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shlex
import subprocess
import zipfile

import pytest
from fakes import fakebin
from fakes.google import INSTANCE_IDENTITY
from fakes.storage import GoogleStorageServer
from sandbox import ADMIN_KEY_SECRET_ID, EXPORT_BUCKET, SETTINGS

from components.exports import TICK_SECONDS, export_age_conditions
from convex_gcp import runtime
from tests.fakes.convex_snapshots import FakeConvexDeployment, read_zip

INTERVAL = SETTINGS.export_interval_hours * 3600
METRIC = runtime.export_metric_type("convex-dev")


@pytest.fixture
def world(sandbox, booted):
    key = sandbox.apis.secrets[ADMIN_KEY_SECRET_ID][-1].decode()
    convex = FakeConvexDeployment(key)
    convex.tables = {"messages": [{"_id": "m1", "_creationTime": 1.7e12, "marker": "a", "body": "hello"}]}
    convex.files = {"kg2abc": (b"\x89PNG\r\n\x1a\n" + os.urandom(2000), "image/png")}
    storage = GoogleStorageServer(sandbox.metadata.tokens)
    yield sandbox, convex, storage
    convex.close()
    storage.close()


def run_service(sandbox, convex, storage, now: int | None = None) -> subprocess.CompletedProcess:
    """What systemd does when the timer fires: the installed unit's ExecStartPre and ExecStart with its
    Environment= and RuntimeDirectory= (systemd.exec(5)), plus the sandbox's endpoints."""
    text = (sandbox.unit_dir / "convex-export.service").read_text()
    lines = fakebin.unit_lines(text)
    env = sandbox.env()
    env.update(v.split("=", 1) for k, v in lines if k == "Environment")
    runtime_dir = sandbox.tmp / "run" / "convex-export"
    runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    env.update(RUNTIME_DIRECTORY=str(runtime_dir), STORAGE_ENDPOINT=storage.url, MONITORING_ENDPOINT=storage.url,
               CONVEX_EXPORT_BACKEND_URL=convex.url, CONVEX_EXPORT_POLL_S="0.02")
    if now is not None:
        env["CONVEX_EXPORT_NOW"] = str(now)
    for key, value in lines:
        if key in ("ExecStartPre", "ExecStart"):
            p = subprocess.run(shlex.split(value), env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            if p.returncode != 0:
                return p
    return p


def exports_dir(sandbox):
    return sandbox.mount_point / "exports"


def test_boot_installs_the_timer_and_its_oneshot_service(sandbox, booted):
    units = sandbox.units()
    assert units["convex-export.timer"]["state"] == "active"
    # The service is started by the timer only: the boot never starts an export itself.
    assert "convex-export.service" not in units
    service = dict(fakebin.unit_lines((sandbox.unit_dir / "convex-export.service").read_text()))
    assert service["Type"] == "oneshot"
    assert service["ExecStart"] == f"/bin/bash {sandbox.run_dir}/convex-export.sh"
    assert (sandbox.run_dir / "convex-export.sh").read_text() == runtime.EXPORT_SCRIPT.read_text()
    timer = dict(fakebin.unit_lines((sandbox.unit_dir / "convex-export.timer").read_text()))
    # Every 15 minutes: the script's tick and the alert's alignment assume it.
    assert timer["OnCalendar"] == "*:0/15" and TICK_SECONDS == 900
    env = dict(v.split("=", 1) for k, v in fakebin.unit_lines((sandbox.unit_dir / "convex-export.service").read_text()) if k == "Environment")
    assert env["CONVEX_EXPORT_BUCKET"] == EXPORT_BUCKET and env["CONVEX_EXPORT_INTERVAL_S"] == str(INTERVAL)
    assert env["CONVEX_EXPORT_METRIC"] == METRIC


def test_an_export_is_requested_checked_and_uploaded_once(world):
    sandbox, convex, storage = world
    p = run_service(sandbox, convex, storage)
    assert p.returncode == 0, p.stderr
    # The routes npx convex export uses, in its order.
    posts = [path for method, path in convex.requests if method == "POST"]
    assert posts[0] == "/api/export/request/zip" and set(posts[1:]) == {"/api/query"}
    (start_ts,) = convex.stored
    assert ("GET", f"/api/export/zip/{start_ts}") in convex.requests
    ((bucket, name), obj), = storage.objects.items()
    assert bucket == EXPORT_BUCKET and name.startswith("convex-exports/") and name.endswith(f"/snapshot_{start_ts}.zip")
    data = obj["data"]
    assert data == convex.stored[start_ts]
    meta = obj["resource"]["metadata"]
    assert meta["sha256"] == hashlib.sha256(data).hexdigest() and meta["size"] == str(len(data))
    assert meta["convex-snapshot-ts"] == str(start_ts)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert int(meta["zip-entries"]) == len(archive.namelist()) == 5
    assert obj["resource"]["md5Hash"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    # Tables and files come back out of the uploaded object.
    assert read_zip(data) == (convex.tables, convex.files)
    # Never overwrites: the upload carries ifGenerationMatch=0 (fakes/storage.py answers 412 otherwise).
    assert "result=ok object=gs://" in p.stderr
    assert (exports_dir(sandbox) / "newest-good").read_text().split() == [str(start_ts // 10**9), f"gs://{bucket}/{name}"]
    assert not list(exports_dir(sandbox).glob("*.zip")), "the download is removed once uploaded"
    # Secrets: the admin key and the token never reach argv or the log.
    key = sandbox.apis.secrets[ADMIN_KEY_SECRET_ID][-1].decode()
    assert key not in p.stderr and key not in p.stdout
    assert list(sandbox.tmp.joinpath("run", "convex-export").iterdir()) == [], "the run's token and admin key files are removed"
    # The age the alert reads, for this instance.
    series = storage.series[-1]
    assert series["metric"] == {"type": METRIC, "labels": {"bucket": EXPORT_BUCKET}}
    assert series["resource"] == {"type": "gce_instance", "labels": {"project_id": "test-proj", "instance_id": INSTANCE_IDENTITY["instance/id"],
                                                                      "zone": "europe-west1-b"}}
    assert 0 <= series["points"][0]["value"]["doubleValue"] < 120


def test_next_tick_reports_the_age_and_exports_only_when_due(world):
    sandbox, convex, storage = world
    assert run_service(sandbox, convex, storage).returncode == 0
    start = int((exports_dir(sandbox) / "newest-good").read_text().split()[0])
    p = run_service(sandbox, convex, storage, now=start + 3600)
    assert p.returncode == 0 and "not due" in p.stderr
    assert len(convex.exports) == 1 and len(storage.objects) == 1
    assert storage.series[-1]["points"][0]["value"]["doubleValue"] == 3600
    # One tick before the interval is up counts as due: exports stay one interval apart, not 15 minutes late.
    p = run_service(sandbox, convex, storage, now=start + INTERVAL - TICK_SECONDS + 1)
    assert p.returncode == 0, p.stderr
    assert len(convex.exports) == 2 and len(storage.objects) == 2


@pytest.mark.parametrize("fault, reason", [
    ("export_fails", "the backend reports the export failed"),
    ("download_cut", "export download answered HTTP 000"),
    ("export_damaged", "the export is not a complete zip archive"),
])
def test_a_failed_or_truncated_export_is_never_uploaded_and_the_age_keeps_growing(world, fault, reason):
    sandbox, convex, storage = world
    setattr(convex, fault, True)
    assert run_service(sandbox, convex, storage).returncode == 1
    first = int((exports_dir(sandbox) / "first-run").read_text())
    # Two intervals later, still failing (every tick tries again: it is due).
    p = run_service(sandbox, convex, storage, now=first + 2 * INTERVAL + 60)
    assert p.returncode == 1
    assert f'result=failed reason="{reason}' in p.stderr, p.stderr
    assert storage.objects == {}
    assert not (exports_dir(sandbox) / "newest-good").exists()
    assert not list(exports_dir(sandbox).glob("snapshot_*.zip")), "a broken download is not kept on the data disk"
    # The alert that follows: the age the VM reports is past the policy's threshold on the metric it filters.
    series = storage.series[-1]
    (late, absent) = export_age_conditions(METRIC, INTERVAL)
    assert f'metric.type = "{series["metric"]["type"]}"' in late.condition_threshold.filter
    assert f'resource.type = "{series["resource"]["type"]}"' in late.condition_threshold.filter
    assert series["points"][0]["value"]["doubleValue"] > late.condition_threshold.threshold_value
    assert absent.condition_absent.filter == late.condition_threshold.filter
    # The next tick tries again (it is due), and succeeds once the backend does.
    setattr(convex, fault, False)
    p = run_service(sandbox, convex, storage)
    assert p.returncode == 0, p.stderr
    assert len(storage.objects) == 1 and storage.series[-1]["points"][0]["value"]["doubleValue"] < 120


def test_a_requested_export_runs_now_and_the_request_is_used_up(world):
    sandbox, convex, storage = world
    assert run_service(sandbox, convex, storage).returncode == 0
    (exports_dir(sandbox) / "requested").touch()
    p = run_service(sandbox, convex, storage)
    assert p.returncode == 0, p.stderr
    assert len(storage.objects) == 2 and not (exports_dir(sandbox) / "requested").exists()


def test_a_wrong_admin_key_fails_in_one_line(world):
    sandbox, convex, storage = world
    convex.admin_key = "convex-dev|other"
    p = run_service(sandbox, convex, storage)
    assert p.returncode == 1
    assert 'result=failed reason="export request answered HTTP 401 {"code": "BadAdminKey"' in p.stderr
    assert json.loads(json.dumps(storage.objects)) == {}


def test_an_export_the_vm_uploaded_restores_into_a_fresh_deployment(world, tmp_path):
    """tools.restore brings the object the sandbox's timer service uploaded back into an empty deployment."""
    from tools import snapshots as restore_tool

    sandbox, convex, storage = world
    assert run_service(sandbox, convex, storage).returncode == 0
    ((_, name), obj), = storage.objects.items()
    path = tmp_path / name.rsplit("/", 1)[1]
    path.write_bytes(obj["data"])
    fresh = FakeConvexDeployment(convex.admin_key)
    try:
        restore_tool.restore(restore_tool.Deployment(fresh.url, fresh.admin_key), path, say=lambda _: None, poll=0)
        assert (fresh.tables, fresh.files) == (convex.tables, convex.files)
    finally:
        fresh.close()
