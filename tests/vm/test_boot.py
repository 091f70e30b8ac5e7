"""First boot, warm boots and the data disk, running the real vm/startup.sh."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import diskutil
from sandbox import (ADMIN_KEY_SECRET_ID, BACKEND_IMAGE, DASHBOARD_IMAGE, FORWARD_RULES, HOST_RULES, PROXY_IMAGE, SCRIPT,
                     SETTINGS, data_mounts)


def _argv_of_run(sb, name):
    for c in sb.docker("run"):
        a = c["argv"]
        if a[a.index("--name") + 1] == name:
            return a
    raise AssertionError(f"no docker run for {name}")


def test_first_boot_formats_creates_in_order_and_stores_admin_key(sandbox, booted):
    r = booted

    # Data disk: formatted ext4, fsck'd, mounted at the stable path, resized.
    assert diskutil.blkid(sandbox.disk)["TYPE"] == "ext4"
    mounts = data_mounts(sandbox)
    assert len(mounts) == 1 and mounts[0]["argv"][-2:] == [str(sandbox.disk), str(sandbox.mount_point)]
    assert "formatting ext4" in r.stderr and "resize2fs" in r.stderr

    # Order: networks -> isolation -> pulls -> units -> proxy -> readiness -> backend -> /version -> dashboard.
    calls = sandbox.calls()
    idx = lambda pred: [i for i, c in enumerate(calls) if pred(c)]  # noqa: E731
    creates = idx(lambda c: c["tool"] == "docker" and c["argv"][:2] == ["network", "create"])
    rules = idx(lambda c: c["tool"] == "iptables" and c["argv"][1] == "-A")
    pulls = idx(lambda c: c["tool"] == "docker" and c["argv"][0] == "pull")
    reload_ = idx(lambda c: c["tool"] == "systemctl" and c["argv"][0] == "daemon-reload")
    run_idx = idx(lambda c: c["tool"] == "docker" and c["argv"][0] == "run")
    assert {calls[i]["argv"][-1] for i in pulls} == {PROXY_IMAGE, BACKEND_IMAGE, DASHBOARD_IMAGE}
    assert sandbox.runs() == ["cloudsql-proxy", "convex-backend", "convex-dashboard"]
    assert len(creates) == 3 and len(rules) == len(HOST_RULES) + len(FORWARD_RULES) and len(reload_) == 2  # units; logind drop-in
    assert max(creates) < min(rules) and max(rules) < min(pulls) and max(pulls) < reload_[-1] < min(run_idx)
    exec_idx = idx(lambda c: c["tool"] == "docker" and c["argv"][0] == "exec")
    assert len(exec_idx) == 1 and exec_idx[0] > max(run_idx)

    # The proxy was ready before the backend was created; /version before the dashboard.
    t_backend = calls[run_idx[1]]["t0"]
    t_dashboard = calls[run_idx[2]]["t0"]
    ready_ok = [q["t"] for q in sandbox.health.requests if q["path"] == "/readiness"]
    version_ok = [q["t"] for q in sandbox.health.requests if q["path"] == "/version"]
    assert ready_ok and min(ready_ok) < t_backend
    assert version_ok and min(version_ok) > t_backend and min(version_ok) < t_dashboard

    # Every container is a systemd unit running `docker run` (--rm but the backend); none has a Docker restart policy.
    units = sandbox.units()
    assert {u: units[f"{u}.service"]["state"] for u in ("cloudsql-proxy", "convex-backend", "convex-dashboard")} == \
        dict.fromkeys(("cloudsql-proxy", "convex-backend", "convex-dashboard"), "active")
    for name in ("cloudsql-proxy", "convex-backend", "convex-dashboard"):
        text = (sandbox.unit_dir / f"{name}.service").read_text()
        assert "Restart=always" in text and "StartLimitIntervalSec=0" in text and "RestartSec=" in text
        code = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        assert "{{" not in code and "@" not in code.replace("@sha256", "")
        a = _argv_of_run(sandbox, name)
        # The backend keeps its container (and log) after it exits until its unit's next start
        # removes it: the upgrade guard reads every run's log (vm/convex-upgrade.sh).
        assert ("--rm" in a) == (name != "convex-backend") and "--restart" not in a
        assert a[a.index("--log-driver") + 1] == "json-file"

    # Container specs.
    proxy = _argv_of_run(sandbox, "cloudsql-proxy")
    assert "127.0.0.1:9090:9090" in proxy and not any("5432:" in a for a in proxy)
    assert proxy[-1] == "test-proj:europe-west1:convex-db" and "--private-ip" in proxy and "--run-connection-test" in proxy
    assert proxy[proxy.index("--network") + 1] == "convex-proxy" and proxy[proxy.index("--ip") + 1] == "172.30.250.34"
    assert int(proxy[proxy.index("--stop-timeout") + 1]) > 30  # outlasts --max-sigterm-delay=30s
    backend = _argv_of_run(sandbox, "convex-backend")
    assert backend[backend.index("--stop-signal") + 1] == "SIGINT"
    assert backend[backend.index("--network") + 1] == "convex-db"
    assert int(backend[backend.index("--stop-timeout") + 1]) >= 60
    assert f"type=bind,source={sandbox.mount_point}/convex,target=/convex/data" in backend
    assert backend[backend.index("--health-cmd") + 1] == "curl -sf http://localhost:3210/version"
    dash = _argv_of_run(sandbox, "convex-dashboard")
    assert "6791:6791" in dash and dash[dash.index("--network") + 1] == "convex-web"
    # No container keeps a capability or can gain one; root filesystems are read-only.
    for argv in (proxy, backend, dash):
        assert argv[argv.index("--cap-drop") + 1] == "ALL" and "--cap-add" not in argv
        assert argv[argv.index("--security-opt") + 1] == "no-new-privileges" and "--read-only" in argv

    # Backend env = the program's rendered env + INSTANCE_SECRET from Secret Manager.
    env = dict(e.split("=", 1) for e in sandbox.docker_state()["containers"]["convex-backend"]["env"])
    assert env["INSTANCE_SECRET"] == sandbox.instance_secret
    assert env["RUST_LOG"] == "info" and "@172.30.250.34:5432" in env["POSTGRES_URL"]
    # dev stack: db-g1-small allows 50 connections; the derived pool leaves room for the rest.
    assert SETTINGS.max_connections == 50
    assert env["POSTGRES_MAX_CONNECTIONS"] == "42" == str(SETTINGS.pool_size)

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
    assert "PREFLIGHT PASS cloud-sql" in r.stderr and "PREFLIGHT PASS backend-version" in r.stderr


def test_second_boot_and_manual_rerun_change_nothing(sandbox, booted, tmp_path):
    uuid = diskutil.blkid(sandbox.disk)["UUID"]
    diskutil.write_file(sandbox.disk, "precious.txt", b"user data\n", tmp_path)

    for _ in range(2):
        sandbox.reboot()
        # --rm containers do not survive a reboot; the backend's stays, exited, until its unit starts.
        assert {n: c["status"] for n, c in sandbox.docker_state()["containers"].items()} in ({}, {"convex-backend": "exited"})
        sandbox.clear_calls()
        r = sandbox.run()
        assert r.rc == 0, r.stderr
        # /etc is a tmpfs on COS: the units are installed and started again, from the same images.
        assert sandbox.runs() == ["cloudsql-proxy", "convex-backend", "convex-dashboard"]
        assert sandbox.docker("pull") == [] and sandbox.docker("exec") == []
        assert not [c for c in sandbox.docker("network") if c["argv"][1] == "create"]
        assert sandbox.iptables_rules("CVX-FWD") == FORWARD_RULES  # rules are not persistent: added again
        assert "formatting" not in r.stderr
        assert len(data_mounts(sandbox)) == 1  # /run and mounts were reset by the reboot
        assert len(sandbox.calls("systemd-run")) == 1  # transient unit is gone after reboot

    # Re-running by hand on the running VM: no mount, no watcher restart, nothing recreated.
    sandbox.clear_calls()
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert sandbox.calls("mount") == [] and sandbox.calls("systemd-run") == []  # /proc already hidepid
    assert sandbox.docker("run") == []
    assert "already mounted" in r.stderr and "already running" in r.stderr

    assert diskutil.blkid(sandbox.disk)["UUID"] == uuid
    assert diskutil.read_file(sandbox.disk, "precious.txt") == b"user data\n"
    assert "changed: nothing" in r.stderr and not [c for c in sandbox.calls("iptables") if c["argv"][1] in ("-A", "-I", "-D", "-N")]
    assert not [c for c in sandbox.calls("systemctl") if c["argv"][0] in ("restart", "start", "daemon-reload")]
    assert len(sandbox.apis.secrets[ADMIN_KEY_SECRET_ID]) == 1


def test_a_rerun_from_a_terminal_neither_reads_nor_waits_for_stdin(sandbox, booted, tmp_path):
    """`sudo bash startup.sh reconcile` typed in an SSH session has the terminal on stdin. A tool
    called with no file operand reads stdin (sha256sum hashes it, coreutils): the run must neither
    wait for it nor let what was typed change a unit."""
    sandbox.clear_calls()
    log = tmp_path / "stderr"
    with open(log, "w") as err:
        p = subprocess.Popen(["bash", str(SCRIPT), "reconcile"], env=sandbox.env(), stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        p.stdin.write(b"typed by hand\n")
        p.stdin.flush()  # and left open, as a terminal is
        rc = p.wait(timeout=30)
    finally:
        sandbox.stop(p)
    assert rc == 0, log.read_text()
    assert "changed: nothing" in log.read_text()
    assert not [c for c in sandbox.calls("systemctl") if c["argv"][0] in ("restart", "start", "daemon-reload")]
    # The proxy has no inputs: its line carries the sha256 of no bytes, as earlier versions wrote it
    # when stdin was /dev/null (systemd's), so adopting this version restarts nothing.
    proxy = (sandbox.unit_dir / "cloudsql-proxy.service").read_text()
    assert proxy.endswith(f"# convex-gcp inputs: {hashlib.sha256(b'').hexdigest()} \n")


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


def test_grown_disk_is_resized(sandbox, booted):
    blocks = diskutil.block_count(sandbox.disk)
    subprocess.run(["truncate", "-s", "96M", str(sandbox.disk)], check=True)
    sandbox.reboot()
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert diskutil.block_count(sandbox.disk) > blocks


def test_exited_container_is_restarted_by_systemd_not_the_script(sandbox, booted):
    # A reconcile that comes after RestartSec (the real host's timing, tests/host test_crash_loop...): systemd
    # has started the container again by then. Within RestartSec the script would find the unit activating
    # (auto-restart) and start it itself (start_unit).
    sandbox.set_docker(restart_sec_scale=0)
    st = sandbox.docker_state()
    del st["containers"]["convex-dashboard"]  # the process exited; --rm removed the container
    sandbox.set_docker(containers=st["containers"])
    sandbox.clear_calls()
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    # Restart=always brought it back (the fake plays it when systemd is asked); the script changed nothing.
    assert sandbox.units()["convex-dashboard.service"]["n_restarts"] == 1
    assert sandbox.runs() == ["convex-dashboard"]
    assert not [c for c in sandbox.calls("systemctl") if c["argv"][0] in ("restart", "start")]
    assert "changed: nothing" in r.stderr


def test_failed_start_is_retried_by_systemd(sandbox):
    """moby/moby#31971, #25940: Docker's --restart never retries a start that failed; systemd does."""
    sandbox.set_docker(run_failures={"convex-dashboard": 1})
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert "convex-dashboard" not in sandbox.docker_state()["containers"]
    # RestartSec later: systemd runs ExecStart again.
    assert sandbox.systemctl("is-active", "convex-dashboard.service").stdout.strip() == "active"
    assert sandbox.docker_state()["containers"]["convex-dashboard"]["status"] == "running"
    assert sandbox.units()["convex-dashboard.service"]["n_restarts"] == 1
    assert [c["rc"] for c in sandbox.docker("run") if "convex-dashboard" in c["argv"]] == [125, 0]


