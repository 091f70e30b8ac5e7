"""Upgrades on the VM (issue 24, part 3): the new image is pulled before the old backend stops,
Convex's migration progress is logged, a new backend that never answers and began no migration is
rolled back by the VM itself, and once healthy, images no unit references are removed.

The guard is the real vm/convex-upgrade.sh, started by the fake systemd as its unit
(vm/units/convex-upgrade.service) when vm/startup.sh restarted the backend. The fake Convex
(fakes/convex.py) prints the pinned backend's migration lines and takes time to answer."""

from __future__ import annotations

import re

import pytest
from sandbox import BACKEND_IMAGE, DASHBOARD_IMAGE, REPO, SHA, wait_for

NEW = "1" * 40
NEW_BACKEND = BACKEND_IMAGE.replace(SHA, NEW)
NEW_DASHBOARD = DASHBOARD_IMAGE.replace(SHA, NEW)


def upgrade(sb, *, version: int | None = None, crash: str | None = None) -> None:
    """Publish the config naming the NEW images (as `pulumi up` would); the fake Convex of that image
    has DATABASE_VERSION `version` and may crash ("start" or "migration")."""
    st = sb.docker_state()
    conv = st.setdefault("convex", {})
    if version is not None:
        conv.setdefault("versions", {})[NEW_BACKEND] = version
    if crash is not None:
        conv.setdefault("crash", {})[NEW_BACKEND] = crash
    sb.set_docker(convex=conv)
    sb.config["BACKEND_IMAGE"] = NEW_BACKEND
    sb.config["DASHBOARD_IMAGE"] = NEW_DASHBOARD
    sb.publish()


def state(sb, name: str) -> dict[str, str]:
    f = sb.mount_point / "convex-gcp" / "upgrade" / name
    if not f.exists():
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", f.read_text()))


def backend_image(sb) -> str:
    c = sb.docker_state()["containers"].get("convex-backend")
    return c["image"] if c else ""


def test_the_new_image_is_pulled_before_the_old_backend_stops(sandbox, booted):
    sandbox.clear_calls()
    upgrade(sandbox)
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    (pull,) = [c for c in sandbox.docker("pull") if c["argv"][-1] == NEW_BACKEND]
    (stop,) = [c for c in sandbox.docker("stop") if c["argv"] == ["stop", "convex-backend"]]
    assert pull["t1"] <= stop["t0"]


def test_migration_progress_is_logged_and_unused_images_are_removed(sandbox, booted):
    assert state(sandbox, "good")["BACKEND_IMAGE"] == BACKEND_IMAGE  # the first boot's guard recorded it
    upgrade(sandbox, version=130)
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    assert sandbox.wait_units()
    log = sandbox.guard_log()
    # The pinned backend's own lines (crates/migrations_model/src/lib.rs, crates/model/src/migrations.rs).
    assert f"upgrade: backend {BACKEND_IMAGE} -> {NEW_BACKEND}" in log
    for line in ("migration: Migrating to 129", "migration: Executing Migration 129/130. Wait for log line 'Migrated 129'",
                 "migration: Migrated 129 (MigrationComplete(129))", "migration: Executing Migration 130/130",
                 "migration: database at version 130, no migration left"):
        assert line in log, log
    assert sandbox.docker_state()["convex"]["db_version"] == 130
    assert state(sandbox, "good") == {"BACKEND_IMAGE": NEW_BACKEND, "DASHBOARD_IMAGE": NEW_DASHBOARD}
    assert state(sandbox, "status")["state"] == "healthy" and "130" in (sandbox.mount_point / "convex-gcp/upgrade/status").read_text()
    # Images no unit references are gone; the units' images (and only those) stay.
    images = set(sandbox.docker_state()["images"])
    assert images == {NEW_BACKEND, NEW_DASHBOARD, sandbox.config["PROXY_IMAGE"]}, images
    assert "removed image sha256:" in log and "images: 2 removed, 3 in use" in log


def test_an_image_a_container_still_uses_is_kept(sandbox, booted):
    st = sandbox.docker_state()
    st["images"]["gcr.io/example/other:1"] = "sha256:" + "ab" * 32
    st["containers"]["other"] = {**st["containers"]["convex-dashboard"], "name": "other", "image": "gcr.io/example/other:1"}
    sandbox.set_docker(images=st["images"], containers=st["containers"])
    sandbox.backend_env["RUST_LOG"] = "debug"  # any backend restart starts the guard
    sandbox.publish()
    assert sandbox.run("reconcile").rc == 0
    assert sandbox.wait_units()
    assert "gcr.io/example/other:1" in sandbox.docker_state()["images"]
    assert "kept image sha256:abab" in sandbox.guard_log() and "image is being used by running container other" in sandbox.guard_log()


