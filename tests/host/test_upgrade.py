"""An upgrade whose new backend never comes up, on a real systemd and Docker engine: the VM rolls back
by itself (vm/convex-upgrade.sh writes the rollback, the config watcher's retry runs the previous image)."""

from __future__ import annotations

import pytest

from tests.host.machine import BACKEND_REPO

UPGRADE_STATE = "/mnt/disks/convex-data/convex-gcp/upgrade"


@pytest.mark.parametrize("mode", ["never", "crash"])
def test_an_upgrade_that_never_comes_up_is_rolled_back(vm, mode):
    """never: the new backend hangs before it binds. crash: it exits at start and systemd restarts it every
    RestartSec; between a run's exit and the next run's ExecStartPre `docker rm -f`, its exited container
    is still there while the unit is already starting again, which the guard must count as a replaced run."""
    # Shorter bounds than production's (the guard's 600 s deadline, the run's 300 s backend wait, the
    # watcher's 60 s first retry), all through the scripts' own seams: the same code paths, in minutes.
    vm.unit_env["convex-upgrade"] = {"CONVEX_GCP_UPGRADE_DEADLINE_MS": "20000"}
    vm.script_env.update(CONVEX_GCP_BACKEND_WAIT_MS="20000", CONVEX_GCP_PENDING_RETRY_MS="10000",
                         CONVEX_GCP_OUTAGE_RETRY_MS="10000")
    assert "startup-script exit status 0" in vm.boot()
    good = vm.config["BACKEND_IMAGE"]
    rejected = vm.world.images.image(BACKEND_REPO, CONVEX_STANDIN_MODE=mode, CONVEX_STANDIN_VERSION=f"standin-{mode}")
    vm.config["BACKEND_IMAGE"] = rejected
    vm.publish()  # `pulumi up` with the new image
    vm.wait_for(lambda: vm.sh(f"test -s {UPGRADE_STATE}/rollback").returncode == 0, 150, "the guard's rollback file")
    assert rejected.split("@")[1] in vm.sh("docker images --digests").stdout  # pulled: what the prune must remove
    rollback = vm.sh(f"cat {UPGRADE_STATE}/rollback").stdout
    assert f"REJECTED_BACKEND_IMAGE={rejected}" in rollback and f"BACKEND_IMAGE={good}" in rollback
    vm.wait_for(lambda: vm.curl("/version") == (200, "standin"), 120, "/version of the previous release")
    assert good in vm.sh("cat /etc/systemd/system/convex-backend.service").stdout
    guard = vm.journal("convex-upgrade")
    assert "did not answer" in guard and "no migration began" in guard, guard
    assert "was rolled back" in vm.journal("convex-config-watch")
    vm.wait_for(lambda: "state=healthy" in vm.sh(f"cat {UPGRADE_STATE}/status").stdout, 120, "the guard's healthy status")
    # The rejected image is pruned once nothing references it.
    vm.wait_for(lambda: rejected.split("@")[1] not in vm.sh("docker images --digests").stdout, 120, "the rejected image pruned")
