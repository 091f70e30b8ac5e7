"""The VM-side steps of docs/runbooks.md, executed as written on a real systemd and Docker engine: the
`gcloud compute ssh ... --command='...'` texts are read from the runbook and run as root on the VM (with
its own sudo), in the order the runbook gives them. The fast sandbox (tests/vm/test_runbooks.py) runs
the same texts against its stand-ins; this tier is where systemd's Restart= and a second disk are real."""

from __future__ import annotations

import re
import secrets
import time

import pytest

from tests.host.machine import REPO
from tests.host.vm import ADMIN_KEY_SECRET_ID, INSTANCE_SECRET_ID

RUNBOOKS = REPO / "docs" / "runbooks.md"
DATA = "/mnt/disks/convex-data/convex"
UNTESTED = "(no test runs this"
RESTORE = "Restore the database and the data disk to one point in time"
# The runbook sections whose VM commands the host tier runs, every one of them (the last test checks;
# "Rotate the database password" is test_password_login.py's: a VM without IAM login of its own).
SECTIONS = ("Recover the VM", "Rotate INSTANCE_SECRET and the admin key", "Rotate the database password", RESTORE)


@pytest.fixture(scope="module")
def booted(world, tmp_path_factory):
    """This module's VM has the restore runbook's second disk attached (device name convex-restore)."""
    from tests.host.conftest import booted_vm

    yield from booted_vm(world, tmp_path_factory, extra_disks=("convex-restore",))


def section(title: str) -> str:
    text = RUNBOOKS.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def ssh_commands(title: str) -> list[str]:
    """The --command='...' texts of a runbook section, in order (what runs on the VM)."""
    return re.findall(r"--command='([^']*)'", section(title))


def run(vm, command: str) -> str:
    out = vm.sh(command, timeout=600)
    assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def test_recover_the_vm_as_written(booted):
    look, reconcile, reboot = ssh_commands("Recover the VM")
    # The boot ends once the dashboard's unit started; its container is up a moment later (the host
    # tier once looked first and saw it "Created"). An operator looks later than that.
    booted.wait_for(lambda: booted.curl("/", port=6791)[0] == 200, 60, "the dashboard")
    out = run(booted, look)
    assert "startup-script exit status 0" in out and "Finished running startup scripts." in out
    for name in ("cloudsql-proxy", "convex-backend", "convex-dashboard"):
        assert re.search(rf"Up .*{name}$", out, re.M), out
    assert "state=healthy" in out  # the upgrade guard's status file
    # A unit stopped behind the script's back: the reconcile converges again.
    booted.sh("systemctl stop convex-dashboard", check=True)
    out = run(booted, reconcile)
    assert booted.state("convex-dashboard") == "active", out
    assert booted.curl("/version") == (200, "standin")
    # The clean reboot: systemd stops every unit, the startup script runs again on the same disk.
    assert reboot == "sudo systemctl reboot"
    journal = booted.guest_reboot(reboot)
    assert "startup-script exit status 0" in journal and "formatting" not in journal
    assert booted.wait_version() == "standin"


def test_rotate_instance_secret_and_admin_key_as_written(booted):
    text = section("Rotate INSTANCE_SECRET and the admin key")
    assert "gcloud secrets versions add convex-$STACK-instance-secret" in text
    assert "gcloud secrets versions disable" in text
    (reconcile,) = ssh_commands("Rotate INSTANCE_SECRET and the admin key")
    old_key = booted.apis.secrets[ADMIN_KEY_SECRET_ID][-1]
    new_secret = secrets.token_hex(32)
    with booted.apis.lock:
        booted.apis.secrets[INSTANCE_SECRET_ID].append(new_secret.encode())
        booted.apis.modes[ADMIN_KEY_SECRET_ID] = "disabled"  # every version disabled: latest answers 400
    try:
        out = run(booted, reconcile)
    finally:
        with booted.apis.lock:
            booted.apis.modes.pop(ADMIN_KEY_SECRET_ID)
    assert "stored a new version" in out, out
    assert f"INSTANCE_SECRET={new_secret}" in booted.container_env("convex-backend")
    new_key = booted.apis.secrets[ADMIN_KEY_SECRET_ID][-1]
    assert new_key != old_key and new_key.startswith(b"convex-dev|")
    assert booted.wait_version() == "standin"


