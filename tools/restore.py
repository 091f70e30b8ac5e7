"""Bring a Convex snapshot export back into a deployment, with `npx convex import --replace-all` semantics.

    python -m tools.restore <stack> --from gs://<exports bucket>/convex-exports/2026/12/07/snapshot_<ts>.zip
    python -m tools.restore <stack> --from latest            # the newest export in the stack's exports_bucket
    python -m tools.restore <stack> --from ./snapshot.zip [--force] [--yes]
    python -m tools.restore <stack> --drill                  # deploy examples/app, write, export, wipe, restore,
                                                             # read back: RPO and RTO (local: one command)

The same HTTP calls the pinned CLI makes (tools/snapshots.py says which, with the upstream files); no Node
is needed.

replaceAll (crates/application/src/snapshot_import/mod.rs): every user table and the file storage become the
export's; tables the export lacks are deleted. So the tool refuses a deployment that holds any document or file
(`_system/cli/tables`, `_system/cli/tableSize`, `_system/frontend/fileStorageV2:numFiles`) unless `--force`,
and prints what it will do before it does it. The URL and admin key come from the stack's outputs (`pulumi
stack output`, or --outputs), the admin key as tools/e2e.py finds it; a dev stack without a domain serves
Convex through the IAP tunnel (docs/delivery.md): open it first. Exit 0 restored, 1 refused or failed,
2 a missing CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from tools import clis
from tools.snapshots import Deployment, RestoreError, restore

# ----------------------------------------------------------------------------------------- stack plumbing


def load_outputs(stack: str, path: str) -> dict[str, Any]:
    if path:
        return json.loads(Path(path).read_text())
    clis.require("tools.restore", ["pulumi"])
    result = subprocess.run(["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RestoreError(f"pulumi stack output --stack {stack} failed: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout)


def fetch_export(source: str, outputs: dict[str, Any], workdir: Path) -> Path:
    """A local path, gs://bucket/object, or `latest` (the newest object in the stack's exports_bucket)."""
    if source != "latest" and not source.startswith("gs://"):
        path = Path(source)
        if not path.is_file():
            raise RestoreError(f"{source}: no such file")
        return path
    clis.require("tools.restore", ["gcloud"])
    if source == "latest":
        bucket = outputs.get("exports_bucket")
        if not bucket:
            raise RestoreError("the stack exports no exports_bucket (exports.enabled false?): pass --from gs://... or a file")
        listed = subprocess.run(["gcloud", "storage", "ls", f"gs://{bucket}/convex-exports/**"], capture_output=True, text=True, timeout=300)
        objects = sorted(line.strip() for line in listed.stdout.splitlines() if line.strip().endswith(".zip"))
        if listed.returncode != 0 or not objects:
            raise RestoreError(f"no export found in gs://{bucket}/convex-exports/: {listed.stderr.strip()[-300:]}")
        # Names end in snapshot_<start_ts ns>.zip under YYYY/MM/DD: the last one sorted is the newest.
        source = max(objects, key=lambda name: int(name.rsplit("_", 1)[1].split(".")[0]))
    dest = workdir / source.rsplit("/", 1)[1]
    result = subprocess.run(["gcloud", "storage", "cp", source, str(dest)], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RestoreError(f"gcloud storage cp {source} failed: {result.stderr.strip()[-500:]}")
    return dest


def needed_clis(stack_outputs_given: bool, source: str) -> list[str]:
    names = [] if stack_outputs_given else ["pulumi"]
    if source == "latest" or source.startswith("gs://"):
        names.append("gcloud")
    return names


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.restore", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stack")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="source", help="a local .zip, gs://bucket/object, or `latest`")
    source.add_argument("--drill", action="store_true", help="write rows and a file, export, wipe, restore, read back; print RPO and RTO")
    parser.add_argument("--force", "--replace", action="store_true", help="replace a deployment that holds data")
    parser.add_argument("--yes", action="store_true", help="do not ask before importing")
    parser.add_argument("--outputs", default="", help="`pulumi stack output --json --show-secrets` saved earlier")
    parser.add_argument("--url", default="", help="the deployment's URL instead of the stack's convex_url (e.g. an IAP tunnel)")
    parser.add_argument("--no-deploy", action="store_true", help="--drill: examples/app is deployed already (tools.e2e did it)")
    options = parser.parse_args(argv)
    clis.require("tools.restore", needed_clis(bool(options.outputs), options.source or ""))
    from tools import e2e

    try:
        outputs = load_outputs(options.stack, options.outputs)
        if not os.environ.get("CONVEX_SELF_HOSTED_ADMIN_KEY") and outputs.get("admin_key_secret") and not outputs.get("admin_key_command"):
            clis.require("tools.restore", ["gcloud"])
        deployment = Deployment(options.url or outputs["convex_url"], e2e.admin_key(outputs))
        if options.drill:
            from tools import restore_drill

            if not options.no_deploy:
                clis.require("tools.restore", ["npm", "npx"])
                e2e.deploy(e2e.APP, deployment.url, deployment.admin_key, 600)
            # A GCP stack exports through its VM's timer service (gcloud, IAP SSH); a local one through the API.
            target = "gcp" if outputs.get("vm_name") else "local"
            if target == "gcp":
                clis.require("tools.restore", ["gcloud"])
            report = restore_drill.run(options.stack, outputs, deployment, restore_drill.for_stack(target, outputs), say=print)
            print(json.dumps(report.__dict__, indent=1))
            return 0 if not report.error else 1
        with tempfile.TemporaryDirectory(prefix="convex-restore-") as tmp:
            path = fetch_export(options.source, outputs, Path(tmp))

            def confirm() -> bool:
                if options.yes or not sys.stdin.isatty():
                    return True
                return input("Proceed? [y/N] ").strip().lower() in ("y", "yes")

            restore(deployment, path, force=options.force, confirm=confirm)
        return 0
    except (RestoreError, e2e.E2EError) as error:
        print(f"tools.restore: {error}", file=sys.stderr)
        return 1
    except KeyError as error:
        print(f"tools.restore: the stack exports no {error.args[0]!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
