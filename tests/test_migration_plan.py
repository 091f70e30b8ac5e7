"""A stack built with the bare VM, moved to the VM group: `tools.plan --from` over the plan that program declared
(tests/fixtures/bare_vm/, from main at ad07c10) shows the steps, and the data guard refuses the one-step move and
passes the documented two steps (docs/updates.md). The data disk keeps its URN and is never deleted or replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_plan
from tools.guard_data import destructive_steps, unsafe_moves
from tools.plan import changes_from, render_changes

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bare_vm"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_move_keeps_the_data_disk_and_is_guarded(stack):
    previous = json.loads((FIXTURES / f"{stack}.json").read_text())
    plan = run_plan(stack)
    steps = changes_from(previous, plan)
    by_urn = {s["urn"]: s for s in steps}
    (disk,) = [s for s in steps if s["urn"].endswith("gcp:compute/disk:Disk::convex-data")]
    # Same URN, same inputs: at most its protect flag changes (dev gains protect).
    assert disk["op"] in ("same", "update") and set(disk.get("diffs") or []) <= {"(protect)"}
    ops = {(s["op"], s["urn"].split("::")[2].split("$")[-1]) for s in steps}
    assert ("delete", "gcp:compute/instance:Instance") in ops and ("create", "gcp:compute/perInstanceConfig:PerInstanceConfig") in ops
    # dev's move also brings IAM login (docs/security.md): its built-in `convex` user leaves the program,
    # abandoned in Cloud SQL (deletionPolicy ABANDON), never dropped. Nothing else of Cloud SQL is deleted.
    sql_deletes = [s["urn"].split("::")[-1] for s in steps if s["op"] == "delete" and "gcp:sql/" in s["urn"]]
    assert sql_deletes == (["database-user"] if stack == "dev" else [])
    if stack == "dev":
        (user,) = [r for r in previous["resources"] if r.get("name") == "database-user"]
        assert user["inputs"].get("deletionPolicy") == "ABANDON"
    # One update: refused (the group's VM would be created before the bare one is deleted).
    assert unsafe_moves({"steps": steps})
    # The two documented steps: each passes the guard, and nothing guarded is deleted or replaced.
    bare = [s for s in steps if s["op"] == "delete" and any(t in s["urn"] for t in ("compute/instance:Instance", "instanceGroupMembership"))]
    rest = [s for s in steps if s not in bare]
    for part in (bare, rest):
        assert unsafe_moves({"steps": part}) == [] and destructive_steps({"steps": part}) == []
    text = render_changes(previous, plan, f"tests/fixtures/bare_vm/{stack}.json")
    assert "- as one `pulumi up`: REFUSED" in text and text.count(": passes") == 2
    assert by_urn[disk["urn"]]["op"] != "delete"
