"""Scratch files in memory (tests/conftest.py): used only when nobody chose a place, the filesystem is a
tmpfs that allows executables and has room (in itself and in the memory behind it), and the
directory is ours and closed to others."""

from __future__ import annotations

import os
import subprocess
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
    monkeypatch.setattr(conftest, "_memory_room", lambda path: 8 << 30)
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)  # restored after the test
    return tmp_path


def test_scratch_goes_to_a_private_directory_on_the_tmpfs(memory_fs):
    scratch, _ = conftest._scratch_in_memory(_config())
    assert scratch == str(memory_fs / f"convex-gcp-tests-{os.getuid()}")
    assert os.environ["TMPDIR"] == scratch and tempfile.gettempdir() == scratch
    assert Path(scratch).stat().st_mode & 0o777 == 0o711


@pytest.mark.parametrize("chosen", ["tmpdir", "basetemp"])
def test_a_place_someone_chose_wins(memory_fs, monkeypatch, chosen):
    if chosen == "tmpdir":
        monkeypatch.setenv("TMPDIR", str(memory_fs / "elsewhere"))
    scratch, why = conftest._scratch_in_memory(_config("/some/basetemp" if chosen == "basetemp" else None))
    assert scratch is None and "TMPDIR or --basetemp" in why
    assert not (memory_fs / f"convex-gcp-tests-{os.getuid()}").exists()


def test_not_a_usable_tmpfs_or_too_little_room_keeps_the_default(memory_fs, monkeypatch):
    monkeypatch.setattr(conftest, "_is_tmpfs", lambda path: False)
    assert conftest._scratch_in_memory(_config()) == (None, f"{memory_fs} is not a tmpfs that allows executables")
    monkeypatch.setattr(conftest, "_is_tmpfs", lambda path: True)
    monkeypatch.setattr(conftest, "_memory_room", lambda path: 64 << 20)  # Docker's default /dev/shm
    scratch, why = conftest._scratch_in_memory(_config())
    assert scratch is None and "64 MiB free, under 2048" in why
    assert "TMPDIR" not in os.environ


def test_a_directory_others_can_write_or_a_link_is_not_used(memory_fs):
    planted = memory_fs / f"convex-gcp-tests-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    assert conftest._scratch_in_memory(_config())[0] is None
    planted.rmdir()
    (memory_fs / "target").mkdir(mode=0o700)
    planted.symlink_to(memory_fs / "target")
    assert conftest._scratch_in_memory(_config())[0] is None


def test_tmpfs_and_noexec_are_read_as_findmnt_reads_them():
    """util-linux's findmnt is the independent reading of the same mount table."""
    for path in ("/dev/shm", "/proc", "/"):
        lines = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", "--mountpoint", path],
                               capture_output=True, text=True).stdout.splitlines()
        found = lines[-1].split() if lines else []  # mounts stacked on a path: the last one is in effect
        expected = bool(found) and found[0] == "tmpfs" and "noexec" not in found[1].split(",")
        assert conftest._is_tmpfs(Path(path)) == expected, (path, found)


def test_room_is_the_least_of_the_tmpfs_and_the_memory_behind_it():
    room = conftest._memory_room(Path("/dev/shm"))
    stats = os.statvfs("/dev/shm")
    available = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemAvailable:")).split()[1]) * 1024
    assert 0 < room <= stats.f_bavail * stats.f_frsize and room <= available


def test_a_noexec_or_covered_mount_is_not_used():
    shm = Path("/dev/shm")
    docker = "shm /dev/shm tmpfs rw,nosuid,nodev,noexec,relatime,size=65536k 0 0\n"
    assert not conftest._is_tmpfs(shm, docker)
    assert conftest._is_tmpfs(shm, docker.replace("noexec,", ""))
    # Mounted over: the last line for a path is the mount in effect.
    assert not conftest._is_tmpfs(shm, docker.replace("noexec,", "") + "/dev/vda /dev/shm ext4 rw 0 0\n")
    assert not conftest._is_tmpfs(shm, "tmpfs /dev/shm/x tmpfs rw 0 0\n")