def test_a_backend_that_never_answers_is_rolled_back_by_the_vm_itself(sandbox, booted):
    """No human: the watcher applies the config, the guard sees the new backend exit at start before
    any migration, writes the rollback, and the watcher's retry runs the previous images again."""
    # The guard polls much faster than the watcher retries (2 s and 30 s shipped; 50 ms and 1 s here), so it
    # reads every run before a retry's restart replaces it.
    sandbox.extra_env.update(CONVEX_GCP_PENDING_RETRY_MS="1000", CONVEX_GCP_OUTAGE_RETRY_MS="1000")
    upgrade(sandbox, crash="start")
    watcher = sandbox.popen("watch")
    try:
        assert wait_for(lambda: state(sandbox, "rollback").get("REJECTED_BACKEND_IMAGE") == NEW_BACKEND, 60), sandbox.guard_log()
        # The rollback restarts the dashboard too (its image is rolled back with the backend's): wait for
        # its container, which is briefly absent between its unit's `docker rm -f` and `docker run`
        # (a CI run once read the containers in that moment: KeyError 'convex-dashboard').
        assert wait_for(lambda: backend_image(sandbox) == BACKEND_IMAGE and sandbox.health.db_up
                        and state(sandbox, "status").get("state") == "healthy"
                        and sandbox.docker_state()["containers"].get("convex-dashboard", {}).get("image") == DASHBOARD_IMAGE,
                        60), sandbox.guard_log()
    finally:
        out = sandbox.stop(watcher)
    assert sandbox.wait_units()
    log = sandbox.guard_log()
    assert f"ROLLBACK: backend {NEW_BACKEND} did not answer" in log and "no migration began" in log, log
    assert "was rolled back" in out and f"running {BACKEND_IMAGE} until the config names another image" in out
    containers = sandbox.docker_state()["containers"]
    assert containers["convex-dashboard"]["image"] == DASHBOARD_IMAGE
    assert NEW_BACKEND not in (sandbox.unit_dir / "convex-backend.service").read_text()
    assert state(sandbox, "good")["BACKEND_IMAGE"] == BACKEND_IMAGE
    assert NEW_BACKEND not in sandbox.docker_state()["images"]  # pruned: no unit references it
    # The rollback holds: another reconcile with the same config keeps the old images...
    assert sandbox.run("reconcile").rc == 0
    assert backend_image(sandbox) == BACKEND_IMAGE
    # ...until the config names another image.
    sandbox.config["BACKEND_IMAGE"] = BACKEND_IMAGE.replace(SHA, "2" * 40)
    sandbox.config["DASHBOARD_IMAGE"] = DASHBOARD_IMAGE.replace(SHA, "2" * 40)
    sandbox.publish()
    assert sandbox.run("reconcile").rc == 0
    assert backend_image(sandbox) == sandbox.config["BACKEND_IMAGE"]


@pytest.mark.parametrize("case", ["migration-began", "rust-log-warn"])
def test_no_rollback_when_a_migration_may_have_begun(sandbox, booted, case):
    if case == "migration-began":
        upgrade(sandbox, version=130, crash="migration")
    else:
        sandbox.backend_env["RUST_LOG"] = "warn"
        upgrade(sandbox, crash="start")
    r = sandbox.run("reconcile")
    assert r.rc == 75, r.stderr
    assert sandbox.wait_units()
    log = sandbox.guard_log()
    assert "NOT returning to" in log and "ROLLBACK" not in log, log
    assert not state(sandbox, "rollback")
    assert state(sandbox, "status")["state"] == "stuck"
    if case == "migration-began":
        assert "migration: Executing Migration 129/130" in log and "a migration began" in log
    else:
        assert "RUST_LOG=warn hides the migration worker's INFO lines" in log, log
    assert sandbox.run("reconcile").rc == 75  # still the new image: the config names it
    assert NEW_BACKEND in (sandbox.unit_dir / "convex-backend.service").read_text()


def test_the_guard_reads_every_backend_run_to_its_end():
    """The guard reads the backend's output with `docker logs convex-backend` (the unit keeps it out
    of the journal): that sees every run's whole log only while the container is not --rm (an exited
    one stays until the unit's ExecStartPre removes it, RestartSec later) and the guard polls faster
    than that."""
    unit = (REPO / "vm" / "units" / "convex-backend.service").read_text()
    run = re.search(r"^ExecStart=(.*)$", unit.replace("\\\n", " "), re.M).group(1)
    assert run.startswith("/usr/bin/docker run ") and "--rm" not in run.split() and "--log-driver json-file" in run
    assert "ExecStartPre=-/usr/bin/docker rm -f convex-backend" in unit
    restart_s = int(re.search(r"^RestartSec=(\d+)$", unit, re.M).group(1))
    guard = (REPO / "vm" / "convex-upgrade.sh").read_text()
    poll_ms = int(re.search(r"POLL_MS=\$\{CONVEX_GCP_POLL_MS:-(\d+)\}", guard).group(1))
    assert "docker logs convex-backend" in guard and poll_ms < restart_s * 1000 / 2


