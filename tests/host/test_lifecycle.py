"""One VM through its life, on a real systemd and Docker engine: first boot on a blank disk, the metadata
server block, only COS's commands, a reboot on the same disk, a config change through the metadata server,
a Docker daemon restart, a crash loop, and an upgrade that migrates slowly. Each test leaves the VM healthy
for the next (file order)."""

from __future__ import annotations

import re
import time


from tests.host.cos_tools import COS_PATH, TOOLS
from tests.host.machine import BACKEND_REPO
from tests.host.vm import ADMIN_KEY_SECRET_ID, INSTANCE_SECRET_ID

DATA = "/mnt/disks/convex-data/convex"


def test_first_boot_formats_the_disk_and_serves_convex(booted):
    journal = booted.first_boot
    assert "startup-script exit status 0" in journal
    assert "formatting ext4" in journal
    assert booted.curl("/version") == (200, "standin")
    for unit in ("cloudsql-proxy", "convex-backend", "convex-dashboard", "convex-config-watch"):
        assert booted.state(unit) == "active", unit
    # The instance secret the first boot minted is the one Convex wrote on the data disk.
    minted = booted.apis.secrets[INSTANCE_SECRET_ID]
    assert len(minted) == 1
    assert booted.sh(f"cat {DATA}/credentials/instance_secret").stdout == minted[0].decode()
    assert len(booted.apis.secrets[ADMIN_KEY_SECRET_ID]) == 1
    # The backend waited for the proxy: it connected at its first start.
    assert booted.show("convex-backend", "NRestarts") == "0"
    backend = booted.logs("convex-backend")
    assert "Starting a Convex backend" in backend and "db metadata version up to date at 128" in backend
    # The dashboard is started last and not waited for by the boot.
    booted.wait_for(lambda: booted.curl("/", port=6791)[0] == 200, 60, "the dashboard")
    assert "Convex dashboard" in booted.curl("/", port=6791)[1]
    code, metrics = booted.curl("/metrics")
    assert code == 200 and "http_handle_duration_seconds_count" in metrics


TOKEN = "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token"



def test_containers_but_the_proxy_cannot_reach_the_metadata_server(booted):
    assert booted.first_boot.count("startup-script exit status 0") == 1
    # The proxy stand-in fetched a token at its start (it exits without one) and is ready.
    assert "Authorizing with Application Default Credentials" in booted.logs("cloudsql-proxy")
    assert booted.state("cloudsql-proxy") == "active"
    for name in ("convex-backend", "convex-dashboard"):
        p = booted.sh(f"docker exec {name} curl -sS -m 5 -H 'Metadata-Flavor: Google' {TOKEN}")
        assert p.returncode != 0 and "access_token" not in p.stdout, (name, p.stdout, p.stderr)
        # REJECT: refused at once (curl exit 7, "Couldn't connect"), not a drop (a timeout, exit 28).
        assert "curl: (7)" in p.stderr, p.stderr
    rules = booted.sh("iptables -S CVX-FWD").stdout  # vm/isolate.sh
    assert "-A CVX-FWD -d 169.254.169.254/32 -i cvx-proxy -j RETURN" in rules, rules


def test_a_non_root_host_user_cannot_get_the_vms_token(booted):
    """vm/isolate.sh CVX-HOST: a non-root process on the VM is refused the metadata server (root is not)."""
    p = booted.sh(f"su oslogin-user -c \"curl -sS -m 5 -H 'Metadata-Flavor: Google' {TOKEN}\"")
    assert p.returncode != 0 and "access_token" not in p.stdout and "curl: (7)" in p.stderr, (p.stdout, p.stderr)
    assert "access_token" in booted.sh(f"curl -sS -m 5 -H 'Metadata-Flavor: Google' {TOKEN}").stdout


def test_the_boot_ran_with_only_cos_commands_on_path(booted):
    assert booted.sh(f"ls {COS_PATH}").stdout.split() == sorted(TOOLS)
    assert "startup-script exit status 0" in booted.first_boot


