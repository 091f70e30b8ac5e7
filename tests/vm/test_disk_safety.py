"""The data disk is formatted only when four independent proofs agree it is blank; any probe
error stops the boot and never formats (issue 10 item 1)."""

from __future__ import annotations

import subprocess

import diskutil
from sandbox import INSTANCE_SECRET_ID


def _shim(sandbox, tool: str, body: str) -> None:
    f = sandbox.bin / tool
    f.write_text("#!/bin/bash\n" + body + "\n")
    f.chmod(0o755)


def _assert_untouched(sandbox, r, before, *phrases):
    assert r.rc == 1, r.stderr
    assert "formatting" not in r.stderr
    assert diskutil.digest(sandbox.disk) == before
    assert sandbox.calls("mount") == [] and sandbox.docker("run") == []
    for p in phrases:
        assert p in r.stderr, p


def test_reported_data_loss_read_errors_make_blkid_exit_2(sandbox, tmp_path):
    """The reported case: an ext4 disk holding a file whose last 4 MiB fail to read makes util-linux
    blkid exit 2 ("nothing found", misc-utils/blkid.c lowprobe_device) with nothing on stderr. The
    old script formatted it (UUID changed, file gone); now the other proofs see the filesystem."""
    diskutil.mkfs(sandbox.disk)
    diskutil.write_file(sandbox.disk, "precious.txt", b"customer data\n", tmp_path)
    uuid = diskutil.blkid(sandbox.disk)["UUID"]
    before = diskutil.digest(sandbox.disk)
    _shim(sandbox, "blkid", "exit 2")  # probing failed on the unreadable tail; blkid says nothing
    # ... and reads of the last 4 MiB fail for everyone else too.
    _shim(sandbox, "dd", 'for a in "$@"; do case $a in skip=0) exec /bin/dd "$@";; skip=*) '
          'echo "dd: error reading \'$1\': Input/output error" >&2; exit 1;; esac; done; exec /bin/dd "$@"')
    r = sandbox.run()
    _assert_untouched(sandbox, r, before, "refusing to format", str(sandbox.disk))
    assert "wipefs" in r.stderr and "ext4" in r.stderr
    assert diskutil.blkid(sandbox.disk)["UUID"] == uuid
    assert diskutil.read_file(sandbox.disk, "precious.txt") == b"customer data\n"


def test_read_error_at_the_end_of_a_blank_looking_disk_stops_the_boot(sandbox):
    """Every signature probe says blank, but the last MiB cannot be read: an error, not a blank disk."""
    before = diskutil.digest(sandbox.disk)
    _shim(sandbox, "dd", 'for a in "$@"; do case $a in skip=0) exec /bin/dd "$@";; skip=*) '
          'echo "dd: error reading: Input/output error" >&2; exit 1;; esac; done; exec /bin/dd "$@"')
    r = sandbox.run()
    _assert_untouched(sandbox, r, before, "cannot tell whether data disk", "Input/output error", "dmesg")


def test_data_no_probe_recognises_is_never_formatted(sandbox):
    with open(sandbox.disk, "r+b") as fh:
        fh.seek(300_000)
        fh.write(b"opaque bytes of some other tool" * 10)
    before = diskutil.digest(sandbox.disk)
    r = sandbox.run()
    _assert_untouched(sandbox, r, before, "data in its first MiB that no probe recognises")


def test_data_only_in_the_last_mib_is_never_formatted(sandbox):
    with open(sandbox.disk, "r+b") as fh:
        fh.seek(-4096, 2)
        fh.write(b"\x01" * 512)
    before = diskutil.digest(sandbox.disk)
    r = sandbox.run()
    _assert_untouched(sandbox, r, before, "data in its last MiB")


def test_wipefs_sees_what_blkid_missed(sandbox):
    diskutil.write_mbr(sandbox.disk)
    before = diskutil.digest(sandbox.disk)
    _shim(sandbox, "blkid", "exit 2")
    r = sandbox.run()
    _assert_untouched(sandbox, r, before, "signatures blkid did not report", "dos")


