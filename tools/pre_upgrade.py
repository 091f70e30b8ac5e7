"""Before a new Convex backend image reaches the VM: a Convex export, an on-demand Cloud SQL backup and a
snapshot of the data disk, named in the deploy run's summary. Run by the deploy workflow between the
checked preview and `pulumi up`, with the deployer's rights (the VM's own account stays narrow).

    python -m tools.pre_upgrade <preview.json> <stack> --outputs <outputs.json> [--dry-run]

Whether the backend image changes is read from the preview (`pulumi preview --json`, the shape of pulumi
pkg/display/json.go PreviewDigest): a step's oldState is what the stack's state holds, its newState what
this update sets. The image is the BACKEND_IMAGE line of the VM's `convex-gcp-config` metadata
(convex_gcp/runtime.py vm_config), on the instance template the group runs or on a bare instance. No
change: nothing is taken (exit 0). A change: all three copies, in the order of docs/runbooks.md ("Back up
before any change": the export, then the database, then the disk, so the database is never newer than
the files it refers to); any failure stops the deploy (exit 1) before the new image is applied.

- The export is the VM's own (vm/convex-export.sh, the export service of issue 24 part 1): requested
  through IAP SSH as tools/restore_drill.py vm_exporter does, then the newest object in the exports bucket
  started after the request is the one named.
- `gcloud sql backups create` waits for the backup's operation; its id is read back by its description.
- `gcloud compute snapshots create --source-disk`: a snapshot of a disk in use is crash-consistent
  (https://cloud.google.com/compute/docs/disks/snapshot-best-practices); the database copy above is the
  consistent one for Convex's tables, the snapshot is for its files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from tools.restore_drill import VM_EXPORT_DIR

CONFIG_KEY = "convex-gcp-config"
# Resources whose metadata carries the VM's config: the group's instance template, or a bare VM.
VM_TYPES = ("gcp:compute/instanceTemplate:InstanceTemplate", "gcp:compute/regionInstanceTemplate:RegionInstanceTemplate",
            "gcp:compute/instance:Instance")
DISK = "gcp:compute/disk:Disk"

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


class PreUpgradeError(Exception):
    """A copy could not be taken; the message says which and what to check."""


def resource_type(urn: str) -> str:
    return urn.split("::")[-2].split("$")[-1] if "::" in urn else ""


def config_value(metadata: Any, key: str) -> str:
    """KEY's value in the metadata's convex-gcp-config (KEY=VALUE lines), or ""."""
    text = (metadata or {}).get(CONFIG_KEY, "") if isinstance(metadata, dict) else ""
    for line in str(text).splitlines():
        if line.startswith(f"{key}="):
            return line[len(key) + 1:]
    return ""


def _metadata(state: Optional[dict]) -> Any:
    state = state or {}
    return (state.get("inputs") or {}).get("metadata") or (state.get("outputs") or {}).get("metadata")


@dataclass(frozen=True)
class Change:
    old: str  # the backend image the state holds ("" on a first deploy)
    new: str


def backend_change(preview: dict) -> Optional[Change]:
    """The backend image the update moves the VM from and to, or None when it does not move it."""
    olds, news = set(), set()
    for step in preview.get("steps") or []:
        if resource_type(step.get("urn", "")) not in VM_TYPES:
            continue
        op = step.get("op", "")
        if op != "create-replacement":  # a replacement's old resource is in its replace/delete-replaced steps
            old = config_value(_metadata(step.get("oldState")), "BACKEND_IMAGE")
            if old:
                olds.add(old)
        if op not in ("delete", "delete-replaced", "discard"):
            new = config_value(_metadata(step.get("newState")), "BACKEND_IMAGE")
            if new:
                news.add(new)
    if not news:
        return None  # no step sets the VM's config: nothing of it changes
    if len(news) != 1 or len(olds) > 1:
        raise PreUpgradeError(f"the preview sets more than one backend image (state: {sorted(olds)}, new: {sorted(news)})")
    (new,) = news
    old = next(iter(olds), "")
    if not old:
        return None  # a first deploy: there is nothing to back up yet
    return None if old == new else Change(old, new)


@dataclass(frozen=True)
class Targets:
    project: str
    sql_instance: str
    zone: str
    disk: str
    vm: str
    bucket: str


def targets(preview: dict, outputs: dict, stack: str) -> Targets:
    """What to copy, from the stack's outputs (docs/outputs.md) and the data disk in the preview."""
    missing = [k for k in ("sql_connection_name", "sql_instance_name", "vm_name", "vm_zone") if not outputs.get(k)]
    if missing:
        raise PreUpgradeError(f"stack outputs lack {missing}: run `pulumi stack output --json --stack {stack}`")
    if not outputs.get("exports_bucket"):
        raise PreUpgradeError("no exports bucket (convex-gcp:exports.enabled is off): a Convex upgrade needs an export first; "
                              "turn exports on, or take one by hand (docs/runbooks.md, Back up before any change) and deploy again "
                              "with the image change alone after it")
    disks = []
    for step in preview.get("steps") or []:
        if resource_type(step.get("urn", "")) == DISK:
            state = step.get("oldState") or step.get("newState") or {}
            name = (state.get("outputs") or {}).get("name") or (state.get("inputs") or {}).get("name")
            if name and str(name).endswith("-data"):
                disks.append(str(name))
    if len(set(disks)) != 1:
        raise PreUpgradeError(f"cannot tell the data disk from the preview (found {sorted(set(disks))})")
    return Targets(project=outputs["sql_connection_name"].split(":")[0], sql_instance=outputs["sql_instance_name"],
                   zone=outputs["vm_zone"], disk=disks[0], vm=outputs["vm_name"], bucket=outputs["exports_bucket"])


