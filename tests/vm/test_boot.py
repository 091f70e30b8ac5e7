"""First boot, warm boots and the data disk, running the real vm/startup.sh."""

from __future__ import annotations

import os
import stat
import subprocess

import diskutil
from sandbox import ADMIN_KEY_SECRET_ID, BACKEND_IMAGE, DASHBOARD_IMAGE, PROXY_IMAGE


def _argv_of_run(sb, name):
    for c in sb.docker("run"):
        a = c["argv"]
        if a[a.index("--name") + 1] == name:
            return a
    raise AssertionError(f"no docker run for {name}")


def test_first_boot_formats_creates_in_order_and_stores_admin_key(sandbox):
    r = sandbox.run()
    assert r.rc == 0, r.stderr

    # Data disk: formatted ext4, fsck'd, mounted at the stable path, resized.
    assert diskutil.blkid(sandbox.disk)["TYPE"] == "ext4"
    mounts = sandbox.calls("mount")
    assert len(mounts) == 1 and mounts[0]["argv"][-2:] == [str(sandbox.disk), str(sandbox.mount_point)]
    assert "formatting ext4" in r.stderr and "resize2fs" in r.stderr

    # Order: network -> pulls -> proxy -> readiness -> backend -> /version -> dashboard -> admin key.
    calls = sandbox.docker()
    subs = [(c["argv"][0], c["argv"][-1]) for c in calls]
    i_net = subs.index(("network", "convex")) if ("network", "convex") in subs else None
    creates = [i for i, c in enumerate(calls) if c["argv"][:2] == ["network", "create"]]
    assert creates, "network convex not created"
    pulls = [i for i, c in enumerate(calls) if c["argv"][0] == "pull"]
    assert {calls[i]["argv"][-1] for i in pulls} == {PROXY_IMAGE, BACKEND_IMAGE, DASHBOARD_IMAGE}
    run_idx = [i for i, c in enumerate(calls) if c["argv"][0] == "run"]
    assert sandbox.runs() == ["cloudsql-proxy", "convex-backend", "convex-dashboard"]
    assert creates[0] < min(run_idx) and max(pulls) < min(run_idx)
    assert i_net is not None
    exec_idx = [i for i, c in enumerate(calls) if c["argv"][0] == "exec"]
    assert len(exec_idx) == 1 and exec_idx[0] > max(run_idx)

    # The proxy was ready before the backend was created; /version before the dashboard.
    t_backend = calls[run_idx[1]]["t0"]
    t_dashboard = calls[run_idx[2]]["t0"]
    ready_ok = [q["t"] for q in sandbox.health.requests if q["path"] == "/readiness"]
    version_ok = [q["t"] for q in sandbox.health.requests if q["path"] == "/version"]
    assert ready_ok and min(ready_ok) < t_backend
    assert version_ok and min(version_ok) > t_backend and min(version_ok) < t_dashboard

    # Container specs.
    proxy = _argv_of_run(sandbox, "cloudsql-proxy")
    assert "127.0.0.1:9090:9090" in proxy and not any("5432:" in a for a in proxy)
    assert proxy[-1] == "test-proj:europe-west1:convex-db" and "--private-ip" in proxy
    assert int(proxy[proxy.index("--stop-timeout") + 1]) > 30  # outlasts --max-sigterm-delay=30s
    backend = _argv_of_run(sandbox, "convex-backend")
    for flag, value in [("--stop-signal", "SIGINT"), ("--restart", "always"), ("--log-driver", "gcplogs"),
                        ("--network", "convex")]:
        assert backend[backend.index(flag) + 1] == value
    assert int(backend[backend.index("--stop-timeout") + 1]) >= 60
    assert f"type=bind,source={sandbox.mount_point}/convex,target=/convex/data" in backend
    assert backend[backend.index("--health-cmd") + 1] == "curl -sf http://localhost:3210/version"
    dash = _argv_of_run(sandbox, "convex-dashboard")
    assert "6791:6791" in dash and dash[dash.index("--restart") + 1] == "always"
    for a in (proxy, backend, dash):
        assert any(x.startswith("convex-gcp.spec=") for x in a)

    # Backend env = metadata env + INSTANCE_SECRET from Secret Manager.
    env = dict(e.split("=", 1) for e in sandbox.docker_state()["containers"]["convex-backend"]["env"])
    assert env["INSTANCE_SECRET"] == sandbox.instance_secret
    assert env["RUST_LOG"] == "info" and "@cloudsql-proxy:5432" in env["POSTGRES_URL"]

    # Admin key generated once and stored as a secret version.
    versions = sandbox.apis.secrets[ADMIN_KEY_SECRET_ID]
    assert len(versions) == 1 and versions[0].decode().startswith("convex-dev|")

    # Watcher started as a transient unit.
    sr = sandbox.calls("systemd-run")
    assert len(sr) == 1 and "--unit=convex-config-watch" in sr[0]["argv"]
    assert sr[0]["argv"][-2:] == [str(sandbox.run_dir / "startup.sh"), "watch"]

    # Secret files: root-only.
    sdir = sandbox.run_dir / "secrets"
    assert stat.S_IMODE(os.stat(sdir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sdir / "backend.env").st_mode) == 0o600
    assert not (sandbox.run_dir / "pending").exists()
    assert "PREFLIGHT PASS scopes" in r.stderr and "PREFLIGHT PASS sqladmin" in r.stderr
    assert "PREFLIGHT PASS proxy-readiness" in r.stderr and "PREFLIGHT PASS backend-version" in r.stderr


