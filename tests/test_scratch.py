"""Scratch files in memory (tests/conftest.py): used only when nobody chose a place, the filesystem is a
tmpfs with room, and the directory is ours and closed to others."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import conftest


def _config(basetemp: str | None = None):
    return SimpleNamespace(option=SimpleNamespace(basetemp=basetemp))


@pytest.fixture
def memory_fs(tmp_path, monkeypatch):
    """A stand-in for /dev/shm: any directory, reported as a tmpfs with room."""
    monkeypatch.setattr(conftest, "MEMORY_FS", tmp_path)
    monkeypatch.setattr(conftest, "_is_tmpfs", lambda path: path == tmp_path)
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)  # restored after the test
    return tmp_path


def test_scratch_goes_to_a_private_directory_on_the_tmpfs(memory_fs):
    scratch = conftest._scratch_in_memory(_config())
    assert scratch == str(memory_fs / f"convex-gcp-tests-{os.getuid()}")
    assert os.environ["TMPDIR"] == scratch and tempfile.gettempdir() == scratch
    assert Path(scratch).stat().st_mode & 0o777 == 0o711


@pytest.mark.parametrize("chosen", ["tmpdir", "basetemp"])
def test_a_place_someone_chose_wins(memory_fs, monkeypatch, chosen):
    if chosen == "tmpdir":
        monkeypatch.setenv("TMPDIR", str(memory_fs / "elsewhere"))
    assert conftest._scratch_in_memory(_config("/some/basetemp" if chosen == "basetemp" else None)) is None
    assert not (memory_fs / f"convex-gcp-tests-{os.getuid()}").exists()


def test_not_a_tmpfs_or_too_little_room_keeps_the_default(memory_fs, monkeypatch):
    monkeypatch.setattr(conftest, "_is_tmpfs", lambda path: False)
    assert conftest._scratch_in_memory(_config()) is None
    monkeypatch.setattr(conftest, "_is_tmpfs", lambda path: True)
    monkeypatch.setattr(conftest, "MEMORY_FS_MIN_FREE", 1 << 62)
    assert conftest._scratch_in_memory(_config()) is None
    assert "TMPDIR" not in os.environ


def test_a_directory_others_can_write_or_a_link_is_not_used(memory_fs):
    planted = memory_fs / f"convex-gcp-tests-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    assert conftest._scratch_in_memory(_config()) is None
    planted.rmdir()
    (memory_fs / "target").mkdir(mode=0o700)
    planted.symlink_to(memory_fs / "target")
    assert conftest._scratch_in_memory(_config()) is None


def test_the_real_dev_shm_is_recognised_when_it_is_a_tmpfs():
    mounts = Path("/proc/self/mounts").read_text()
    expected = any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts.splitlines())
    assert conftest._is_tmpfs(Path("/dev/shm")) == expected
    assert not conftest._is_tmpfs(Path("/proc"))
