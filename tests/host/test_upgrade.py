"""An upgrade whose new backend never comes up, on a real systemd and Docker engine."""

from __future__ import annotations

import pytest

from tests.host.machine import BACKEND_REPO


@pytest.mark.xfail(strict=True, reason="the rollback landed late (issue 24 part 3, vm/convex-upgrade.sh) and waits "
                   "CONVEX_GCP_UPGRADE_DEADLINE_MS, 600 s by default, for the new backend; this test gives it 90 s and was "
                   "not yet rewired to its deadline (a 10-minute wait is beyond the tier's budget): today it fails here")
def test_an_upgrade_that_never_comes_up_is_rolled_back(vm):
    vm.script_env["CONVEX_GCP_BACKEND_WAIT_MS"] = "60000"  # the run's bound on the new backend (default 300 s)
    assert "startup-script exit status 0" in vm.boot()
    never = vm.world.images.image(BACKEND_REPO, CONVEX_STANDIN_MODE="never", CONVEX_STANDIN_VERSION="standin-never")
    vm.apply(BACKEND_IMAGE=never, timeout=240)  # the run gives the new backend 60 s, then exits
    vm.wait_for(lambda: vm.curl("/version") == (200, "standin"), 30, "/version of the previous release")