def test_second_boot_and_manual_rerun_change_nothing(sandbox, tmp_path):
    assert sandbox.run().rc == 0
    uuid = diskutil.blkid(sandbox.disk)["UUID"]
    diskutil.write_file(sandbox.disk, "precious.txt", b"user data\n", tmp_path)
    ids = {n: c["id"] for n, c in sandbox.docker_state()["containers"].items()}

    for _ in range(2):
        sandbox.reboot()
        sandbox.clear_calls()
        r = sandbox.run()
        assert r.rc == 0, r.stderr
        assert sandbox.docker("run") == [] and sandbox.docker("rm") == [] and sandbox.docker("stop") == []
        assert sandbox.docker("pull") == [] and sandbox.docker("exec") == []
        assert not [c for c in sandbox.docker("network") if c["argv"][1] == "create"]
        assert "formatting" not in r.stderr
        assert len(sandbox.calls("mount")) == 1  # /run and mounts were reset by the reboot
        assert len(sandbox.calls("systemd-run")) == 1  # transient unit is gone after reboot
        assert "changed: nothing" in r.stderr

    # Re-running by hand on the running VM: no mount, no watcher restart, nothing recreated.
    sandbox.clear_calls()
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert sandbox.calls("mount") == [] and sandbox.calls("systemd-run") == []
    assert sandbox.docker("run") == []
    assert "already mounted" in r.stderr and "already running" in r.stderr

    assert diskutil.blkid(sandbox.disk)["UUID"] == uuid
    assert diskutil.read_file(sandbox.disk, "precious.txt") == b"user data\n"
    assert {n: c["id"] for n, c in sandbox.docker_state()["containers"].items()} == ids
    assert len(sandbox.apis.secrets[ADMIN_KEY_SECRET_ID]) == 1


def test_existing_ext4_with_data_is_never_formatted(sandbox, tmp_path):
    diskutil.mkfs(sandbox.disk)
    diskutil.write_file(sandbox.disk, "keep.bin", b"\x00keep\xff" * 100, tmp_path)
    uuid = diskutil.blkid(sandbox.disk)["UUID"]
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert "formatting" not in r.stderr
    assert diskutil.blkid(sandbox.disk)["UUID"] == uuid
    assert diskutil.read_file(sandbox.disk, "keep.bin") == b"\x00keep\xff" * 100


def _assert_refused(sandbox, r, before):
    assert r.rc == 1
    assert "refusing" in r.stderr
    assert diskutil.digest(sandbox.disk) == before
    assert sandbox.calls("mount") == [] and sandbox.docker("run") == []


def test_other_filesystem_is_never_formatted(sandbox):
    diskutil.mkfs(sandbox.disk, "ext2")
    before = diskutil.digest(sandbox.disk)
    r = sandbox.run()
    _assert_refused(sandbox, r, before)
    assert "filesystem ext2" in r.stderr


def test_partition_table_is_never_formatted(sandbox):
    diskutil.write_mbr(sandbox.disk)
    before = diskutil.digest(sandbox.disk)
    assert diskutil.blkid(sandbox.disk).get("PTTYPE") == "dos"
    r = sandbox.run()
    _assert_refused(sandbox, r, before)
    assert "partition table dos" in r.stderr


def test_blkid_failure_other_than_nothing_found_stops(sandbox):
    fake = sandbox.bin / "blkid"
    fake.write_text("#!/bin/sh\necho 'ambivalent result (probably more filesystems on the device)' >&2\nexit 8\n")
    fake.chmod(0o755)
    before = diskutil.digest(sandbox.disk)
    r = sandbox.run()
    _assert_refused(sandbox, r, before)
    assert "exit 8" in r.stderr


def test_missing_data_device_is_an_error(sandbox):
    sandbox.disk.unlink()
    r = sandbox.run()
    assert r.rc == 1
    assert "data disk" in r.stderr and "not found" in r.stderr and "device_name=convex-data" in r.stderr


def test_grown_disk_is_resized(sandbox):
    assert sandbox.run().rc == 0
    blocks = diskutil.block_count(sandbox.disk)
    subprocess.run(["truncate", "-s", "96M", str(sandbox.disk)], check=True)
    sandbox.reboot()
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert diskutil.block_count(sandbox.disk) > blocks


def test_stopped_container_with_same_spec_is_started_not_recreated(sandbox):
    assert sandbox.run().rc == 0
    st = sandbox.docker_state()
    st["containers"]["convex-dashboard"]["status"] = "exited"
    sandbox.set_docker(containers=st["containers"])
    sandbox.clear_calls()
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    assert sandbox.docker("run") == []
    assert [c["argv"] for c in sandbox.docker("start")] == [["start", "convex-dashboard"]]


def test_admin_key_legacy_output_format(sandbox):
    sandbox.set_docker(admin_key_format="legacy")
    assert sandbox.run().rc == 0
    (key,) = sandbox.apis.secrets[ADMIN_KEY_SECRET_ID]
    assert key.decode().startswith("convex-dev|") and b"Admin key" not in key