def test_dumpe2fs_error_other_than_bad_magic_stops(sandbox):
    before = diskutil.digest(sandbox.disk)
    _shim(sandbox, "dumpe2fs", 'echo "dumpe2fs: Attempt to read block from filesystem resulted in short read" >&2; exit 1')
    r = sandbox.run()
    _assert_untouched(sandbox, r, before, "dumpe2fs -h exit 1", "short read")


def test_blkid_exit_2_with_an_error_message_stops(sandbox):
    before = diskutil.digest(sandbox.disk)
    _shim(sandbox, "blkid", 'echo "error: /dev/sdb: Input/output error" >&2; exit 2')
    r = sandbox.run()
    _assert_untouched(sandbox, r, before, "blkid -p exited 2 but reported", "Input/output error")


def test_blank_disk_is_still_formatted_on_first_boot(sandbox, booted):
    r = booted
    assert "first and last MiB are zeros: formatting ext4" in r.stderr
    assert diskutil.blkid(sandbox.disk)["TYPE"] == "ext4"


def test_e2fsck_that_cannot_fix_stops_before_mount(sandbox):
    """e2fsck -p exit >= 4 (errors left uncorrected, e2fsck(8)) stops the boot before mount."""
    diskutil.mkfs(sandbox.disk)
    _shim(sandbox, "e2fsck", 'echo "convex-data: UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY." >&2; exit 4')
    r = sandbox.run()
    assert r.rc == 1
    assert "e2fsck -p found errors it cannot fix" in r.stderr and "exit 4" in r.stderr
    assert "sudo e2fsck -f" in r.stderr and "snapshot" in r.stderr
    assert sandbox.calls("mount") == [] and sandbox.docker("run") == []


def test_failing_find_never_mints_a_new_instance_secret(sandbox):
    """An unreadable data directory is not an empty one (issue 10 item 5)."""
    sandbox.apis.secrets[INSTANCE_SECRET_ID] = []
    _shim(sandbox, "find", 'echo "find: \'$1\': Input/output error" >&2; exit 1')
    r = sandbox.run()
    assert r.rc == 1
    assert "refusing to mint a new instance secret" in r.stderr and "Input/output error" in r.stderr
    assert sandbox.apis.secrets[INSTANCE_SECRET_ID] == []
    assert sandbox.docker("run") == []


def test_missing_tool_is_named_before_anything_runs(sandbox, tmp_path):
    tools = tmp_path / "path"
    tools.mkdir()
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        from pathlib import Path

        for p in Path(d).iterdir() if Path(d).is_dir() else []:
            if p.name != "wipefs" and not (tools / p.name).exists():
                (tools / p.name).symlink_to(p)
    sandbox.extra_env["PATH"] = f"{sandbox.bin}:{tools}"
    before = diskutil.digest(sandbox.disk)
    r = sandbox.run()
    assert r.rc == 1
    assert "required tool(s) not found on PATH: wipefs" in r.stderr
    assert sandbox.metadata.requests == [] and diskutil.digest(sandbox.disk) == before


def test_the_digest_sees_any_change_of_content_and_only_that(tmp_path):
    """`diskutil.digest`, which the checks above compare, hashes the content, not how it is stored:
    a byte changed anywhere (in the first or last allocated extent, in a hole, the last byte) or a
    new size changes it; the same bytes stored with or without holes do not."""
    import os
    import subprocess

    image = tmp_path / "a.img"
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    diskutil.mkfs(image)
    diskutil.write_file(image, "late.bin", os.urandom(3 << 20), tmp_path)  # data well past the first extent
    original = diskutil.digest(image)
    dense = tmp_path / "dense.img"
    subprocess.run(["cp", "--sparse=never", str(image), str(dense)], check=True)
    assert os.stat(dense).st_blocks > 2 * os.stat(image).st_blocks and diskutil.digest(dense) == original

    def changed(offset: int | None = None, size: int | None = None) -> str:
        copy = tmp_path / "copy.img"
        subprocess.run(["cp", "--sparse=always", str(image), str(copy)], check=True)
        if size is not None:
            os.truncate(copy, size)
        if offset is not None:
            with open(copy, "r+b") as fh:
                fh.seek(offset)
                byte = fh.read(1) or b"\0"
                fh.seek(offset)
                fh.write(bytes([byte[0] ^ 1]))
        return diskutil.digest(copy)

    last_data = 0
    with open(image, "rb") as fh:  # the start of the last allocated extent
        offset, fd = 0, fh.fileno()
        while True:
            try:
                data = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            last_data, offset = data, os.lseek(fd, data, os.SEEK_HOLE)
    assert changed() == original
    for where in (1024 + 7, last_data + 3, 40 << 20, (64 << 20) - 1):
        assert changed(offset=where) != original, where
    assert changed(size=65 << 20) != original


