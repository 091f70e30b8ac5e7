"""The commands Container-Optimized OS ships that the boot path may use, by the package COS builds them
from (COS is built from ChromiumOS/Gentoo packages; /etc/cos-package-info.json on an image lists them
as category/name, e.g. app-shells/bash). The host tier runs vm/startup.sh with PATH holding only these
(tests/host/vmroot: the startup-script runner sets PATH=/opt/cos-path, links made from this list when
the VM's root file system is built), so a command outside the list fails the boot as it would on COS.

Sources, per package (checked 2026-12-07 with public sources, no running COS image; the COS release
notes are read from the Markdown mirror github.com/multani/gcp-changelog content/container-optimized-os/index.md
at 0e30ed958e3317dd422bf140c3c416ad2a0bb98f, the same text as
https://cloud.google.com/container-optimized-os/docs/release-notes/m125):
- app-shells/bash: startup scripts run with bash (FACTS.md, "the startup-script runner ... runs /bin/bash").
- app-shells/dash: on the image ("Upgraded app-shells/dash to v0.5.13.4-r2", cos-125-19216-395-138), and
  ChromiumOS virtual/implicit-system pulls it in for "We need a /bin/sh shell": /bin/sh is most likely dash
  (no source shows the link itself); the units' `/bin/sh -c` lines stay POSIX either way.
- app-containers/docker: 27.5.1 on M125 ("Upgraded app-containers/docker to v27.5.1", cos-beta-125-19216-0-12).
- sys-apps/systemd: 254 ("Updated systemd to v254.26" in cos-beta-125-19216-0-12, the last version the notes
  name; later builds only list CVE fixes); `systemctl`, `journalctl`, `systemd-run`
  are run on COS in Google's guides and in GoogleCloudPlatform/cos-customizer (src/cmd/provisioner).
- net-firewall/iptables: 1.8.13 (cos-125-19216-395-138); container-optimized-os/docs/how-to/firewall.
- sys-fs/e2fsprogs, sys-apps/util-linux: present (container-optimized-os/docs/concepts/supported-filesystems;
  ChromiumOS virtual/implicit-system requires util-linux for mount, umount, flock); `blkid`, `e2fsck`,
  `resize2fs` are run on COS by cos-customizer (src/pkg/tools/partutil). wipefs, blockdev, mountpoint, lsblk,
  findmnt, losetup, dumpe2fs, tune2fs: their packages are on COS, no source names the command itself.
- net-misc/curl: 8.21.0 (cos-125-19216-532-25); the metadata guide queries with curl on the VM.
- net-misc/rsync: 3.4.4 (cos-125-19216-395-138; the restore runbook's copy). 3.5.0 on cos-125-19216-700-7 only
  per a third-party summary of the 2026-09-28 note (takech9203/google-cloud-news-summary), not in the mirror.
- app-admin/sudo: 1.9.17_p2 (the runbooks' `sudo`).
- sys-apps/mawk: COS's awk is mawk ("mawk to v1.3.4_p20260302"): no gawk extensions.
- coreutils, findutils, grep, sed: the base system (ChromiumOS virtual/implicit-system).

UNCONFIRMED: commands the VM uses that no public source names on COS although their package is there;
test_cos.py keeps this list exact, so a new one is a decision written down here, not an accident.
"""

from __future__ import annotations

COS_TOOLS: dict[str, tuple[str, ...]] = {
    "app-shells/bash": ("bash",),
    "app-shells/dash": ("sh",),
    "app-containers/docker": ("docker",),
    "sys-apps/systemd": ("systemctl", "systemd-run", "journalctl", "systemd-analyze"),
    "net-firewall/iptables": ("iptables", "iptables-save"),
    "sys-fs/e2fsprogs": ("mkfs.ext4", "mke2fs", "e2fsck", "resize2fs", "dumpe2fs", "tune2fs"),
    "sys-apps/util-linux": ("blkid", "wipefs", "blockdev", "mount", "umount", "mountpoint", "flock", "lsblk",
                            "findmnt", "losetup"),
    "net-misc/curl": ("curl",),
    "net-misc/rsync": ("rsync",),
    "app-admin/sudo": ("sudo",),
    "sys-apps/mawk": ("awk",),
    "sys-apps/coreutils": ("base64", "sha256sum", "od", "tr", "head", "tail", "cut", "sort", "uniq", "wc",
                           "timeout", "stat", "dd", "cat", "cp", "mv", "rm", "mkdir", "rmdir", "chmod", "chown",
                           "touch", "sleep", "mktemp", "date", "ls", "id", "env", "true", "false", "tee", "ln",
                           "readlink", "basename", "dirname", "df", "du", "sync", "printf", "echo", "test",
                           "uname", "nproc", "seq"),
    "sys-apps/findutils": ("find", "xargs"),
    "sys-apps/grep": ("grep",),
    "sys-apps/sed": ("sed",),
}

# systemd-socket-activate (convex-metrics.service, prod only): systemd's own tool (systemd-activate until v230
# renamed it; installed as /usr/bin/systemd-socket-activate), but COS may strip binaries and no COS page
# names it. The metrics rewrite would need a .socket unit pair to drop it (not done: vm/startup.sh installs
# one file per unit).
UNCONFIRMED: dict[str, tuple[str, ...]] = {"sys-apps/systemd": ("systemd-socket-activate",)}

TOOLS: tuple[str, ...] = tuple(sorted({tool for tools in (*COS_TOOLS.values(), *UNCONFIRMED.values()) for tool in tools}))
COS_PATH = "/opt/cos-path"