def test_reboot_keeps_the_disk_without_a_format(booted):
    booted.sh(f"echo kept > {DATA}/storage/marker", check=True)
    journal = booted.reboot()
    assert "startup-script exit status 0" in journal
    assert "formatting" not in journal
    assert "mounted /dev/disk/by-id/google-convex-data" in journal
    assert booted.sh(f"cat {DATA}/storage/marker").stdout == "kept\n"
    assert booted.curl("/version") == (200, "standin")
    # Nothing minted again: the same instance secret and admin key.
    assert len(booted.apis.secrets[INSTANCE_SECRET_ID]) == 1
    assert len(booted.apis.secrets[ADMIN_KEY_SECRET_ID]) == 1
    assert "already stored" in journal


def test_config_change_is_reconciled_by_the_watcher(booted):
    booted.backend_env["RUST_LOG"] = "debug"
    before = booted.show("cloudsql-proxy", "ExecMainStartTimestampMonotonic")
    watcher = booted.apply()
    assert "metadata changed" in watcher and "reconcile finished" in watcher
    assert "RUST_LOG=debug" in booted.container_env("convex-backend")
    assert booted.curl("/version") == (200, "standin")
    # Only what changed restarts.
    assert booted.show("cloudsql-proxy", "ExecMainStartTimestampMonotonic") == before


def test_docker_daemon_restart_brings_every_container_back(booted):
    booted.sh("systemctl restart docker", check=True)
    booted.wait_for(lambda: booted.curl("/version")[0] == 200, 180, "/version after a Docker restart")
    booted.wait_for(lambda: booted.curl("/", port=6791)[0] == 200, 120, "the dashboard after a Docker restart")
    for unit in ("cloudsql-proxy", "convex-backend", "convex-dashboard"):
        assert booted.state(unit) == "active", unit


def test_crash_loop_is_restarted_every_restart_sec_forever(booted):
    # The backend now exits 1 a second after each start (the stand-in reads its knobs at start).
    booted.sh(f"""echo '{{"CONVEX_STANDIN_MODE": "crash", "CONVEX_STANDIN_START_SECONDS": "1"}}' > {DATA}/standin-knobs.json""",
              check=True)
    booted.sh("docker kill convex-backend", check=True)
    booted.wait_for(lambda: int(booted.show("convex-backend", "NRestarts") or 0) >= 4, 180, "four restarts")
    out = booted.sh(f"journalctl --since @{booted.since:.6f} -u convex-backend -o short-unix --no-pager"
                    " | grep 'Started convex-backend'").stdout
    starts = [float(x) for x in re.findall(r"^(\d+\.\d+) ", out, re.M)]
    gaps = [b - a for a, b in zip(starts[-4:], starts[-3:])]
    assert len(gaps) == 3 and min(gaps) >= 10, gaps  # RestartSec=10 (vm/units/convex-backend.service)
    assert booted.curl("/version")[0] != 200
    assert booted.state("convex-backend") in ("active", "activating")  # never given up (StartLimitIntervalSec=0)
    booted.sh(f"rm {DATA}/standin-knobs.json", check=True)
    booted.wait_for(lambda: booted.curl("/version")[0] == 200, 60, "/version once the crash is gone")


def test_upgrade_that_migrates_slowly(booted):
    slow = booted.world.images.image(BACKEND_REPO, CONVEX_STANDIN_DATABASE_VERSION="129",
                                     CONVEX_STANDIN_MIGRATION_SECONDS="20", CONVEX_STANDIN_VERSION="standin-129")
    t0 = time.monotonic()
    watcher = booted.apply(BACKEND_IMAGE=slow)
    assert "reconcile finished" in watcher.rsplit("metadata changed", 1)[1]
    assert booted.curl("/version") == (200, "standin-129")
    booted.wait_for(lambda: "Migrated 129" in booted.logs("convex-backend"), 120, "the migration")
    assert time.monotonic() - t0 >= 20
    backend = booted.logs("convex-backend")
    assert backend.index("Migrating to 129") < backend.index("Migrated 129") < backend.rindex("Migration complete")
    # The VM's upgrade guard followed it to the end: logged, recorded healthy at the new version, no rollback.
    status = "/mnt/disks/convex-data/convex-gcp/upgrade/status"
    booted.wait_for(lambda: re.search(r"state=healthy .*detail=database version 129", booted.sh(f"cat {status}").stdout),
                    120, "the guard's status at version 129")
    guard = booted.journal("convex-upgrade")
    assert "migration: Migrating to 129" in guard and "migration: Migrated 129" in guard, guard
    assert "ROLLBACK" not in guard