def _df_percent(disk) -> float:
    """What `df` (and node-problem-detector's disk/percent_used: gopsutil UsedPercent) would show
    mounted: used / (used + available) in percent, from the superblock. statfs(2) on ext4 counts
    f_blocks without the metadata overhead; with `-m 0` (the startup script's mkfs) available = free."""
    out = subprocess.run(["dumpe2fs", "-h", str(disk)], check=True, capture_output=True, text=True, env=diskutil.SBIN).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    blocks, free = int(fields["Block count"]), int(fields["Free blocks"])
    overhead = int(fields.get("Overhead clusters", "0") or 0)
    used = blocks - overhead - free
    return 100.0 * used / (used + free)


def test_a_full_data_disk_boots_and_matches_the_data_disk_alert(sandbox, tmp_path):
    """The data disk at 100%: the boot neither stops nor fills it further (e2fsck -p and resize2fs pass on a
    full ext4; everything else it writes is on the boot disk or a tmpfs), the backend is started as
    usual, and the disk stays above the alert's threshold: the data-disk alert (CRITICAL) is what
    tells, not a failed boot. What Convex itself does then (uploads, pushes and exports failing with
    ENOSPC while queries and mutations, in Postgres, go on) is not modelled here."""
    from components.monitoring import DATA_DISK_DEVICES
    from convex_gcp.settings import MonitoringSettings

    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-m", "0", "-F", "-L", "convex-data", str(sandbox.disk)],
                   check=True, env=diskutil.SBIN, stdin=subprocess.DEVNULL)
    diskutil.write_file(sandbox.disk, "placeholder", b"x", tmp_path)
    # Fill it: one file as large as the free space, then smaller ones until debugfs finds no block.
    out = subprocess.run(["dumpe2fs", "-h", str(sandbox.disk)], check=True, capture_output=True, text=True, env=diskutil.SBIN).stdout
    free = int(next(line for line in out.splitlines() if line.startswith("Free blocks:")).split(":")[1]) * 4096
    for n, size in enumerate((free - (1 << 20), 512 << 10, 256 << 10, 64 << 10, 16 << 10, 4 << 10)):
        (tmp_path / "fill").write_bytes(b"\1" * size)
        subprocess.run(["debugfs", "-w", "-R", f"write {tmp_path / 'fill'} fill{n}", str(sandbox.disk)],
                       capture_output=True, env=diskutil.SBIN)
    full = _df_percent(sandbox.disk)
    assert full >= 99.0, full
    r = sandbox.run()
    assert r.rc == 0, r.output
    assert "refusing" not in r.stderr and "formatting" not in r.stderr
    assert any("convex-backend" in " ".join(c.get("argv", [])) for c in sandbox.docker("run")), sandbox.docker("run")
    # Still full, the data in place (e2fsck -p records its check in the superblock; nothing else moves).
    assert _df_percent(sandbox.disk) == full and diskutil.read_file(sandbox.disk, "placeholder") == b"x"
    # The alert: guest/disk/percent_used of the data disk's device above vmDiskUtilization.
    assert full > MonitoringSettings().vm_disk_utilization * 100 and "sdb" in DATA_DISK_DEVICES
