"""What a `pulumi preview --json` costs in downtime, in Markdown for a reviewer: the pull-request comment
(dev), the prod approval's job summary, and `python -m tools.review preview.json` by hand.

Besides the guard's verdict (tools/guard_data.py), it names each IN-PLACE change that restarts the database
or the VM, which the engine shows as a plain `update`:

- Cloud SQL restarts on a change of tier (machine type), edition, availability type, zone, data cache,
  or a database flag whose "Restart required" column says so; a major version upgrade takes the instance
  down for the whole upgrade. Sources: Google, "About instance settings"
  (https://cloud.google.com/sql/docs/postgres/instance-settings: tier, availability, zone, data cache restart
  the instance), "Configure database flags" (https://cloud.google.com/sql/docs/postgres/flags: the per-flag
  "Restart required" column, copied into convex_gcp/flags.py `restarts`), "Availability in Cloud SQL"
  (https://cloud.google.com/sql/docs/postgres/availability: Enterprise Plus scale up/down and maintenance with
  near-zero downtime, under 1 s; Enterprise maintenance under 60 s), "Upgrade the database major version in
  place" (https://cloud.google.com/sql/docs/postgres/upgrade-major-db-version-inplace: the instance is
  unavailable during the upgrade).
- A VM stops and starts on a change of machine type, service account or scopes, minimum CPU platform,
  accelerators, Shielded VM or confidential settings, or network interfaces (Compute Engine needs the VM
  stopped for these; the provider stops it because `allowStoppingForUpdate` is set: terraform-provider-google
  resource_compute_instance.go). A changed instance template reaches the group's VM by its update policy
  (components/convex_vm.py): a new boot image recreates it, a machine type restarts it, metadata alone is
  refreshed on the running VM. A metadata change restarts only the containers whose rendered unit changed
  (docs/vm-runtime.md, "watcher").

The downtime figures are Google's where it gives one, otherwise estimates named as such.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from convex_gcp.flags import FLAGS
from tools.guard_data import UNKNOWN, destructive_steps, resource_type

SQL = "gcp:sql/databaseInstance:DatabaseInstance"
INSTANCE = "gcp:compute/instance:Instance"
TEMPLATES = {"gcp:compute/instanceTemplate:InstanceTemplate", "gcp:compute/regionInstanceTemplate:RegionInstanceTemplate"}
GROUPS = {"gcp:compute/instanceGroupManager:InstanceGroupManager", "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"}

INSTANCE_SETTINGS = "https://cloud.google.com/sql/docs/postgres/instance-settings"
FLAGS_PAGE = "https://cloud.google.com/sql/docs/postgres/flags"
AVAILABILITY = "https://cloud.google.com/sql/docs/postgres/availability"
MAJOR_UPGRADE = "https://cloud.google.com/sql/docs/postgres/upgrade-major-db-version-inplace"
VM_STOP = "https://cloud.google.com/compute/docs/instances/changing-machine-type-of-stopped-instance"

SQL_RESTART = ("the instance restarts: about 1 to a few minutes without the database on Enterprise (estimate); "
               "Convex's requests fail until it is back")
SQL_RESTART_PLUS = "the instance restarts with near-zero downtime on Enterprise Plus (Google: under 1 s)"
VM_RESTART = ("the VM stops and starts: its boot plus Convex's start, about 1 to 3 minutes without the API "
              "(estimate; the boot's own figures are in benchmarks/)")

# Cloud SQL settings (paths under settings.) whose change restarts the instance, per INSTANCE_SETTINGS.
SQL_RESTARTING = {
    "tier": "tier (machine type)",
    "edition": "edition",
    "availabilityType": "availability type",
    "locationPreference.zone": "zone",
    "dataCacheConfig.dataCacheEnabled": "data cache",
}
# Instance inputs Compute Engine changes only on a stopped VM.
VM_STOPPING = {
    "machineType": "machine type",
    "serviceAccount": "service account or scopes",
    "minCpuPlatform": "minimum CPU platform",
    "guestAccelerators": "accelerators",
    "shieldedInstanceConfig": "Shielded VM settings",
    "confidentialInstanceConfig": "confidential VM settings",
    "advancedMachineFeatures": "advanced machine features",
    "networkInterfaces": "network interfaces",
}


@dataclass(frozen=True)
class Cost:
    urn: str
    change: str
    effect: str
    source: str


def _get(data: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _shown(value: Any) -> str:
    if value == UNKNOWN:
        return "(known after apply)"
    return "unset" if value is None else value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _flags(settings: Any) -> dict[str, str]:
    return {f.get("name"): f.get("value") for f in (_get(settings, "databaseFlags") or []) if isinstance(f, dict)}


def _states(step: dict) -> tuple[dict, dict]:
    return (step.get("oldState") or {}).get("inputs") or {}, (step.get("newState") or {}).get("inputs") or {}


def sql_costs(step: dict) -> list[Cost]:
    old, new = _states(step)
    urn = step["urn"]
    plus = _get(new, "settings.edition") == "ENTERPRISE_PLUS"
    restart = SQL_RESTART_PLUS if plus else SQL_RESTART
    costs = []
    for path, what in SQL_RESTARTING.items():
        before, after = _get(old, f"settings.{path}"), _get(new, f"settings.{path}")
        if before != after:
            costs.append(Cost(urn, f"{what}: {_shown(before)} → {_shown(after)}", restart, INSTANCE_SETTINGS))
    if old.get("databaseVersion") != new.get("databaseVersion"):
        costs.append(Cost(urn, f"major version: {_shown(old.get('databaseVersion'))} → {_shown(new.get('databaseVersion'))}",
                          "in-place major upgrade: the instance is unavailable for the whole upgrade (minutes to tens of "
                          "minutes, growing with the number of tables); export first (docs/runbooks.md)", MAJOR_UPGRADE))
    before, after = _flags(old.get("settings")), _flags(new.get("settings"))
    for name in sorted(set(before) | set(after)):
        if before.get(name) == after.get(name):
            continue
        spec = FLAGS.get(name)
        change = f"flag {name}: {_shown(before.get(name))} → {_shown(after.get(name))}"
        if spec is None:
            costs.append(Cost(urn, change, "may restart the instance: not in convex_gcp/flags.py, check Google's table", FLAGS_PAGE))
        elif spec.restarts:
            costs.append(Cost(urn, change, restart, FLAGS_PAGE))
    return costs


def vm_costs(step: dict) -> list[Cost]:
    old, new = _states(step)
    urn, typ = step["urn"], resource_type(step["urn"])
    if typ in TEMPLATES:
        return template_costs(urn, old, new)
    if typ in GROUPS:
        if _get(old, "versions") != _get(new, "versions"):
            return [Cost(urn, "the group's template version", "the group recreates its VM (update policy): about 1 to 3 "
                         "minutes without the API (estimate)", "https://cloud.google.com/compute/docs/instance-groups/updating-migs")]
        return []
    costs = [Cost(urn, f"{what}: {_shown(old.get(key))} → {_shown(new.get(key))}", VM_RESTART, VM_STOP)
             for key, what in VM_STOPPING.items() if old.get(key) != new.get(key)]
    if old.get("metadata") != new.get("metadata"):
        costs.append(Cost(urn, "metadata (runtime configuration)", "no VM restart: the watcher restarts only the containers whose "
                          "unit changed, seconds (plus an image pull on an image bump)", "docs/vm-runtime.md"))
    return costs


MIGS = "https://cloud.google.com/compute/docs/instance-groups/updating-migs"
VM_RECREATE = ("the group recreates the VM under its name on the kept data disk and IP (RECREATE, max surge 0: the old VM "
               "goes first): COS boot, image pulls, Convex's start; benchmarks/update_downtime.py prints the sandbox's "
               "figures, docs/updates.md the expected minutes")


def template_costs(urn: str, old: dict, new: dict) -> list[Cost]:
    """A new template reaches the one VM by the group's update policy (components/convex_vm.py): minimal action
    REFRESH, so a metadata-only change is applied to the running VM, and only what the VM cannot take running
    (a boot image, a machine type) escalates to a restart or a recreation."""
    image = lambda inputs: _get((inputs.get("disks") or [{}])[0], "sourceImage")  # noqa: E731
    costs = []
    if image(old) != image(new):
        costs.append(Cost(urn, f"boot image: {_shown(image(old))} → {_shown(image(new))}", VM_RECREATE, MIGS))
    costs += [Cost(urn, f"{what}: {_shown(old.get(key))} → {_shown(new.get(key))}", VM_RESTART, MIGS)
              for key, what in VM_STOPPING.items() if old.get(key) != new.get(key)]
    if old.get("metadata") != new.get("metadata"):
        costs.append(Cost(urn, "metadata (runtime configuration)", "no VM restart: the group refreshes the VM's metadata "
                          "(minimal action REFRESH) and the watcher restarts only the containers whose unit changed, seconds "
                          "(plus an image pull on an image bump)", "docs/vm-runtime.md"))
    return costs


def downtime(preview: dict) -> list[Cost]:
    """The in-place changes of a preview that restart the database, the VM or Convex, with their cost."""
    costs: list[Cost] = []
    for step in preview.get("steps") or []:
        typ = resource_type(step.get("urn", ""))
        if step.get("op") != "update":
            continue
        if typ == SQL:
            costs += sql_costs(step)
        elif typ == INSTANCE or typ in TEMPLATES or typ in GROUPS:
            costs += vm_costs(step)
    # A replaced template is a create-first replacement, not an update; the group's update is what restarts.
    for step in preview.get("steps") or []:
        if step.get("op") in ("replace", "create-replacement") and resource_type(step.get("urn", "")) in TEMPLATES:
            costs += vm_costs(step)
            break
    return costs


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def render(preview: dict, stack: str) -> str:
    """The review comment: guard verdict, downtime, every step that is not `same`."""
    lines = [f"<!-- convex-gcp-review {stack} -->", f"### `{stack}`: what this change costs", ""]
    guarded = destructive_steps(preview)
    if guarded:
        lines.append("**The deploy will be REFUSED** (tools/guard_data.py): " + "; ".join(line for _, line in guarded))
    else:
        lines.append("Nothing guarded is deleted or replaced.")
    lines.append("")
    costs = downtime(preview)
    if costs:
        lines += ["**Downtime**: these in-place changes restart the database, the VM or Convex:", "",
                  "| resource | change | effect | source |", "|---|---|---|---|"]
        lines += [f"| `{_name(c.urn)}` | {c.change} | {c.effect} | {c.source} |".replace("\n", " ") for c in costs]
    else:
        lines.append("**Downtime**: no change restarts the database, the VM or Convex in place.")
    changed = [s for s in preview.get("steps") or [] if s.get("op") not in ("same", "read", None)]
    if changed:
        lines += ["", "<details><summary>Steps</summary>", "", "| op | type | name | properties |", "|---|---|---|---|"]
        for step in changed:
            keys = step.get("replaceReasons") or step.get("diffReasons") or sorted(step.get("detailedDiff") or {})
            lines.append(f"| {step['op']} | `{resource_type(step['urn'])}` | `{_name(step['urn'])}` | {', '.join(keys)} |")
        lines += ["", "</details>"]
    errors = [d for d in preview.get("diagnostics") or [] if d.get("severity") == "error"]
    if errors:
        lines += ["", "**Errors**:"] + [f"- {d.get('message', '').strip()}" for d in errors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m tools.review <pulumi preview --json output> <stack>", file=sys.stderr)
        return 2
    try:
        with open(args[0], encoding="utf-8") as handle:
            preview = json.load(handle)
    except (OSError, ValueError) as error:
        print(f"review: cannot read the preview {args[0]}: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(render(preview, args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
