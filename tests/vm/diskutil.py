"""Helpers that inspect the file-backed data disk with real e2fsprogs/util-linux."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from pathlib import Path

SBIN = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def blkid(disk: Path) -> dict[str, str]:
    p = subprocess.run(["blkid", "-p", "-o", "export", str(disk)], capture_output=True, text=True, env=SBIN)
    if p.returncode != 0:
        return {}
    return dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)


def mkfs(disk: Path, fstype: str = "ext4") -> None:
    subprocess.run(["mke2fs", "-q", "-t", fstype, "-F", str(disk)], check=True, env=SBIN,
                   stdin=subprocess.DEVNULL)


def write_file(disk: Path, name: str, content: bytes, tmp: Path) -> None:
    """Write a real file into the ext4 image (no mount needed)."""
    src = tmp / f"src-{name}"
    src.write_bytes(content)
    subprocess.run(["debugfs", "-w", "-R", f"write {src} {name}", str(disk)], check=True,
                   capture_output=True, env=SBIN)


def read_file(disk: Path, name: str) -> bytes:
    p = subprocess.run(["debugfs", "-R", f"cat {name}", str(disk)], check=True, capture_output=True, env=SBIN)
    return p.stdout


def block_count(disk: Path) -> int:
    p = subprocess.run(["dumpe2fs", "-h", str(disk)], check=True, capture_output=True, text=True, env=SBIN)
    for line in p.stdout.splitlines():
        if line.startswith("Block count:"):
            return int(line.split(":")[1])
    raise AssertionError("no block count")


BLOCK = 64 * 1024
_ZEROS = bytes(BLOCK)


def digest(disk: Path) -> str:
    """A hash of the image's content: its size and every 64 KiB block that is not all zeros, with its
    offset. Equal content gives an equal hash however it is stored (a hole reads as zeros), yet only
    the allocated extents are read (lseek(2) SEEK_DATA/SEEK_HOLE; a file system without them reports
    the whole file as data). A 64 MB image holds a few MB of ext4: hashing all of it cost ~0.15 s."""
    h = hashlib.sha256()
    with open(disk, "rb") as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        h.update(size.to_bytes(8, "little"))
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as error:
                if error.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            block = data - data % BLOCK
            while block < hole:
                content = os.pread(fd, BLOCK, block)
                if content != _ZEROS[:len(content)]:
                    h.update(block.to_bytes(8, "little") + content)
                block += BLOCK
            pos = block
    return h.hexdigest()


def write_mbr(disk: Path) -> None:
    """A DOS partition table with one Linux partition, nothing else."""
    with open(disk, "r+b") as fh:
        entry = bytes([0x00, 0, 0, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") + (8192).to_bytes(4, "little")
        fh.seek(446)
        fh.write(entry)
        fh.seek(440)
        fh.write(b"\x78\x56\x34\x12")
        fh.seek(510)
        fh.write(b"\x55\xaa")
