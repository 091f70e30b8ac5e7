"""The commands Container-Optimized OS ships that the boot path may use, by the package COS builds them
from (COS is built from ChromiumOS/Gentoo packages; /etc/cos-package-info.json on an image lists them
as category/name, e.g. app-shells/bash). The host tier runs vm/startup.sh with PATH holding only these
(tests/host/vmroot: the startup-script runner sets PATH=/opt/cos-path, links made from this list when
the VM's root file system is built), so a command outside the list fails the boot as it would on COS.

Sources, per package (what each Google page runs on COS itself):
- app-shells/bash: startup scripts run with bash (FACTS.md, "the startup-script runner ... runs /bin/bash").
- app-containers/docker: preinstalled (cloud.google.com/container-optimized-os/docs/concepts/features-and-benefits).
- sys-apps/systemd: COS runs systemd; `systemctl`, `journalctl`, `systemd-run` are used on COS in Google's
  own guides (container-optimized-os/docs/how-to/run-container-instance, logging).
- net-firewall/iptables: container-optimized-os/docs/how-to/firewall ("sudo iptables ...").
- sys-fs/e2fsprogs, sys-apps/util-linux: compute/docs/disks/format-mount-disk-linux formats with
  `mkfs.ext4 -m 0 -E lazy_itable_init=0,lazy_journal_init=0,discard` and mounts under /mnt/disks on COS;
  `resize2fs` (compute/docs/disks/resize-persistent-disk), `blkid`, `lsblk`.
- net-misc/curl: the metadata server guide queries it with curl from the VM
  (compute/docs/metadata/querying-metadata).
- coreutils, findutils, grep, sed: the base system every ChromiumOS image has (chromiumos
  virtual/target-chromium-os depends on them).
Not verified against a running COS image here (no cloud access): a tool missing from COS but listed here
would pass. rsync (the restore runbook) is deliberately NOT listed: not confirmed on COS.
"""

from __future__ import annotations

COS_TOOLS: dict[str, tuple[str, ...]] = {
    "app-shells/bash": ("bash",),
    "app-containers/docker": ("docker",),
    "sys-apps/systemd": ("systemctl", "systemd-run", "journalctl", "systemd-analyze"),
    "net-firewall/iptables": ("iptables", "iptables-save"),
    "sys-fs/e2fsprogs": ("mkfs.ext4", "mke2fs", "e2fsck", "resize2fs", "dumpe2fs", "tune2fs"),
    "sys-apps/util-linux": ("blkid", "wipefs", "blockdev", "mount", "umount", "mountpoint", "flock", "lsblk",
                            "findmnt", "losetup"),
    "net-misc/curl": ("curl",),
    "sys-apps/coreutils": ("base64", "sha256sum", "od", "tr", "head", "tail", "cut", "sort", "uniq", "wc",
                           "timeout", "stat", "dd", "cat", "cp", "mv", "rm", "mkdir", "rmdir", "chmod", "chown",
                           "touch", "sleep", "mktemp", "date", "ls", "id", "env", "true", "false", "tee", "ln",
                           "readlink", "basename", "dirname", "df", "du", "sync", "printf", "echo", "test",
                           "uname", "nproc", "seq"),
    "sys-apps/findutils": ("find", "xargs"),
    "sys-apps/grep": ("grep",),
    "sys-apps/sed": ("sed",),
}

TOOLS: tuple[str, ...] = tuple(sorted({tool for tools in COS_TOOLS.values() for tool in tools}))
COS_PATH = "/opt/cos-path"
