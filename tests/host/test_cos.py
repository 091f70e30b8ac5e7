"""Where the host tier's VM differs from Container-Optimized OS, made to fail loudly where it matters:
the boot runs with only COS's commands on PATH (tests/host/cos_tools.py), and the units call only those."""

from __future__ import annotations

import re

from tests.host.cos_tools import COS_PATH, TOOLS, UNCONFIRMED
from tests.host.machine import REPO, VM_FILES

UNITS = REPO / "vm" / "units"


def test_units_call_only_commands_cos_ships():
    for unit in sorted(UNITS.glob("*.service")):
        for line in re.findall(r"^Exec\w+=(.*)$", unit.read_text(), re.M):
            command = line.lstrip("-@:+!").split()[0]
            assert command.rsplit("/", 1)[-1] in TOOLS, f"{unit.name}: {command} is not in COS (tests/host/cos_tools.py)"


def test_the_script_checks_for_commands_cos_ships():
    script = (REPO / "vm" / "startup.sh").read_text()
    required = re.search(r"^REQUIRED_TOOLS=\(([^)]*)\)", script, re.M).group(1).split()
    assert set(required) <= set(TOOLS), set(required) - set(TOOLS)


def test_the_boot_runs_with_only_cos_commands_on_path():
    runner = (VM_FILES / "usr/bin/google_metadata_script_runner").read_text()
    assert f'PATH={COS_PATH} /bin/bash -c "$script"' in runner



def test_only_the_known_unconfirmed_commands_are_used():
    """UNCONFIRMED (on PATH, but no source shows it on COS) stays exactly the one known case; the units
    that use it are the ones named in cos_tools.py."""
    assert UNCONFIRMED == {"sys-apps/systemd": ("systemd-socket-activate",)}
    users = sorted(u.name for u in UNITS.glob("*.service") if "systemd-socket-activate" in u.read_text())
    assert users == ["convex-metrics.service"]