def test_restore_stop_keeps_the_backend_stopped(booted):
    """The restore's stop goes through systemd (the watcher first): nothing brings the backend back while
    the database and the disk are restored. A `docker stop` alone is undone within RestartSec (next test)."""
    stop = ssh_commands(RESTORE)[0]  # the section's first VM step, whatever it says
    run(booted, stop)
    try:
        time.sleep(30)  # the restore's database and disk steps take minutes: 30 s is three RestartSec
        assert booted.curl("/version")[0] != 200
        assert booted.container_id("convex-backend") == ""
        for unit in ("convex-config-watch", "convex-dashboard", "convex-backend"):
            assert booted.state(unit) == "inactive", unit
    finally:
        run(booted, ssh_commands(RESTORE)[-1])  # the section's last VM step: the boot run
    assert booted.wait_version() == "standin"
    assert booted.state("convex-config-watch") == "active"


def test_docker_stop_under_restart_always_is_undone_by_systemd(booted):
    """Why the runbook stops units, not containers: systemd runs ExecStop, sees the unit's process exit,
    and starts a new container RestartSec later (vm/units/convex-backend.service)."""
    before = booted.container_id("convex-backend")
    booted.sh("docker stop convex-backend", check=True)
    t0 = time.monotonic()
    booted.wait_for(lambda: booted.container_id("convex-backend") not in ("", before), 60, "a new backend container")
    assert 9 <= time.monotonic() - t0 <= 40  # RestartSec=10, then the container's start
    booted.wait_for(lambda: booted.curl("/version")[0] == 200, 60, "/version again")


def test_restore_the_data_disk_from_a_snapshot_as_written(booted, tmp_path):
    text = section(RESTORE)
    stop, copy, boot = ssh_commands(RESTORE)
    assert "--device-name=convex-restore" in text and "rsync" in copy and boot.endswith("startup.sh boot")
    booted.sh(f"echo at-snapshot > {DATA}/storage/restore-marker", check=True)
    snapshot = tmp_path / "snapshot.img"
    booted.snapshot(snapshot)
    booted.sh(f"echo after > {DATA}/storage/restore-marker && echo new > {DATA}/storage/after-snapshot", check=True)
    booted.restore_into("convex-restore", snapshot)  # disks create --source-snapshot + attach-disk
    run(booted, stop)
    run(booted, copy)
    assert booted.sh(f"cat {DATA}/storage/restore-marker").stdout == "at-snapshot\n"
    assert booted.sh(f"test -e {DATA}/storage/after-snapshot").returncode == 1  # --delete
    assert booted.sh("mountpoint -q /mnt/disks/restore").returncode != 0  # unmounted again
    assert booted.curl("/version")[0] != 200  # still stopped while the disk was copied
    out = run(booted, boot)
    assert "formatting" not in out
    assert booted.wait_version() == "standin"
    assert booted.sh(f"cat {DATA}/storage/restore-marker").stdout == "at-snapshot\n"
    assert booted.state("convex-config-watch") == "active"


def test_every_vm_command_of_these_sections_is_run_here():
    """A command added to one of SECTIONS needs a test above; none of them may say "(no test runs this"
    in the runbook (this tier runs every VM-side step of them)."""
    text = RUNBOOKS.read_text()
    for title in SECTIONS:
        for command in ssh_commands(title):
            line = text[text.rfind("\n", 0, text.index(command)) + 1:text.find("\n", text.index(command) + len(command))]
            assert UNTESTED not in line, f"{title}: {command!r} is marked untested but the host tier runs it"
    assert sum(len(ssh_commands(t)) for t in SECTIONS) == 3 + 1 + 1 + 3
