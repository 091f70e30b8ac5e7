"""Refuse a deploy whose preview would delete or replace data: the Cloud SQL instance, the Convex
database, the data disk, or the local stack's volumes.

The deploy workflow runs `pulumi preview --json` and this check before `pulumi up`, so a change that
would re-create the database (a ForceNew input, new name-suffix keepers on an old stack) stops
there, in dev too, where `protect` is off. Set CONVEX_GCP_ALLOW_DATA_REPLACEMENT=1 on a deliberate
run to let it through.

    pulumi preview --json --stack dev > preview.json && python -m tools.guard_data preview.json
"""

from __future__ import annotations

import json
import os
import sys

DATA_TYPES = {
    "gcp:sql/databaseInstance:DatabaseInstance": "Cloud SQL instance",
    "gcp:sql/database:Database": "Convex database",
    "gcp:compute/disk:Disk": "Convex data disk",
    "docker:index/volume:Volume": "Docker volume",
}
# pulumi pkg/resource/deploy/step.go StepOp values that remove the resource as it exists now.
DESTRUCTIVE_OPS = {"delete", "replace", "create-replacement", "delete-replaced", "import-replacement"}


def resource_type(urn: str) -> str:
    # urn:pulumi:<stack>::<project>::<parent types joined by $>$<type>::<name>
    return urn.split("::")[2].split("$")[-1] if urn.count("::") >= 3 else ""


def destructive_steps(preview: dict) -> list[str]:
    """`"<op> <what> <urn>"` for each step of `pulumi preview --json` (display/json.go previewDigest)
    that deletes or replaces data."""
    found = []
    for step in preview.get("steps") or []:
        op, urn = step.get("op", ""), step.get("urn", "")
        kind = resource_type(urn)
        if op in DESTRUCTIVE_OPS and kind in DATA_TYPES:
            reasons = ", ".join(step.get("replaceReasons") or [])
            found.append(f"{op} {DATA_TYPES[kind]} {urn}" + (f" (because of: {reasons})" if reasons else ""))
    return sorted(set(found))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tools.guard_data <pulumi preview --json output>", file=sys.stderr)
        return 2
    try:
        with open(args[0], encoding="utf-8") as handle:
            preview = json.load(handle)
    except (OSError, ValueError) as error:
        print(f"guard_data: cannot read the preview {args[0]}: {error}", file=sys.stderr)
        return 2
    found = destructive_steps(preview)
    if not found:
        print("guard_data: no data resource is deleted or replaced")
        return 0
    allowed = os.environ.get("CONVEX_GCP_ALLOW_DATA_REPLACEMENT", "") not in ("", "0", "false")
    print(("guard_data: ALLOWED by CONVEX_GCP_ALLOW_DATA_REPLACEMENT: " if allowed else "guard_data: REFUSED, this deploy would lose data:"))
    for line in found:
        print(f"  {line}")
    if not allowed:
        print("  To keep the data, undo the change that forces it (for an old stack's SQL name: pulumi config set --path "
              "convex-gcp:database.instanceName <current name>; docs/runbooks.md). To accept the loss, run the deploy by hand "
              "with CONVEX_GCP_ALLOW_DATA_REPLACEMENT=1.")
    return 0 if allowed else 1


if __name__ == "__main__":
    sys.exit(main())