def test_a_guard_that_finds_no_backend_container_yet_counts_no_lost_run(sandbox, booted):
    """On a real host the guard's first poll can find no backend container at all: it starts beside the
    backend, whose ExecStartPre (isolate.sh, docker rm -f of the old container) and docker run take
    seconds (tests/host/test_upgrade.py, where the guard then refused a rollback over a run it called
    lost). A run without a container yet is in progress, not lost."""
    import subprocess

    sandbox.systemctl("stop", "convex-backend.service")
    subprocess.run(["docker", "rm", "-f", "convex-backend"], env=sandbox.run_env(), check=True, capture_output=True)
    assert "convex-backend" not in sandbox.docker_state()["containers"]
    before = len(sandbox.guard_log())
    sandbox.clear_calls()
    sandbox.systemctl("restart", "convex-upgrade.service")
    # The guard polled (docker inspect, then systemd) twice while no container existed.
    assert wait_for(lambda: len([c for c in sandbox.calls("systemctl") if "NRestarts" in c["argv"]]) >= 3, 10)
    assert "convex-backend" not in sandbox.docker_state()["containers"]
    sandbox.systemctl("start", "convex-backend.service")
    assert sandbox.wait_units()
    log = sandbox.guard_log()[before:]
    assert "done: backend" in log, log
    assert "before its log could be read" not in log, log


@pytest.mark.parametrize("lost", [1, 2])
def test_a_run_whose_log_was_not_read_forbids_a_rollback(sandbox, booted, lost):
    """systemd restarted the backend (its NRestarts grew) but no new container was there to read:
    nothing proves that run began no migration, so the guard does not roll back, and the next run of
    the guard (the unit restarted) still knows it. One lost run is enough (the count's exact limit)."""
    import fcntl
    import json

    sandbox.extra_env["CONVEX_GCP_UPGRADE_DEADLINE_MS"] = "60000"  # no rollback while the test plays
    upgrade(sandbox, crash="start")
    assert sandbox.run("reconcile").rc == 75
    assert wait_for(lambda: "watching it come up" in sandbox.guard_log())
    with open(sandbox.fake_root / "systemd.lock", "a+") as lock:  # the fake systemd's own lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        sd = json.loads((sandbox.fake_root / "systemd.json").read_text())
        sd["units"]["convex-backend.service"]["n_restarts"] += lost  # runs that came and went unseen
        (sandbox.fake_root / "systemd.json").write_text(json.dumps(sd))
    assert wait_for(lambda: "ended and was replaced before its log could be read" in sandbox.guard_log())
    sandbox.extra_env["CONVEX_GCP_UPGRADE_DEADLINE_MS"] = "500"  # the next guard is past its deadline
    sandbox.run_env()
    sandbox.systemctl("restart", "convex-upgrade.service")
    assert sandbox.wait_units()
    log = sandbox.guard_log()
    assert "a run of it ended before its log could be read" in log and "ROLLBACK" not in log, log
    assert not state(sandbox, "rollback") and state(sandbox, "status")["state"] == "stuck"


def test_the_doctor_reads_the_guards_status(sandbox, booted):
    """tools/doctor's probe reads the status line the guard writes (one consumer, tied to its producer):
    healthy after the first boot, rolled-back after a rollback."""
    from tools.doctor.checks import check_upgrade
    from types import SimpleNamespace

    from tools.doctor.gcloud_seam import UPGRADE_STATUS, VmProbe, parse_probe, probe_script

    out = SimpleNamespace(vm_name="convex-dev-vm", vm_zone="asia-northeast1-a", project="example-convex-dev")

    assert f"head -n 1 {UPGRADE_STATUS}" in probe_script([], [])
    status = sandbox.mount_point / "convex-gcp" / "upgrade" / "status"
    assert UPGRADE_STATUS.endswith("/convex-gcp/upgrade/status")
    check = check_upgrade(out, parse_probe("upgrade=" + status.read_text().strip() + "\n"))
    assert check.status == "pass" and BACKEND_IMAGE in check.detail
    upgrade(sandbox, crash="start")
    sandbox.extra_env.update(CONVEX_GCP_PENDING_RETRY_MS="1000", CONVEX_GCP_OUTAGE_RETRY_MS="1000")
    assert sandbox.run("reconcile").rc == 75
    assert sandbox.wait_units()
    check = check_upgrade(out, VmProbe(upgrade=status.read_text().strip()))
    assert check.status == "fail" and "went back" in check.detail and "convex.version" in check.fix


def test_the_upgrade_alert_matches_what_the_guard_prints(sandbox, booted):
    """components/monitoring.py alerts on the guard's give-up lines: each phrase it matches is one the
    guard prints (a rollback here), and the filter reads the journal's log for the stack's VM."""
    from components.monitoring import UPGRADE_LINES, upgrade_log_filter

    upgrade(sandbox, crash="start")
    assert sandbox.run("reconcile").rc == 75
    assert sandbox.wait_units()
    guard = (REPO / "vm" / "convex-upgrade.sh").read_text()
    assert UPGRADE_LINES[0] in sandbox.guard_log() and all(line.split(": ", 1)[-1] in guard for line in UPGRADE_LINES)
    f = upgrade_log_filter("p", "convex-dev-vm")
    assert 'logs/cos_system"' in f and '"compute.googleapis.com/resource_name":"convex-dev-vm"' in f
