"""Fixtures for the VM boot-path sandbox (see sandbox.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sandbox import Result, Sandbox, Snapshot  # noqa: E402

from tests.session import once_per_session  # noqa: E402

REQUIRED = ("bash", "curl", "blkid", "wipefs", "blockdev", "dumpe2fs", "mkfs.ext4", "e2fsck", "resize2fs",
            "debugfs", "truncate", "dd", "timeout", "base64", "sha256sum", "flock", "systemd-analyze")


@pytest.fixture(scope="session", autouse=True)
def _tools() -> None:
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    missing = [t for t in REQUIRED if shutil.which(t, path=path) is None]
    if missing:
        pytest.fail(f"tests/vm need {missing}: apt-get install e2fsprogs util-linux curl coreutils systemd")


@pytest.fixture
def sandbox(tmp_path: Path):
    sb = Sandbox(tmp_path)
    yield sb
    sb.close()


@pytest.fixture(scope="session")
def _default_first_boot(tmp_path_factory) -> Snapshot:
    """The dev stack's first boot on a blank disk, made once per session by whichever xdist worker
    asks first; the others load its snapshot (restore() copies the files from its sandbox and
    rewrites paths and ports, so any process can restore it)."""
    def boot() -> Snapshot:
        sb = Sandbox(tmp_path_factory.mktemp("default-first-boot"))
        try:
            result = sb.run()
            assert result.rc == 0, result.output
            return sb.snapshot(result)
        finally:
            sb.close()

    return once_per_session("default-first-boot", boot)


@pytest.fixture
def booted(sandbox, _default_first_boot) -> Result:
    """`sandbox` after the default first boot (restored from one shared run, not run again); the
    value is that boot's result. test_sandbox.py shows a restored boot is the boot."""
    return sandbox.restore(_default_first_boot)
