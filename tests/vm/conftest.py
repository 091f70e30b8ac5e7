"""Fixtures for the VM boot-path sandbox (see sandbox.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sandbox import Sandbox  # noqa: E402

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