def test_units_pass_systemd_analyze_verify(sandbox, booted, tmp_path):
    """The installed units, checked offline by systemd itself. Only /usr/bin/docker is pointed at a
    stand-in, because verify checks that executables exist (mountpoint is found on the search path)."""
    import shutil

    d = tmp_path / "verify"
    d.mkdir()
    stub = d / "stub"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    (d / "docker.service").write_text("[Unit]\nDescription=stub\n[Service]\nExecStart=/bin/true\n")
    names = []
    for unit in sorted(u for u in sandbox.unit_dir.glob("*.*") if u.is_file()):  # not the logind drop-in directory
        text = unit.read_text().replace("/usr/bin/docker", str(stub))
        (d / unit.name).write_text(text)
        names.append(str(d / unit.name))
    assert [Path(n).name for n in names] == ["cloudsql-proxy.service", "convex-backend.service", "convex-dashboard.service",
                                             "convex-export.service", "convex-export.timer", "convex-upgrade.service"]
    p = subprocess.run([shutil.which("systemd-analyze") or "systemd-analyze", "verify", *names], capture_output=True, text=True,
                       env={**os.environ, "SYSTEMD_UNIT_PATH": f"{d}:"})
    # verify exits 0 on parse warnings too: any output is a finding.
    assert p.returncode == 0 and p.stdout == "" and p.stderr == "", p.stdout + p.stderr


def test_admin_key_legacy_output_format(sandbox):
    sandbox.set_docker(admin_key_format="legacy")
    assert sandbox.run().rc == 0
    (key,) = sandbox.apis.secrets[ADMIN_KEY_SECRET_ID]
    assert key.decode().startswith("convex-dev|") and b"Admin key" not in key
