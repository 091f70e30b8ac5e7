"""Runbooks proven by tests (issue 24, part 4): every command docs/runbooks.md runs on the VM
(`gcloud compute ssh ... --command='...'`) is executed here against the VM sandbox, unless its line says
"(no test runs this)" or "(tests/host runs this)"; none of them resets the VM; the restore's stop keeps the backend down until the
boot run starts everything again."""

from __future__ import annotations

import re
import subprocess

import pytest
from sandbox import REPO

RUNBOOKS = REPO / "docs" / "runbooks.md"
UNTESTED = "(no test runs this"
# Run by the host tier instead (tests/host/test_runbooks.py): a real reboot, a second disk.
HOST_TIER = "(tests/host runs this"


def vm_commands() -> list[str]:
    """The --command='...' payloads of the runbooks' gcloud compute ssh lines, in order."""
    return [command for command, _, _ in vm_command_lines()]


def vm_command_lines() -> list[tuple[str, str, str]]:
    """Each payload with the whole line(s) it stands on and the `## ` section it is in (a command given in
    two sections is two entries, each with its own line)."""
    text = RUNBOOKS.read_text()
    out = []
    for m in re.finditer(r"--command='(.*?)'", text, re.S):
        line = text[text.rfind("\n", 0, m.start()) + 1:text.find("\n", m.end())]
        heading = text.rfind("\n## ", 0, m.start())
        section = text[heading + 4:text.find("\n", heading + 1)]
        out.append((m.group(1), line, section))
    return out


def runbook_commands_under_test() -> list[str]:
    return [c for c, line, _ in vm_command_lines() if not any(m in line for m in (UNTESTED, HOST_TIER))]


def run_on_vm(sb, command: str) -> subprocess.CompletedProcess:
    """The command as the VM would run it, in the sandbox: sudo is the caller itself (root there), and the
    VM's paths are the sandbox's."""
    local = command.replace("sudo ", "").replace("/run/convex-gcp", str(sb.run_dir)) \
        .replace("/mnt/disks/convex-data", str(sb.mount_point))
    return subprocess.run(["bash", "-c", local], env=sb.run_env(), capture_output=True, text=True, timeout=120)


def test_the_runbooks_never_reset_the_vm():
    text = RUNBOOKS.read_text()
    assert not re.search(r"^gcloud compute instances reset", text, re.M)
    assert "reset-instance" in text  # the page that says why


def test_every_vm_command_is_run_here_or_marked():
    commands = vm_commands()
    assert len(commands) >= 6
    covered = {c for c in runbook_commands_under_test()}
    assert covered, commands
    known = {"sudo systemctl stop convex-config-watch convex-dashboard convex-backend", "sudo bash /run/convex-gcp/startup.sh boot",
             "sudo bash /run/convex-gcp/startup.sh reconcile",
             "sudo journalctl -u google-startup-scripts --no-pager | tail -100; sudo docker ps -a; cat /mnt/disks/convex-data/convex-gcp/upgrade/status",
             "sudo touch /mnt/disks/convex-data/exports/requested && sudo systemctl start convex-export.service"}
    # Every tested command is one of the commands run by a test below (a new one needs its test, or the marker).
    assert covered <= known, sorted(covered - known)


@pytest.mark.parametrize("command", sorted(c for c in runbook_commands_under_test() if "startup.sh reconcile" in c or "journalctl" in c))
def test_a_reconcile_and_the_diagnosis_run_on_the_vm(sandbox, booted, command):
    r = run_on_vm(sandbox, command)
    assert r.returncode == 0, r.stdout + r.stderr
    if "journalctl" in command:
        assert "cloudsql-proxy" in r.stdout and "convex-backend" in r.stdout and "state=healthy" in r.stdout


def test_the_restore_stop_keeps_the_backend_down_until_the_boot_run(sandbox, booted):
    """The old runbook's `docker stop convex-backend` was undone by Restart=always and the watcher; the
    systemd stop is not, whatever asks systemd meanwhile, until the runbook's boot run starts it all."""
    (stop,) = [c for c in runbook_commands_under_test() if "systemctl stop" in c]
    (start,) = [c for c in runbook_commands_under_test() if c.endswith("startup.sh boot")]
    r = run_on_vm(sandbox, stop)
    assert r.returncode == 0, r.stderr
    for _ in range(3):  # what Restart=always would do, played when systemd is asked (fakebin sd_tick)
        assert sandbox.systemctl("is-active", "convex-backend.service").stdout.strip() == "inactive"
    containers = sandbox.docker_state()["containers"]
    assert containers.get("convex-backend", {}).get("status") != "running" and "convex-dashboard" not in containers
    # The watcher is stopped too: no reconcile of its can start the backend while the disk is rsynced.
    assert "convex-config-watch" in stop and sandbox.systemctl("is-active", "convex-config-watch.service").returncode != 0
    r = run_on_vm(sandbox, start)
    assert r.returncode == 0, r.stderr
    assert {n: c["status"] for n, c in sandbox.docker_state()["containers"].items()} == \
        dict.fromkeys(("cloudsql-proxy", "convex-backend", "convex-dashboard"), "running")
    assert "config watcher convex-config-watch" in r.stderr  # the boot run starts the watcher again


def test_a_command_left_to_the_host_tier_is_in_a_section_it_runs():
    """"(tests/host runs this" takes a command out of this suite: only where tests/host/test_runbooks.py runs
    every VM step of its section (its SECTIONS), so no marked command escapes both tiers."""
    from tests.host.test_runbooks import SECTIONS

    marked = [(c, section) for c, line, section in vm_command_lines() if HOST_TIER in line]
    assert marked
    for command, section in marked:
        assert section in SECTIONS, f"{command!r} is marked for the host tier, which does not run section {section!r}"