@dataclass(frozen=True)
class Taken:
    export: str
    backup: str
    snapshot: str


def _check(result: "subprocess.CompletedProcess[str]", what: str, hint: str) -> str:
    if result.returncode != 0:
        raise PreUpgradeError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-600:]}\n  CHECK: {hint}")
    return result.stdout


def take(t: Targets, change: Change, stack: str, run: Runner, now: Callable[[], float] = time.time) -> Taken:
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now()))
    description = f"convex-gcp {stack}: before the backend moves from {change.old} to {change.new}"
    project = [f"--project={t.project}"]

    requested_ns = int(now() * 1e9)
    command = f"sudo touch {VM_EXPORT_DIR}/requested && sudo systemctl start convex-export.service"
    _check(run(["gcloud", "compute", "ssh", t.vm, f"--zone={t.zone}", "--tunnel-through-iap", f"--command={command}", *project]),
           "the VM's export (convex-export.service)",
           "the deployer may use IAP TCP forwarding and OS Login on the VM; journalctl -u convex-export on the VM")
    listed = _check(run(["gcloud", "storage", "ls", f"gs://{t.bucket}/convex-exports/**", *project]),
                    "listing the exports bucket", f"storage.objects.list on gs://{t.bucket}")
    # Objects are convex-exports/YYYY/MM/DD/snapshot_<start_ts ns>.zip (vm/convex-export.sh).
    fresh = []
    for line in listed.splitlines():
        name = line.strip()
        if name.endswith(".zip") and "_" in name:
            try:
                start = int(name.rsplit("_", 1)[1][:-len(".zip")])
            except ValueError:
                continue
            if start >= requested_ns - 300 * 10**9:  # Convex's own clock: 5 minutes of slack, as tools/snapshots.py
                fresh.append((start, name))
    if not fresh:
        raise PreUpgradeError(f"the VM's export finished but no export newer than the request is in gs://{t.bucket}/convex-exports/\n"
                              "  CHECK: journalctl -u convex-export on the VM (a failed or truncated export is never uploaded)")
    export = max(fresh)[1]

    _check(run(["gcloud", "sql", "backups", "create", f"--instance={t.sql_instance}", f"--description={description}", *project]),
           "the on-demand Cloud SQL backup", "cloudsql.backupRuns.create for the deployer; the instance is RUNNABLE")
    ids = _check(run(["gcloud", "sql", "backups", "list", f"--instance={t.sql_instance}", f"--filter=description={json.dumps(description)}",
                      "--format=value(id)", *project]), "listing Cloud SQL backups", "cloudsql.backupRuns.list").split()
    if not ids:
        raise PreUpgradeError(f"the backup of {t.sql_instance} was created but is not listed under its description")
    backup = ids[0]

    snapshot = f"{t.disk}-pre-upgrade-{stamp}"
    _check(run(["gcloud", "compute", "snapshots", "create", snapshot, f"--source-disk={t.disk}", f"--source-disk-zone={t.zone}",
                f"--description={description}", f"--labels=stack={stack},purpose=convex-pre-upgrade", *project]),
           "the data disk snapshot", "compute.disks.createSnapshot on the disk and compute.snapshots.create for the deployer")
    return Taken(export=export, backup=f"{t.sql_instance} backup {backup}", snapshot=snapshot)


def summary(stack: str, change: Optional[Change], taken: Optional[Taken], t: Optional[Targets] = None) -> str:
    if change is None:
        return f"### Convex upgrade ({stack})\n\nThe backend image does not change: no pre-upgrade copies taken.\n"
    lines = [f"### Convex upgrade ({stack})", "", f"Backend image: `{change.old}` → `{change.new}`.", ""]
    if taken is None:
        return "\n".join(lines + ["Dry run: nothing taken.", ""])
    lines += ["Copies taken before the new image reaches the VM (restore: docs/runbooks.md, \"Upgrade Convex\"):", "",
              f"- Convex export: `{taken.export}` (`python -m tools.restore {stack} --from {taken.export}`)",
              f"- Cloud SQL on-demand backup: {taken.backup} (`gcloud sql backups restore {taken.backup.rsplit(' ', 1)[1]} "
              f"--restore-instance={t.sql_instance if t else '<instance>'}`)",
              f"- Data disk snapshot: `{taken.snapshot}`", ""]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None, run: Optional[Runner] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.pre_upgrade", description=__doc__.split("\n\n")[0])
    parser.add_argument("preview", help="pulumi preview --json output")
    parser.add_argument("stack")
    parser.add_argument("--outputs", help="pulumi stack output --json (needed when the image changes)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be taken, take nothing")
    options = parser.parse_args(argv)
    runner = run or (lambda cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=3600))
    try:
        preview = json.loads(Path(options.preview).read_text())
        change = backend_change(preview)
        if change is None:
            print(summary(options.stack, None, None))
            return 0
        if not options.outputs:
            raise PreUpgradeError("the backend image changes: --outputs <pulumi stack output --json> is needed to back it up")
        t = targets(preview, json.loads(Path(options.outputs).read_text()), options.stack)
        taken = None if options.dry_run else take(t, change, options.stack, runner)
        print(summary(options.stack, change, taken, t))
        return 0
    except PreUpgradeError as error:
        print(f"### Convex upgrade ({options.stack})\n\nREFUSED: {error}\n")
        print(f"::error::pre-upgrade copies not taken: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
