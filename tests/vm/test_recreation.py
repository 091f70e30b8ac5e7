"""A recreated VM (autoheal, COS bump, template change) boots on the kept data disk and serves the same data:
the real vm/startup.sh in the sandbox, after tests/vm/recreation.py removed what goes with the VM."""

from __future__ import annotations

import subprocess

import diskutil
from recreation import recreate
from sandbox import ADMIN_KEY_SECRET_ID, INSTANCE_SECRET_ID, data_mounts

from convex_gcp import runtime


def health(sb) -> str:
    p = subprocess.run(["bash", str(runtime.HEALTH_DIR / "health.sh")], input=b"GET /health HTTP/1.1\r\n\r\n",
                       env=sb.env(), capture_output=True, timeout=10)
    return p.stdout.decode().split("\r\n", 1)[0]


def test_a_recreated_vm_boots_on_the_kept_disk_and_serves_the_same_data(sandbox, booted, tmp_path):
    uuid = diskutil.blkid(sandbox.disk)["UUID"]
    # Convex's data stands in as a file in the ext4 image itself (the sandbox's mount is a stand-in).
    diskutil.write_file(sandbox.disk, "precious.txt", b"convex data\n", tmp_path)
    admin_keys = list(sandbox.apis.secrets[ADMIN_KEY_SECRET_ID])

    recreate(sandbox)
    assert not sandbox.state_dir.exists() and sandbox.docker_state()["images"] == {}
    r = sandbox.run()
    assert r.rc == 0, r.stderr

    # The disk is found, checked and mounted, never formatted; its data is the data it had.
    assert "formatting" not in r.stderr
    assert diskutil.blkid(sandbox.disk)["UUID"] == uuid
    assert diskutil.read_file(sandbox.disk, "precious.txt") == b"convex data\n"
    (mount,) = data_mounts(sandbox)
    assert mount["argv"][-2:] == [str(sandbox.disk), str(sandbox.mount_point)]
    # A new boot disk has no images: every image is pulled again, by its pinned reference.
    assert len(sandbox.docker("pull")) == 3
    assert sandbox.runs() == ["cloudsql-proxy", "convex-backend", "convex-dashboard"]
    # Same identity: the instance secret is read, not minted; the admin key is not issued again.
    assert sandbox.apis.secrets[ADMIN_KEY_SECRET_ID] == admin_keys
    assert INSTANCE_SECRET_ID in " ".join(str(req) for req in sandbox.apis.requests)
    # And it serves: /version answers, so autohealing's probe says so too.
    assert health(sandbox) == "HTTP/1.1 200 OK"


def test_two_recreations_in_a_row_keep_the_disk(sandbox, booted, tmp_path):
    diskutil.write_file(sandbox.disk, "precious.txt", b"convex data\n", tmp_path)
    before = diskutil.blkid(sandbox.disk)["UUID"]
    for _ in range(2):
        recreate(sandbox)
        r = sandbox.run()
        assert r.rc == 0, r.stderr
    assert diskutil.blkid(sandbox.disk)["UUID"] == before
    assert diskutil.read_file(sandbox.disk, "precious.txt") == b"convex data\n"
