"""First boots that meet a fault, each on a VM of its own: the proxy slow to make its first connection
(the backend must wait for it), and Secret Manager down when the boot needs its secrets."""

from __future__ import annotations

import re

from tests.host.machine import GOOGLE_APIS_IP, PROXY_REPO


def test_backend_waits_for_a_slow_proxy(vm):
    # The proxy's connection test takes 40 s: longer than the backend's connect_timeout=30 in POSTGRES_URL,
    # so a backend started before the proxy is ready fails its first start.
    vm.config["PROXY_IMAGE"] = vm.world.images.image(PROXY_REPO, CLOUD_SQL_STANDIN_FIRST_CONNECT_SECONDS="40")
    vm.publish()
    journal = vm.boot()
    assert "startup-script exit status 0" in journal
    # What a user sees first: the backend started once, after the proxy was ready, and serves.
    assert vm.show("convex-backend", "NRestarts") == "0"
    assert "Failed to connect to Postgres" not in vm.logs("convex-backend")
    assert vm.curl("/version") == (200, "standin")
    waited = int(re.search(r"cloudsql-proxy: healthy after (\d+) ms", journal).group(1))
    assert waited >= 40000
    assert journal.index("cloudsql-proxy: healthy after") < journal.index("unit convex-backend: changed: restarting")


def test_secret_manager_outage_at_boot_is_ridden_out(vm):
    apis = (GOOGLE_APIS_IP, 443)
    vm.world.gce.blocked.add(apis)
    try:
        vm.boot(wait=False)
        # Down until the boot has failed to read the instance secret twice (backoff 2 s, 4 s).
        vm.wait_for(lambda: "secret manager access" in vm.journal("google-startup-scripts")
                    and "attempt 2/8 failed" in vm.journal("google-startup-scripts"), 180, "two failed reads")
    finally:
        vm.world.gce.blocked.discard(apis)
    journal = vm.wait_boot()
    assert re.search(r"secret manager access projects/\S+/secrets/convex-dev-instance-secret: attempt 1/8 failed "
                     r"\(HTTP 000", journal), journal
    assert "startup-script exit status 0" in journal
    assert vm.curl("/version") == (200, "standin")
