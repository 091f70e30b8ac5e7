"""What the VM group's recreation of the VM leaves for the next boot, in the VM sandbox.

Autohealing, a new template (a COS bump) and `recreate-instances` all delete the VM and create it again from
the template under the same name (replacement_method RECREATE). What goes with the VM: its boot disk (the
template's boot disk is auto-deleted and made anew from the image: COS's stateful partition, /var, with
/var/lib/convex-gcp and Docker's images and containers) and everything a reboot resets (/run, /etc, /mnt/disks,
systemd and iptables state). What comes back: the data disk (the per-instance config's preserved disk,
delete rule NEVER, same device name) and the reserved internal IP. Used by tests/vm/test_recreation.py and
benchmarks/update_downtime.py.
"""

from __future__ import annotations

import json
import shutil


def recreate(sb) -> None:
    """The sandbox becomes a VM the group just created on the kept data disk (sb.disk is untouched)."""
    sb.reboot()
    shutil.rmtree(sb.state_dir, ignore_errors=True)  # /var/lib/convex-gcp: on the old boot disk
    state = sb.docker_state()
    for key in ("images", "networks", "containers"):  # /var/lib/docker: on the old boot disk
        state[key] = {}
    (sb.fake_root / "docker.json").write_text(json.dumps(state))
    for name in ("calls.jsonl",):
        (sb.fake_root / name).unlink(missing_ok=True)
