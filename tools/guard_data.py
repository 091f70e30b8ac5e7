"""Refuse a deploy whose preview would delete or replace what holds data or what others depend on:
the Cloud SQL instance, the Convex database, the data disk, the instance secret, the VM group, the
load balancer's address, or the local stack's volumes.

`protect` (every stack, docs/runbooks.md) makes the engine itself refuse for the data resources, by
hand too; this check runs in each deploy job on the preview of what is about to be applied, and
also covers what is not protected: the VM group (a replacement would run a second group against the
same stateful disk, or none for minutes) and the front door's address (DNS points at it). A lone
`delete-replaced` step (the second half of a replacement an earlier, interrupted update began) is
refused like any other.

To let one kind through on a deliberate run, name it (or `all`) in CONVEX_GCP_ALLOW_DATA_REPLACEMENT:

    pulumi preview --json --stack dev > preview.json && python -m tools.guard_data preview.json
    CONVEX_GCP_ALLOW_DATA_REPLACEMENT=vm-group,lb-address python -m tools.guard_data preview.json
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Callable

ALLOW_VARIABLE = "CONVEX_GCP_ALLOW_DATA_REPLACEMENT"
# Pulumi's preview JSON shows an unknown value (computed at apply time) as this sentinel
# (pulumi sdk/go/common/resource/plugin/rpc.go UnknownStringValue).
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


def _inputs(step: dict) -> dict:
    # ResourceV3 states of the step (pulumi sdk/go/common/apitype core.go); a delete has only the old one.
    for key in ("newState", "oldState"):
        state = step.get(key) or {}
        if state.get("inputs"):
            return state["inputs"]
    return {}


@dataclass(frozen=True)
class Guarded:
    what: str
    types: frozenset[str]
    # Whether a step of one of `types` is this kind (several kinds share a type).
    matches: Callable[[dict], bool]
    fix: str
    # The step ops that lose it; a fixed-name resource may be deleted, only not replaced in place of itself.
    ops: frozenset[str] = frozenset({"delete", "replace", "create-replacement", "delete-replaced", "import-replacement"})


def _always(step: dict) -> bool:
    return True


def _is_instance_secret(step: dict) -> bool:
    # The logical name (`identity-instance-secret`) or the secret id (`convex-<stack>-instance-secret`).
    return step.get("urn", "").endswith("instance-secret") or str(_inputs(step).get("secretId", "")).endswith("-instance-secret")


def _is_external_address(step: dict) -> bool:
    # The front door's address is EXTERNAL; the private services range is INTERNAL (VPC_PEERING).
    inputs = _inputs(step)
    return inputs.get("addressType", "EXTERNAL") == "EXTERNAL" and inputs.get("purpose") != "VPC_PEERING"


KEEP_SQL = ("undo the change that forces it (for an old stack's SQL name: pulumi config set --path "
            "convex-gcp:database.instanceName <current name>; docs/runbooks.md)")
GUARDED: dict[str, Guarded] = {
    "sql-instance": Guarded("Cloud SQL instance", frozenset({"gcp:sql/databaseInstance:DatabaseInstance"}), _always, KEEP_SQL),
    "database": Guarded("Convex database", frozenset({"gcp:sql/database:Database"}), _always, KEEP_SQL),
    "data-disk": Guarded("Convex data disk", frozenset({"gcp:compute/disk:Disk", "gcp:compute/regionDisk:RegionDisk"}), _always,
                         "undo the change to the disk's type, size (it only grows), zone or name"),
    "docker-volume": Guarded("Docker volume", frozenset({"docker:index/volume:Volume"}), _always, "undo the change to the volume's name or driver"),
    "instance-secret": Guarded("Convex instance secret", frozenset({"gcp:secretmanager/secret:Secret"}), _is_instance_secret,
                               "undo the change to the secret's id or replication (its versions, the key to Convex's data, "
                               "would go with it)"),
    "vm-group": Guarded("VM group", frozenset({"gcp:compute/instanceGroupManager:InstanceGroupManager",
                                               "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"}), _always,
                        "undo the change to the group's name, zone or base instance name: a new template or image updates "
                        "the group in place"),
    "lb-address": Guarded("load balancer address", frozenset({"gcp:compute/globalAddress:GlobalAddress"}), _is_external_address,
                          "undo the change to the address (DNS records point at it); a new address is a DNS change"),
}
# Fixed-name resources whose replacement would fail partway (issue 23, part 7). pulumi-terraform-bridge
# replaces a resource whose auto-nameable `name` is set explicitly delete-first (nameRequiresDeleteBeforeReplace,
# pkg/tfbridge/schema.go), and Google refuses to delete one that something still uses; create-first under the
# same name answers 409 (Secret Manager ids, bucket names). A replacement whose name changes (the certificates,
# the instance template's name_prefix) is created first and passes. Type -> what holds on to the old one.
FIXED_NAME: dict[str, str] = {
    "gcp:compute/globalAddress:GlobalAddress": "the private services connection reserves this range and Cloud SQL has "
                                               "its address in it: keep network.privateServicesPrefixLength as it is",
    "gcp:compute/backendService:BackendService": "the URL map routes to it",
    "gcp:compute/healthCheck:HealthCheck": "backend services or the group's autohealing use it",
    "gcp:compute/uRLMap:URLMap": "a target proxy uses it",
    "gcp:compute/targetHttpProxy:TargetHttpProxy": "a forwarding rule uses it",
    "gcp:compute/targetHttpsProxy:TargetHttpsProxy": "a forwarding rule uses it",
    "gcp:compute/sSLPolicy:SSLPolicy": "the HTTPS proxy uses it",
    "gcp:compute/securityPolicy:SecurityPolicy": "backend services use it",
    "gcp:compute/network:Network": "the subnetwork, the peering, the firewall rules and the router are in it",
    "gcp:compute/subnetwork:Subnetwork": "the VM's interface and its reserved internal address are in it",
    "gcp:compute/router:Router": "the NAT is configured on it",
    "gcp:compute/resourcePolicy:ResourcePolicy": "the data disk's snapshot schedule attachment uses it",
    "gcp:compute/address:Address": "the VM keeps it as its stateful internal IP",
    "gcp:certificatemanager/certificateMap:CertificateMap": "the HTTPS proxy uses it",
    "gcp:secretmanager/secret:Secret": "Secret Manager answers 409 for a second secret under the same id (a new replication "
                                       "needs a new id), and the versions go with the old one",
    "gcp:storage/bucket:Bucket": "bucket names are global and the exports are in it",
    "gcp:dns/recordSet:RecordSet": "Cloud DNS holds one record set per name and type in a zone",
    "gcp:sql/user:User": "the user is kept on delete (deletionPolicy ABANDON), so the same name cannot be created again",
}
NAME_FIELDS = ("name", "secretId")


def _same_name(step: dict) -> bool:
    """A replacement under the name the old resource has (or one not known until apply)."""
    old, new = ((step.get(key) or {}).get("inputs") or {} for key in ("oldState", "newState"))
    field = next((f for f in NAME_FIELDS if f in old or f in new), None)
    if field is None:
        return True
    return new.get(field) in (old.get(field), UNKNOWN, None)


GUARDED["fixed-name"] = Guarded(
    "fixed-name resource replaced under the same name", frozenset(FIXED_NAME), _same_name,
    "undo the change that forces the replacement (named above), or give the resource a new name so it can be created first",
    ops=frozenset({"replace", "create-replacement"}))
BARE_VM = "gcp:compute/instance:Instance"
GROUP_VM = "gcp:compute/perInstanceConfig:PerInstanceConfig"
# pulumi pkg/resource/deploy/step.go StepOp values that remove the resource as it exists now.
DESTRUCTIVE_OPS = {"delete", "replace", "create-replacement", "delete-replaced", "import-replacement"}


def resource_type(urn: str) -> str:
    # urn:pulumi:<stack>::<project>::<parent types joined by $>$<type>::<name>
    return urn.split("::")[2].split("$")[-1] if urn.count("::") >= 3 else ""


def kind_of(step: dict) -> str | None:
    typ = resource_type(step.get("urn", ""))
    for kind, guarded in GUARDED.items():
        if typ in guarded.types and guarded.matches(step):
            return kind if step.get("op") in guarded.ops or "op" not in step else None
    return None


def destructive_steps(preview: dict) -> list[tuple[str, str]]:
    """(kind, `"<op> <what> <urn>"`) for each step of `pulumi preview --json` (display/json.go
    PreviewDigest / PreviewStep) that deletes or replaces a guarded resource."""
    found = set()
    for step in preview.get("steps") or []:
        op, urn = step.get("op", ""), step.get("urn", "")
        kind = kind_of(step) if op in DESTRUCTIVE_OPS else None
        if kind:
            reasons = ", ".join(step.get("replaceReasons") or [])
            held = f": {FIXED_NAME[resource_type(urn)]}" if kind == "fixed-name" else ""
            found.add((kind, f"{op} {GUARDED[kind].what} {urn}" + (f" (because of: {reasons})" if reasons else "") + held))
    return sorted(found, key=lambda item: item[1])


def allowed_kinds(value: str) -> set[str]:
    """The kinds CONVEX_GCP_ALLOW_DATA_REPLACEMENT lets through; ValueError on an unknown one."""
    names = {name.strip() for name in value.split(",") if name.strip()}
    if "all" in names:
        return set(GUARDED)
    unknown = names - set(GUARDED)
    if unknown:
        raise ValueError(f"{ALLOW_VARIABLE} names {', '.join(sorted(unknown))}; allowed: all, {', '.join(GUARDED)} (comma-separated)")
    return names


def unsafe_moves(preview: dict) -> list[str]:
    """A bare VM deleted while the group's VM is created in the same update: the engine creates first and
    deletes removed resources last, so the group would create its VM (same name, same data disk) while the
    old one still runs and holds the disk. docs/updates.md has the two-step move."""
    steps = preview.get("steps") or []
    deleted = [s["urn"] for s in steps if s.get("op") == "delete" and resource_type(s.get("urn", "")) == BARE_VM]
    created = any(s.get("op") == "create" and resource_type(s.get("urn", "")) == GROUP_VM for s in steps)
    if not (deleted and created):
        return []
    return [f"delete bare VM {urn} while creating the VM group in the same update: delete the bare VM first "
            "(docs/updates.md, \"Moving a stack built with the bare VM to the group\")" for urn in deleted]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tools.guard_data <pulumi preview --json output>", file=sys.stderr)
        return 2
    try:
        allowed = allowed_kinds(os.environ.get(ALLOW_VARIABLE, ""))
    except ValueError as error:
        print(f"guard_data: {error}", file=sys.stderr)
        return 2
    try:
        with open(args[0], encoding="utf-8") as handle:
            preview = json.load(handle)
    except (OSError, ValueError) as error:
        print(f"guard_data: cannot read the preview {args[0]}: {error}", file=sys.stderr)
        return 2
    moves = unsafe_moves(preview)
    if moves:
        # Not overridable: the path is never right, and the two-step move costs nothing more.
        print("guard_data: REFUSED, this deploy would run two VMs on the data disk:")
        for line in moves:
            print(f"  {line}")
        return 1
    found = destructive_steps(preview)
    if not found:
        print("guard_data: nothing guarded is deleted or replaced")
        return 0
    refused = [(kind, line) for kind, line in found if kind not in allowed]
    for kind, line in found:
        if kind in allowed:
            print(f"guard_data: ALLOWED by {ALLOW_VARIABLE}={kind}: {line}")
    if not refused:
        return 0
    print("guard_data: REFUSED, this deploy would delete or replace:")
    for kind, line in refused:
        print(f"  {line}")
        print(f"    to keep it: {GUARDED[kind].fix}")
    kinds = ",".join(sorted({kind for kind, _ in refused}))
    print(f"  To accept the loss on purpose, lift its protect (convex-gcp:unprotect, docs/runbooks.md) and run the deploy by hand "
          f"with {ALLOW_VARIABLE}={kinds}.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
